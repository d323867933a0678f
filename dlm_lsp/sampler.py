"""The denoising loop: pure numpy over a `DenoiserRuntime`.

One request: encode the context once, start from an all-mask canvas, and each denoise step
predict every masked position in parallel and commit those confident enough (confidence-based
parallel decoding as in LLaDA's low-confidence re-masking and Fast-dLLM's threshold rule), at
least one per step. A committed end-of-span token closes its canvas: everything after it is
filled with end-of-span at once (DreamOn / LLaDA pad answers with EOS), which is what lets an
easy line finish in one or two steps. Optionally, committed tokens whose probability fell below
a floor are re-masked (self-correction, as in ReMDM).

A batch of requests (several editors on one server) runs the same loop in lockstep: one encoder
call over the padded batch, then each step one decoder call over every canvas still open, each
request finishing at its own step with exactly the result it would get alone. A single request
is a batch of one; a runtime without batch calls gets one call per request inside the same loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from .draft import Drafter, PromptLookup
from .layout import Layout
from .modelcard import SpecialTokens


# how a canvas is filled (SamplerSettings.strategy)
STRATEGIES = ("parallel", "left_to_right", "speculative")
# the strategies that commit the leftmost masked position each step (speculative: and then the
# next ones while the draft agrees)
ONE_AT_A_TIME = ("left_to_right", "speculative")


class Cancelled(Exception):
    """The request was cancelled or superseded between two denoise steps."""


class HoleStart(Protocol):
    """What a hole's canvas must begin with (token healing, `dlm_lsp.heal.Heal`)."""

    def allowed_after(self, committed: list[int]) -> np.ndarray | None:
        """The ids the position after the hole's first tokens `committed` may take; None:
        no constraint any more."""


# A hole whose scope is closed (the rest of a line, a block) needs no more tokens: given the
# hole's index and its committed tokens so far, says whether it is over.
ScopeClosed = Callable[[int, list[int]], bool]


class DenoiserRuntime(Protocol):
    """What the sampler needs from a model runtime (ONNX Runtime, or PyTorch for training's
    exact-match and parity tests)."""

    returns_logits: bool  # denoise_step takes need_logits=True and then returns the logits

    def encode(self, layout: Layout) -> object:
        """Run the encoder over the context once; return an opaque context state."""

    def denoise_step(
        self, state: object, canvas_ids: np.ndarray, canvas_positions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One decoder call on canvas_ids (1, C): (pred_ids, pred_prob, canvas_prob), each (1, C).

        A runtime whose `returns_logits` is true also takes `need_logits=True` and then
        returns the (1, C, V) logits as a fourth element (for `min_tokens`).
        """

    # Optional, for batches (the sampler uses them when a runtime has both):
    #   encode_batch(layouts: list[Layout]) -> state   one call over the padded batch
    #   denoise_step_batch(state, canvas_ids, canvas_positions, canvas_mask, need_logits=False)
    #     canvas_* (B, C), canvas_mask (B, C) bool (False: padding, or a finished request)
    #     -> (pred_ids, pred_prob, canvas_prob[, logits (B, C, V)]), each (B, C)


@dataclass(frozen=True, kw_only=True)
class SamplerSettings:
    """How to denoise; the model card recommends threshold, max_steps and remask_floor."""

    threshold: float = 0.9  # commit masked positions at least this confident
    max_steps: int = 32  # denoiser calls at most; the last one commits everything left
    remask_floor: float = 0.0  # re-mask committed tokens whose probability fell below (0 = off)
    # "parallel", "left_to_right" (one commit per step, leftmost first), or "speculative":
    # left to right, but each step also sends a drafted block after the frontier, and the
    # target's tokens are committed for as long as the draft agrees with them (needs a causal
    # canvas; the text is exactly left to right's)
    strategy: str = "parallel"
    draft_length: int = 8  # speculative: tokens drafted per step at most
    min_tokens: int = 1  # a canvas's first positions may not end the span (min_new_tokens)
    # the model's canvas attention is causal (the card's canvas_attention): a canvas position
    # depends only on the ones before it, so left to right sends only the canvas up to the
    # first masked position — a short completion costs short decoder calls
    causal_canvas: bool = False


@dataclass
class DenoiseResult:
    """The committed canvases (truncated at end-of-span) and what it took."""

    canvases: list[list[int]]
    steps: int  # denoiser calls
    committed_per_step: list[int] = field(default_factory=list)
    drafted: int = 0  # speculative: drafted tokens the target checked
    accepted: int = 0  # speculative: drafted tokens the target agreed with (and committed)


def _close_spans(canvas: np.ndarray, starts: np.ndarray, lengths: np.ndarray, eos: int) -> None:
    """Fill every position after a committed end-of-span with end-of-span (in place)."""
    for start, length in zip(starts, lengths):
        row = canvas[start : start + length]
        hits = np.flatnonzero(row == eos)
        if hits.size:
            row[hits[0] :] = eos


def choose_commits(
    masked: np.ndarray, pred_prob: np.ndarray, settings: SamplerSettings, steps_left: int
) -> np.ndarray:
    """Which masked positions to commit this step (a boolean array like `masked`).

    Parallel: every position at least `threshold` confident (Fast-dLLM's rule), and never fewer
    than an even share of what is left over the steps left (LLaDA's schedule), so a hard canvas
    still finishes within `max_steps`; ties go to the most confident positions.
    """
    commit = np.zeros_like(masked)
    candidates = np.flatnonzero(masked)
    if candidates.size == 0:
        return commit
    if settings.strategy in ONE_AT_A_TIME:
        commit[candidates if steps_left <= 1 else candidates[:1]] = True  # the cap still holds
        return commit
    commit = masked & (pred_prob >= settings.threshold)
    floor = -(-candidates.size // max(1, steps_left))  # ceil(masked / steps left)
    if commit.sum() < floor:
        best = candidates[np.argsort(-pred_prob[candidates], kind="stable")[:floor]]
        commit[best] = True
    return commit


def _no_early_end(
    pred_ids: np.ndarray, pred_prob: np.ndarray, logits: np.ndarray, rows: np.ndarray,
    banned: list[int],
) -> None:
    """At `rows`, replace the prediction by the best token that is not special (in place).

    Like `min_new_tokens` in autoregressive decoding: an undertrained denoiser predicts
    end-of-span first (the padding makes it the commonest canvas token), which would close
    the span empty although the user asked for a completion.
    """
    scores = logits[rows].astype(np.float64)
    scores[:, banned] = -np.inf
    best = scores.argmax(-1)
    scores -= scores.max(-1, keepdims=True)
    probs = np.exp(scores)
    pred_ids[rows] = best
    pred_prob[rows] = probs[np.arange(len(rows)), best] / probs.sum(-1)


def _heal(pred_ids: np.ndarray, pred_prob: np.ndarray, logits: np.ndarray,
          masked: np.ndarray, constraints: dict[int, np.ndarray]) -> None:
    """At each still-masked constrained position, the best of its allowed ids, its
    probability renormalised over them (the constraint is certain: the text is typed)."""
    for position, allowed in constraints.items():
        if not masked[position] or allowed.size == 0:
            continue
        scores = logits[position, allowed].astype(np.float64)
        best = int(scores.argmax())
        probs = np.exp(scores - scores[best])
        pred_ids[position] = allowed[best]
        pred_prob[position] = 1.0 / probs.sum()


def _widen(total: int, eos: int, pred_ids: np.ndarray, pred_prob: np.ndarray,
           canvas_prob: np.ndarray, logits: np.ndarray | None) -> tuple:
    """One step's outputs over a window of the canvas, padded to the whole canvas (T,):
    end-of-span predicted, with no confidence, beyond the window."""
    n = len(pred_ids)
    wide_ids = np.full(total, eos, np.int64)
    wide_ids[:n] = pred_ids
    wide_prob = np.zeros(total, np.float32)
    wide_prob[:n] = pred_prob
    wide_canvas = np.ones(total, np.float32)
    wide_canvas[:n] = canvas_prob
    if logits is not None:
        wide_logits = np.zeros((total, logits.shape[-1]), logits.dtype)
        wide_logits[:n] = logits
        logits = wide_logits
    return wide_ids, wide_prob, wide_canvas, logits


def _probability_of(logits: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """softmax(logits)[i, tokens[i]] for (T, V) logits: the probability of each token."""
    scores = logits.astype(np.float64)
    scores -= scores.max(-1, keepdims=True)
    probs = np.exp(scores)
    picked = probs[np.arange(len(tokens)), tokens] / probs.sum(-1)
    return picked.astype(np.float32)


def _never() -> bool:
    return False


def _truncate(canvas: np.ndarray, starts: np.ndarray, lengths: np.ndarray,
              eos: int) -> list[list[int]]:
    """Each hole's tokens up to (not including) its first end-of-span."""
    canvases = []
    for start, length in zip(starts, lengths):
        row = canvas[start : start + length].tolist()
        if eos in row:
            row = row[: row.index(eos)]
        canvases.append(row)
    return canvases


def _starts(lengths: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)


def split_canvas(canvas: Sequence[int] | np.ndarray, lengths: Sequence[int],
                 eos: int) -> list[list[int]]:
    """A layout's holes, back to back in `canvas`, each truncated at its first end-of-span
    (a remote server sends back the whole canvas)."""
    lengths_ = np.asarray(lengths, dtype=np.int64)
    return _truncate(np.asarray(canvas, dtype=np.int64), _starts(lengths_), lengths_, eos)


class _Request:
    """One request in the lockstep loop: its holes back to back as one canvas."""

    def __init__(self, layout: Layout, specials: SpecialTokens, settings: SamplerSettings,
                 cancelled: Callable[[], bool], can_ban: bool,
                 heals: Sequence[HoleStart | None] | None = None,
                 closed: ScopeClosed | None = None, drafter: Drafter | None = None,
                 features: Callable[[object, int], Any] | None = None) -> None:
        self.layout = layout
        self.lengths = np.array(layout.canvas_lengths, dtype=np.int64)
        self.starts = _starts(self.lengths)
        total = int(self.lengths.sum())
        self.canvas = np.full(total, specials.mask, dtype=np.int64)  # (T,)
        self.positions = np.array([p for hole in layout.canvas_positions for p in hole],
                                  dtype=np.int64)  # (T,)
        index_in_canvas = np.arange(total) - np.repeat(self.starts, self.lengths)
        self.head = index_in_canvas < settings.min_tokens  # positions that may not end the span
        self.can_ban = can_ban and bool(self.head.any())
        # token healing: a hole's first positions must re-produce the text the context was
        # backed off by; applied at the hole's frontier where the runtime returns logits
        self.heals = {index: heal for index, heal in enumerate(heals or ())
                      if heal is not None and can_ban}
        self.constraints: dict[int, np.ndarray] = {}  # this step's: position → allowed ids
        self.closed = closed
        self.checked = np.zeros(len(self.lengths), np.int64)  # committed heads already judged
        # a shifted decoder's canvas_prob is of the input (the token before): recompute it
        # from the logits, which remasking then needs
        self.remask_logits = can_ban and layout.shifted and settings.remask_floor > 0
        self.mask_id = specials.mask
        self.settings = settings
        self.max_steps = max(1, settings.max_steps)
        self.cancelled = cancelled
        self.dropped = False  # cancelled: left the batch, no result
        self.state: object = None  # its own context state when the runtime has no batch calls
        self.steps = 0
        self.committed_per_step: list[int] = []
        # speculative: a draft is checked only where a canvas position depends on the ones
        # before it alone (a causal canvas), and read after the token it continues (shifted)
        self.drafter = (drafter if settings.strategy == "speculative" and settings.causal_canvas
                        and layout.shifted else None)
        fresh = getattr(self.drafter, "fresh", None)  # a drafter with a per-request cache
        if fresh is not None:
            self.drafter = fresh()
        # the runtime's `visible_features(state, start)`: what a feature drafter reads
        self.features = features
        self.draft: list[int] = []  # this step's drafted tokens, from `draft_at` on
        self.draft_at = -1  # the canvas index of the draft's first token (the frontier)
        self.drafted = 0
        self.accepted = 0
        # one token a step on a causal canvas: the inputs already committed join the context
        # state (the runtime's `append_canvas`, from the call's own keys/values), so a step
        # sends only the inputs after them instead of the whole committed canvas again. Set
        # by the loop when the runtime can (`appends`) and the request runs on its own state.
        self.appending = False
        self.sent = 0  # leading decoder inputs already in `state`
        self.canvas_keys: object = None  # the last call's own keys/values

    @property
    def open(self) -> bool:
        return bool((self.canvas == self.mask_id).any())

    def _committed_head(self, hole: int) -> tuple[int, np.ndarray]:
        """(the first masked index in hole `hole`, or its length; its tokens before that)."""
        start, length = int(self.starts[hole]), int(self.lengths[hole])
        row = self.canvas[start : start + length]
        masked = np.flatnonzero(row == self.mask_id)
        frontier = int(masked[0]) if masked.size else length
        return frontier, row[:frontier]

    def guarded(self) -> bool:
        """Whether this step needs logits: a head position is still masked (`min_tokens`),
        a healed hole's frontier is constrained, or a shifted canvas may be re-masked. Sets
        this step's healing constraints."""
        masked = self.canvas == self.mask_id
        self.constraints = {}
        for hole, heal in self.heals.items():
            frontier, committed = self._committed_head(hole)
            if frontier < self.lengths[hole]:
                allowed = heal.allowed_after(committed.tolist())
                if allowed is not None and allowed.size:
                    self.constraints[int(self.starts[hole]) + frontier] = allowed
        return (self.can_ban and bool((self.head & masked).any())
                or bool(self.constraints) or self.remask_logits)

    def close_finished_scopes(self, eos: int) -> None:
        """End every hole whose committed head already closes its scope (`closed`)."""
        if self.closed is None:
            return
        for hole in range(len(self.lengths)):
            frontier, committed = self._committed_head(hole)
            if frontier == self.lengths[hole] or frontier <= self.checked[hole]:
                continue
            self.checked[hole] = frontier
            if eos not in committed and self.closed(hole, committed.tolist()):
                start = int(self.starts[hole])
                self.canvas[start + frontier : start + int(self.lengths[hole])] = eos

    def inputs(self) -> tuple[np.ndarray, np.ndarray]:
        """The decoder's input ids and positions (N ≤ T,): the canvas, shifted for a shifted
        model; with a causal canvas left to right, only up to the first masked position."""
        settings = self.settings
        canvas = self.canvas
        self.draft, self.draft_at = [], -1
        if self.drafter is not None:
            canvas = self._with_draft()
        ids, positions = self.layout.decoder_inputs(canvas, self.positions)
        if settings.causal_canvas and settings.strategy in ONE_AT_A_TIME:
            masked = np.flatnonzero(self.canvas == self.mask_id)
            if masked.size:
                end = masked[0] + 1 + len(self.draft)  # the draft, and the token after it
                ids, positions = ids[:end], positions[:end]
        return ids[self.sent :], positions[self.sent :]

    @property
    def can_append(self) -> bool:
        """Whether committed inputs may join the context: one token a step on a causal
        canvas, nothing ever re-masked."""
        s = self.settings
        return s.causal_canvas and s.strategy in ONE_AT_A_TIME and s.remask_floor <= 0

    def append_committed(self, denoiser: Any) -> None:
        """After a step: the inputs before the new frontier are final (the anchor and the
        committed tokens before the frontier's own input); move them into the state."""
        masked = np.flatnonzero(self.canvas == self.mask_id)
        if not self.appending or self.canvas_keys is None or masked.size == 0:
            return
        count = int(masked[0]) - self.sent
        if count > 0:
            self.state = denoiser.append_canvas(self.state, self.canvas_keys, count)
            self.sent += count
        self.canvas_keys = None

    def _hole_of(self, index: int) -> int:
        """The hole that canvas index `index` belongs to."""
        return int(np.searchsorted(self.starts, index, side="right") - 1)

    def _with_draft(self) -> np.ndarray:
        """The canvas with this step's draft written after the frontier (a copy; the draft
        is not committed). No draft while token healing still constrains the frontier (the
        check would compare against unconstrained predictions), nor for a hole whose anchor
        is another hole (its history is not one stretch of text)."""
        masked = np.flatnonzero(self.canvas == self.mask_id)
        if masked.size == 0:
            return self.canvas
        frontier = int(masked[0])
        hole = self._hole_of(frontier)
        start, length = int(self.starts[hole]), int(self.lengths[hole])
        anchor = self.layout.anchors[hole]
        room = min(self.settings.draft_length, start + length - frontier - 1)
        if anchor < 0 or room <= 0:
            return self.canvas
        committed = self.canvas[start:frontier].tolist()
        heal = self.heals.get(hole)
        if heal is not None and heal.allowed_after(committed) is not None:
            return self.canvas
        history = self.layout.context_ids[: anchor + 1] + committed
        features = None
        if (self.features is not None and self.appending and self.state is not None
                and len(self.lengths) == 1):
            # the state holds the text before the frontier's input, which is history[-1]
            # (one hole, appended as it commits: see append_committed)
            state, read = self.state, self.features
            features = lambda start: read(state, start)  # noqa: E731
        extra = {"features": features} if features is not None else {}
        draft = list(self.drafter.draft(history, room, **extra))[:room]
        # a draft never holds what the canvas cannot: the mask, or end-of-span's stand-ins
        if self.mask_id in draft:
            draft = draft[: draft.index(self.mask_id)]
        draft = self._within_scope(hole, committed, draft)
        if not draft:
            return self.canvas
        self.draft, self.draft_at = draft, frontier
        canvas = self.canvas.copy()
        canvas[frontier : frontier + len(draft)] = draft
        return canvas

    def _within_scope(self, hole: int, committed: list[int], draft: list[int]) -> list[int]:
        """The draft cut before its first token that closes the hole's scope (a line's end,
        say): what comes after would never be committed, and the closing token itself is the
        check's own next token if the rest agrees. Bisected on `closed`, a few calls a step."""
        if self.closed is None or len(draft) < 2 or not self.closed(hole, committed + draft):
            return draft
        low, high = 1, len(draft)  # closed with draft[:high]; find the shortest such prefix
        while low < high:
            middle = (low + high) // 2
            if self.closed(hole, committed + draft[:middle]):
                high = middle
            else:
                low = middle + 1
        return draft[: high - 1]

    def _commit_checked(self, pred_ids: np.ndarray, eos: int) -> int:
        """Speculative: commit the target's tokens from the frontier on for as long as the
        draft agrees with them, exactly as left to right would have committed them one per
        step: stop at end-of-span, where the hole's scope closes, or where token healing
        would constrain the next position. Returns how many were committed."""
        frontier = self.draft_at
        hole = self._hole_of(frontier)
        start = int(self.starts[hole])
        heal = self.heals.get(hole)
        count = 0
        for j in range(len(self.draft) + 1):
            position = frontier + j
            token = int(pred_ids[position])
            self.canvas[position] = token
            count += 1
            if token == eos:
                break
            committed = self.canvas[start : position + 1].tolist()
            if self.closed is not None:
                self.checked[hole] = position + 1 - start
                if self.closed(hole, committed):
                    self.canvas[position + 1 : start + int(self.lengths[hole])] = eos
                    break
            if j == len(self.draft) or token != self.draft[j]:
                break
            if heal is not None and heal.allowed_after(committed) is not None:
                break
            self.accepted += 1
        self.drafted += len(self.draft)
        return count

    def advance(self, pred_ids: np.ndarray, pred_prob: np.ndarray, canvas_prob: np.ndarray,
                logits: np.ndarray | None, specials: SpecialTokens, banned: list[int]) -> None:
        """Commit one step's predictions, each (T,); `logits` (T, V) when guarded."""
        canvas, settings = self.canvas, self.settings
        if self.sent:  # the inputs already in the state: their canvas positions are committed
            pred_ids = np.concatenate([canvas[: self.sent], pred_ids])
            pred_prob = np.concatenate([np.ones(self.sent, np.float32), pred_prob])
            canvas_prob = np.concatenate([np.ones(self.sent, np.float32), canvas_prob])
            if logits is not None:
                logits = np.concatenate(
                    [np.zeros((self.sent, logits.shape[-1]), logits.dtype), logits])
        if len(pred_ids) < len(canvas):  # a causal canvas's window: nothing predicted beyond
            pred_ids, pred_prob, canvas_prob, logits = _widen(
                len(canvas), specials.end_of_span, pred_ids, pred_prob, canvas_prob, logits)
        pred_ids, pred_prob = pred_ids.copy(), pred_prob.copy()
        if logits is not None:
            _heal(pred_ids, pred_prob, logits, canvas == specials.mask, self.constraints)
        if self.layout.shifted:  # only remasking reads it
            canvas_prob = (_probability_of(logits, canvas)
                           if logits is not None and settings.remask_floor > 0
                           else np.ones_like(pred_prob))
        if logits is not None:
            rows = np.flatnonzero(self.head & (canvas == specials.mask)
                                  & (pred_ids == specials.end_of_span))
            if rows.size:
                _no_early_end(pred_ids, pred_prob, logits, rows, banned)
        self.steps += 1
        steps_left = self.max_steps - self.steps + 1  # this one included
        masked = canvas == specials.mask
        if settings.remask_floor > 0 and steps_left > 1:
            fallen = ~masked & (canvas_prob < settings.remask_floor) & (pred_ids != canvas)
            canvas[fallen] = specials.mask
            masked |= fallen
        if self.draft and steps_left > 1:
            self.committed_per_step.append(self._commit_checked(pred_ids, specials.end_of_span))
        else:
            commit = choose_commits(masked, pred_prob, settings, steps_left)
            canvas[commit] = pred_ids[commit]
            self.committed_per_step.append(int(commit.sum()))
        _close_spans(canvas, self.starts, self.lengths, specials.end_of_span)
        self.close_finished_scopes(specials.end_of_span)

    def result(self, eos: int) -> DenoiseResult:
        return DenoiseResult(canvases=_truncate(self.canvas, self.starts, self.lengths, eos),
                             steps=self.steps, committed_per_step=self.committed_per_step,
                             drafted=self.drafted, accepted=self.accepted)


def _batched(denoiser: object) -> bool:
    """Whether the runtime takes a padded batch (`encode_batch` and `denoise_step_batch`)."""
    return (callable(getattr(denoiser, "encode_batch", None))
            and callable(getattr(denoiser, "denoise_step_batch", None)))


def _step_batch(denoiser: Any, state: object, batch: list[_Request], rows: list[int],
                pad: int) -> list[tuple]:
    """One decoder call over the encoded batch; closed rows ride along fully masked out.

    The call keeps the encoder's B rows (its state is per row) but only as many canvas
    columns as the longest open canvas.
    """
    inputs = {row: batch[row].inputs() for row in rows}
    width = max(len(ids) for ids, _ in inputs.values())
    canvas_ids = np.full((len(batch), width), pad, dtype=np.int64)  # (B, C)
    canvas_positions = np.zeros((len(batch), width), dtype=np.int64)  # (B, C)
    canvas_mask = np.zeros((len(batch), width), dtype=bool)  # (B, C)
    for row, (ids, positions) in inputs.items():
        n = len(ids)
        canvas_ids[row, :n], canvas_positions[row, :n] = ids, positions
        canvas_mask[row, :n] = True
    guards = [batch[row].guarded() for row in rows]
    outputs = denoiser.denoise_step_batch(state, canvas_ids, canvas_positions, canvas_mask,
                                          need_logits=any(guards))
    pred_ids, pred_prob, canvas_prob = outputs[:3]  # (B, C) each
    steps = []
    for row, guard in zip(rows, guards):
        n = len(inputs[row][0])
        steps.append((np.asarray(pred_ids[row, :n], np.int64),
                      np.asarray(pred_prob[row, :n], np.float32),
                      np.asarray(canvas_prob[row, :n], np.float32),
                      outputs[3][row, :n] if guard else None))
    return steps


def _step_each(denoiser: Any, batch: list[_Request], rows: list[int]) -> list[tuple]:
    """A runtime without batch calls: one decoder call per open request, in the same loop."""
    steps = []
    for row in rows:
        request = batch[row]
        ids, positions = request.inputs()
        extra = {"keep_canvas": True} if request.appending else {}
        if request.guarded():
            pred_ids, pred_prob, canvas_prob, logits, *kept = denoiser.denoise_step(
                request.state, ids[None, :], positions[None, :], need_logits=True, **extra)
            logits = logits[0]
        else:
            pred_ids, pred_prob, canvas_prob, *kept = denoiser.denoise_step(
                request.state, ids[None, :], positions[None, :], **extra)
            logits = None
        request.canvas_keys = kept[0] if kept else None
        steps.append((pred_ids[0], pred_prob[0], canvas_prob[0], logits))
    return steps


def denoise_batch(
    denoiser: DenoiserRuntime,
    layouts: Sequence[Layout],
    specials: SpecialTokens,
    settings: SamplerSettings | Sequence[SamplerSettings],
    cancelled: Callable[[], bool] | Sequence[Callable[[], bool]] = _never,
    *,
    state: object = None,
    heals: Sequence[Sequence[HoleStart | None] | None] | None = None,
    closed: Sequence[ScopeClosed | None] | None = None,
    drafter: Drafter | None = None,
) -> list[DenoiseResult | None]:
    """Fill every canvas of every layout in lockstep; None for a request that was cancelled.

    One encoder call over the padded batch (when the runtime has `encode_batch`), then each
    step one decoder call over every canvas still open; each request finishes at its own step,
    under its own settings, as it would alone. A request whose `cancelled()` turns true
    (checked before the encoder and before each of its steps) leaves the batch at once.
    `state`: the context of a batch of one, already encoded (the runtime re-used a document's
    earlier encoding); its decoder calls are then per request. `drafter`: where a speculative
    request's drafts come from (default: prompt lookup in its own text).
    """
    count = len(layouts)
    settings = [settings] * count if isinstance(settings, SamplerSettings) else list(settings)
    checks = [cancelled] * count if callable(cancelled) else list(cancelled)
    if not len(settings) == len(checks) == count:
        raise ValueError(f"{count} layouts, {len(settings)} settings, {len(checks)} checks")
    if state is not None and count != 1:
        raise ValueError("an encoded state is the context of a batch of one")
    can_ban = bool(denoiser.returns_logits)
    heals = list(heals) if heals is not None else [None] * count
    closed = list(closed) if closed is not None else [None] * count
    drafter = drafter if drafter is not None else PromptLookup()
    features = getattr(denoiser, "visible_features", None)
    requests = [_Request(layout, specials, s, check, can_ban, heal, done, drafter, features)
                for layout, s, check, heal, done in zip(layouts, settings, checks, heals,
                                                        closed)]
    for request in requests:
        request.dropped = bool(request.cancelled())
    batch = [request for request in requests if not request.dropped]  # the encoded rows
    batched = state is None and _batched(denoiser)
    batch_state: object = None
    if batch and state is not None:
        batch[0].state = state
    elif batch and batched:
        batch_state = denoiser.encode_batch([request.layout for request in batch])
    else:
        for request in batch:
            request.state = denoiser.encode(request.layout)
    banned = sorted({specials.end_of_span, *specials.never_predicted})
    appends = not batched and bool(getattr(denoiser, "appends", False))
    for request in batch:
        request.appending = appends and request.can_append
    rows = [row for row, request in enumerate(batch) if request.open]
    while rows:
        for row in rows:
            batch[row].dropped = bool(batch[row].cancelled())
        rows = [row for row in rows if not batch[row].dropped]
        if not rows:
            break
        if batched:
            outputs = _step_batch(denoiser, batch_state, batch, rows, specials.pad)
        else:
            outputs = _step_each(denoiser, batch, rows)
        for row, (pred_ids, pred_prob, canvas_prob, logits) in zip(rows, outputs):
            batch[row].advance(pred_ids, pred_prob, canvas_prob, logits, specials, banned)
            batch[row].append_committed(denoiser)
        rows = [row for row in rows if batch[row].open]
    return [None if r.dropped else r.result(specials.end_of_span) for r in requests]


def denoise(
    denoiser: DenoiserRuntime,
    layout: Layout,
    specials: SpecialTokens,
    settings: SamplerSettings,
    cancelled: Callable[[], bool] = _never,
    *,
    state: object = None,
    heals: Sequence[HoleStart | None] | None = None,
    closed: ScopeClosed | None = None,
    drafter: Drafter | None = None,
) -> DenoiseResult:
    """Fill every canvas of `layout` (a batch of one); raise Cancelled if `cancelled()` turns
    true between steps. `state`: the layout's context, already encoded. `heals`: per hole,
    what its canvas must begin with (token healing), or None. `closed`: says when a hole's
    committed head closes its scope, which then ends at once (an AR model never writes
    end-of-span: without it, every line would cost the whole canvas)."""
    (result,) = denoise_batch(denoiser, [layout], specials, settings, cancelled, state=state,
                              heals=[heals], closed=[closed], drafter=drafter)
    if result is None:
        raise Cancelled
    return result
