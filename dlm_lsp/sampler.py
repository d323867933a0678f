"""The denoising loop: pure numpy over a `Denoiser`.

One request: encode the context once, start from an all-mask canvas, and each denoise step
predict every masked position in parallel and commit those confident enough (confidence-based
parallel decoding as in LLaDA's low-confidence re-masking and Fast-dLLM's threshold rule), at
least one per step. A committed end-of-span token closes its canvas: everything after it is
filled with end-of-span at once (DreamOn / LLaDA pad answers with EOS), which is what lets an
easy line finish in one or two steps. Optionally, committed tokens whose probability fell below
a floor are re-masked (self-correction, as in ReMDM).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import numpy as np

from .layout import Layout
from .modelcard import SpecialTokens


class Cancelled(Exception):
    """The request was cancelled or superseded between two denoise steps."""


class Denoiser(Protocol):
    """What the sampler needs from a model runtime (ONNX, or PyTorch for parity tests)."""

    def encode(self, layout: Layout) -> object:
        """Run the encoder over the context once; return an opaque context state."""

    def denoise_step(
        self, state: object, canvas_ids: np.ndarray, canvas_positions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One decoder call on canvas_ids (1, C): (pred_ids, pred_prob, canvas_prob), each (1, C).

        A runtime whose `returns_logits` attribute is true also takes `need_logits=True` and
        then returns the (1, C, V) logits as a fourth element (for `min_tokens`).
        """


@dataclass(frozen=True, kw_only=True)
class SamplerSettings:
    """How to denoise; the model card recommends threshold, max_steps and remask_floor."""

    threshold: float = 0.9  # commit masked positions at least this confident
    max_steps: int = 32  # denoiser calls at most; the last one commits everything left
    remask_floor: float = 0.0  # re-mask committed tokens whose probability fell below (0 = off)
    strategy: str = "parallel"  # or "left_to_right": one commit per step, leftmost first
    min_tokens: int = 1  # a canvas's first positions may not end the span (min_new_tokens)


@dataclass
class DenoiseResult:
    """The committed canvases (truncated at end-of-span) and what it took."""

    canvases: list[list[int]]
    steps: int  # denoiser calls
    committed_per_step: list[int] = field(default_factory=list)


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
    if settings.strategy == "left_to_right":
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


def denoise(
    denoiser: Denoiser,
    layout: Layout,
    specials: SpecialTokens,
    settings: SamplerSettings,
    cancelled: Callable[[], bool] = lambda: False,
) -> DenoiseResult:
    """Fill every canvas of `layout`; raise Cancelled if `cancelled()` turns true between steps."""
    lengths = np.array(layout.canvas_lengths, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    total = int(lengths.sum())
    canvas = np.full(total, specials.mask, dtype=np.int64)
    positions = np.array([p for hole in layout.canvas_positions for p in hole], dtype=np.int64)
    if cancelled():
        raise Cancelled
    state = denoiser.encode(layout)
    steps = 0
    committed_per_step: list[int] = []
    max_steps = max(1, settings.max_steps)
    index_in_canvas = np.arange(total) - np.repeat(starts, lengths)
    head = index_in_canvas < settings.min_tokens  # positions that may not end the span
    can_ban = bool(getattr(denoiser, "returns_logits", False)) and head.any()
    banned = sorted({specials.end_of_span, specials.mask, specials.pad, specials.file})
    while (canvas == specials.mask).any():
        if cancelled():
            raise Cancelled
        guard = can_ban and bool((head & (canvas == specials.mask)).any())
        if guard:
            pred_ids, pred_prob, canvas_prob, logits = denoiser.denoise_step(
                state, canvas[None, :], positions[None, :], need_logits=True
            )
        else:
            pred_ids, pred_prob, canvas_prob = denoiser.denoise_step(
                state, canvas[None, :], positions[None, :]
            )
        pred_ids, pred_prob, canvas_prob = pred_ids[0], pred_prob[0].copy(), canvas_prob[0]
        pred_ids = pred_ids.copy()
        if guard:
            rows = np.flatnonzero(head & (canvas == specials.mask)
                                  & (pred_ids == specials.end_of_span))
            if rows.size:
                _no_early_end(pred_ids, pred_prob, logits[0], rows, banned)
        steps += 1
        steps_left = max_steps - steps + 1  # this one included
        masked = canvas == specials.mask
        if settings.remask_floor > 0 and steps_left > 1:
            fallen = ~masked & (canvas_prob < settings.remask_floor) & (pred_ids != canvas)
            canvas[fallen] = specials.mask
            masked |= fallen
        commit = choose_commits(masked, pred_prob, settings, steps_left)
        canvas[commit] = pred_ids[commit]
        committed_per_step.append(int(commit.sum()))
        _close_spans(canvas, starts, lengths, specials.end_of_span)
    canvases = []
    for start, length in zip(starts, lengths):
        row = canvas[start : start + length].tolist()
        if specials.end_of_span in row:
            row = row[: row.index(specials.end_of_span)]
        canvases.append(row)
    return DenoiseResult(canvases=canvases, steps=steps, committed_per_step=committed_per_step)
