"""The completion pipeline: plan → tokens → denoise → decode → postprocess.

The engine owns the model, the typing-through cache and the rule that the newest request on a
document wins. It runs on worker threads; the protocol thread only hands it immutable
snapshots. One denoise runs at a time (the CPU has few cores; two interleaved requests would
both be slow), and a waiting request that became stale gives up before it starts.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from tokenizers import Tokenizer

from .cache import TypingCache
from .context_cache import ContextCache, DocumentDenoiser
from .draft import Drafter, FeatureDrafter, LookupThenFeatures, PromptLookup
from .heal import Heal, Healer, unheal
from .languages import Syntax, syntax_for
from .layout import build_layout
from .modelcard import ModelCard, ModelError, default_model_dir, load_card
from .plan import InfillPlan, PlanError, PlanSettings, plan_completion, plan_holes
from .postprocess import Completion, finish, scope_closed
from . import rerank as rerank_mod
from .sampler import Cancelled, DenoiserRuntime, SamplerSettings, denoise
from .settings import Settings

log = logging.getLogger(__name__)

Check = Callable[[], bool]


def _never() -> bool:
    return False


class NewestWins:
    """The newest request per key (a document uri) wins: each start bumps the key's
    generation, and an older request's check turns true so it stops between denoise steps."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._generation: dict[str, int] = {}

    def start(self, key: str) -> Check:
        """Start a request on `key`; the returned check is true once a newer one started."""
        with self._lock:
            generation = self._generation.get(key, 0) + 1
            self._generation[key] = generation
        return lambda: self._generation.get(key) != generation

    def forget(self, key: str) -> None:
        with self._lock:
            self._generation.pop(key, None)


@dataclass
class CompletionResult:
    """One inline completion and what it cost."""

    completion: Completion | None
    plan: InfillPlan | None = None
    steps: int = 0  # denoiser calls
    # of those, the suffix reranking's (its candidates and their scoring); the rest are the
    # draft-and-check loop's, what `tokens` came from
    rerank_steps: int = 0
    tokens: int = 0  # generated tokens before end-of-span
    drafted: int = 0  # speculative: drafted tokens the model checked
    accepted: int = 0  # speculative: drafted tokens it agreed with
    cached: bool = False  # answered by the typing-through cache
    elapsed_s: float = 0.0
    context_tokens: int = 0  # the context's length
    context_tokens_encoded: int = 0  # how many of them ran through the encoder
    backend: str = "local"  # what denoised: "local", "remote", or "none" (an empty answer)
    generated: str | None = None  # the model's text at the hole before postprocessing


@dataclass
class FillResult:
    """Several holes filled in one parallel pass."""

    completions: list[Completion | None]
    plan: InfillPlan | None = None
    steps: int = 0
    rerank_steps: int = 0  # of `steps`, the suffix reranking's
    tokens: int = 0
    drafted: int = 0  # speculative: drafted tokens the model checked
    accepted: int = 0  # speculative: drafted tokens it agreed with
    elapsed_s: float = 0.0
    context_tokens: int = 0  # the context's length
    context_tokens_encoded: int = 0  # how many of them ran through the encoder
    raw: list[str] = field(default_factory=list)  # decoded canvases before postprocessing
    # per hole, the text at the hole before postprocessing (healing undone; None: the
    # canvas did not re-spell the healed-off text)
    generated: list[str | None] = field(default_factory=list)
    # one (start, end, new_text) per hole in the caller's text, document order; a hole the
    # model left nothing usable for keeps its text (a gap stays empty, a re-write unchanged)
    edits: list[tuple[int, int, str]] = field(default_factory=list)
    backend: str = "local"  # what denoised: "local", "remote", or "none" (an empty answer)


class Engine:
    """Loads one model directory and answers completion and fill requests."""

    def __init__(
        self,
        model_dir: str | Path | None = None,
        settings: Settings | None = None,
        denoiser: DenoiserRuntime | None = None,
        card: ModelCard | None = None,
    ) -> None:
        # what the model was loaded with (directory, device, threads), and the default for a
        # request that brings no settings of its own
        self.settings = settings or Settings()
        directory = Path(model_dir or self.settings.model_dir or default_model_dir())
        self.card: ModelCard = card or load_card(directory)  # a remote model's card is given
        try:
            self.tokenizer = Tokenizer.from_file(str(self.card.path(self.card.tokenizer)))
        except Exception as exc:
            raise ModelError(f"{self.card.path(self.card.tokenizer)}: {exc}") from exc
        if self.tokenizer.get_vocab_size() > self.card.vocab_size:
            raise ModelError(
                f"tokenizer has {self.tokenizer.get_vocab_size()} tokens but the model "
                f"{self.card.vocab_size}: tokenizer.json does not belong to this model"
            )
        mask_token = self.tokenizer.id_to_token(self.card.special_tokens.mask)
        if mask_token != "<|mask|>":
            raise ModelError(f"tokenizer id {self.card.special_tokens.mask} is {mask_token!r}, "
                             "not <|mask|>: tokenizer.json does not match model.json")
        if denoiser is None:
            from .runtime import OnnxDenoiser

            denoiser = OnnxDenoiser(self.card, self.settings.device, self.settings.threads)
        self.denoiser = denoiser
        self._healer: Healer | None = None  # built on first use (a pass over the vocabulary)
        self.provider: str = getattr(denoiser, "provider", "CPU")
        self.cache = TypingCache()
        # each document's encoded context (causal models) and its prefix window's start
        self.contexts = ContextCache(self.settings.context_cache_mb * 2**20)
        self._anchors: dict[str, int] = {}
        self._model_lock = threading.Lock()
        self._requests = NewestWins()
        self._anchors_lock = threading.Lock()

    # -- settings ---------------------------------------------------------------------------

    def sampler_settings(self, settings: Settings | None = None) -> SamplerSettings:
        """The model card's sampler recommendation with the user's overrides."""
        s, card = settings or self.settings, self.card.sampler
        return SamplerSettings(
            threshold=card.threshold if s.threshold is None else s.threshold,
            max_steps=card.max_steps if s.max_steps is None else s.max_steps,
            remask_floor=card.remask_floor if s.remask_floor is None else s.remask_floor,
            strategy=card.strategy if s.strategy is None else s.strategy,
            draft_length=s.draft_length,
            causal_canvas=self.card.canvas_attention == "causal",
        )

    def plan_settings(self, settings: Settings | None = None, *, fill: bool = False
                      ) -> PlanSettings:
        """Budgets for the planner, bounded by the model's context (`fill`: for dlm/fill,
        where a model that reads no suffix may get it ahead of the prefix)."""
        s, card = settings or self.settings, self.card
        # text it never learnt to read after a hole, unless it goes first (`_suffix_first`)
        suffix = s.suffix_tokens if card.reads_suffix or (fill and s.suffix_first) else 0
        prefix = s.prefix_tokens
        if prefix is None:  # a causal model's cached prefix costs little: give it the room
            prefix = max(1, card.max_context - 1 - suffix) if card.causal else 384
        return PlanSettings(
            prefix_tokens=prefix,
            prefix_step=prefix // 8 if card.causal else 0,
            suffix_tokens=suffix,
            max_block_lines=s.max_block_lines,
            # measured on the held-out set (benchmarks/README.md, issue 30): inline, one
            # statement at a blank line before code saves calls at the same exact match; a
            # dlm/fill, which the user waits for, keeps the block (one more multi-line match)
            one_statement=not fill,
            max_context=self.card.max_context,
            max_position=self.card.max_position,
        )

    def count_tokens(self, text: str) -> int:
        """Tokens in `text` as the model sees it."""
        return len(self.tokenizer.encode(text, add_special_tokens=False).ids)

    # -- latest request wins ----------------------------------------------------------------

    def supersede(self, key: str) -> Check:
        """Start a new request on `key` (a document uri); older ones on it become stale.

        Returns a check that is true once a newer request on the same key has started.
        """
        return self._requests.start(key)

    def forget(self, key: str) -> None:
        """Drop per-document state (the document was closed)."""
        self._requests.forget(key)
        with self._anchors_lock:
            self._anchors.pop(key, None)
        self.cache.forget(key)
        self.contexts.forget(key)

    # -- requests ---------------------------------------------------------------------------

    def complete_text(
        self,
        text: str,
        offset: int,
        language_id: str,
        *,
        tree: object | None = None,
        syntax: Syntax | None = None,
        key: str | None = None,
        settings: Settings | None = None,
        cancelled: Check = _never,
    ) -> CompletionResult:
        """Complete at `offset` in `text`; `key` (a uri) enables the typing-through cache.

        `settings` are this request's (the server's current ones); None: the engine's own.
        """
        started = time.perf_counter()
        settings = settings or self.settings
        if key is not None:
            cached = self.cache.lookup(key, text, offset)
            if cached is not None:
                return CompletionResult(
                    cached, cached=True, elapsed_s=time.perf_counter() - started,
                    backend="cache",
                )
        syntax = syntax if syntax is not None else syntax_for(language_id)
        if syntax is not None and tree is None:
            tree = syntax.parser().parse(text.encode("utf-8", "surrogatepass"))
        plan = plan_completion(
            text, offset, tree, syntax,
            buckets=self.card.canvas_buckets,
            settings=self.plan_settings(settings),
            count_tokens=self.count_tokens,
            language_id=language_id,
            anchor=self._anchors.get(key) if key is not None else None,
        )
        if key is not None:
            with self._anchors_lock:
                self._anchors[key] = plan.window_start
        fill = self._run(plan, text, syntax, settings, cancelled, key,
                         rerank=settings.inline_suffix_rerank)
        completion = fill.completions[0] if fill.completions else None
        if key is not None and completion is not None:
            self.cache.remember(key, text, offset, completion)
        return CompletionResult(
            completion, plan=fill.plan or plan, steps=fill.steps, tokens=fill.tokens,
            rerank_steps=fill.rerank_steps,
            generated=fill.generated[0] if fill.generated else None,
            drafted=fill.drafted, accepted=fill.accepted,
            elapsed_s=time.perf_counter() - started, backend=fill.backend,
            context_tokens=fill.context_tokens,
            context_tokens_encoded=fill.context_tokens_encoded,
        )

    def fill_text(
        self,
        text: str,
        ranges: list[tuple[int, int]],
        language_id: str,
        *,
        tree: object | None = None,
        syntax: Syntax | None = None,
        settings: Settings | None = None,
        cancelled: Check = _never,
        canvas_lengths: list[int] | None = None,
    ) -> FillResult:
        """Fill (or re-write) every range of `text` in one parallel pass, under `settings`
        (None: the engine's own).

        `canvas_lengths` (one per range, in document order) overrides the planner's buckets:
        evaluation uses it to give the model the true middle's length (an "oracle" length).
        """
        started = time.perf_counter()
        if not ranges:
            return FillResult([], elapsed_s=0.0)
        settings = settings or self.settings
        syntax = syntax if syntax is not None else syntax_for(language_id)
        if syntax is not None and tree is None:
            tree = syntax.parser().parse(text.encode("utf-8", "surrogatepass"))
        plan = plan_holes(
            text, sorted(ranges), tree, syntax,
            buckets=self.card.canvas_buckets,
            settings=self.plan_settings(settings, fill=True),
            count_tokens=self.count_tokens,
            language_id=language_id,
        )
        if canvas_lengths is not None:
            if len(canvas_lengths) != len(plan.holes):
                raise PlanError(f"{len(canvas_lengths)} canvas lengths for {len(plan.holes)} holes")
            plan = dataclasses.replace(plan, holes=[
                dataclasses.replace(h, canvas_length=int(n))
                for h, n in zip(plan.holes, canvas_lengths)])
        result = self._run(plan, text, syntax, settings, cancelled,
                           rerank=settings.suffix_rerank, suffix_first=settings.suffix_first,
                           branch=rerank_mod.FILL_BRANCH)
        for hole, completion in zip(plan.holes, result.completions):
            if completion is None:
                result.edits.append((hole.start, hole.end, text[hole.start : hole.end]))
            else:
                result.edits.append((completion.start, completion.end, completion.text))
        result.elapsed_s = time.perf_counter() - started
        return result

    def fill_markers(self, snapshot, marker: str, settings: Settings | None = None, *,
                     cancelled: Check = _never) -> FillResult:
        """Fill every occurrence of `marker` in a document; edits replace the markers."""
        text = snapshot.text
        markers = []
        at = text.find(marker)
        while at >= 0:
            markers.append(at)
            at = text.find(marker, at + len(marker))
        stripped = text.replace(marker, "")
        gaps = [m - i * len(marker) for i, m in enumerate(markers)]
        # The tree no longer matches the stripped text: let fill_text parse it afresh.
        result = self.fill_text(
            stripped, [(g, g) for g in gaps], snapshot.language_id,
            syntax=snapshot.syntax, settings=settings, cancelled=cancelled,
        )
        shift = len(marker)
        result.edits = [
            (m, end - g + m + shift, new_text)
            for m, g, (_, end, new_text) in zip(markers, gaps, result.edits)
        ]
        return result

    def complete(self, snapshot, offset: int, settings: Settings | None = None, *,
                 cancelled: Check = _never) -> CompletionResult:
        """`complete_text` on a documents.Snapshot, under this request's `settings`."""
        return self.complete_text(
            snapshot.text, offset, snapshot.language_id,
            tree=snapshot.tree, syntax=snapshot.syntax, key=snapshot.uri, settings=settings,
            cancelled=cancelled,
        )

    def fill(self, snapshot, ranges: list[tuple[int, int]], settings: Settings | None = None, *,
             cancelled: Check = _never) -> FillResult:
        """`fill_text` on a documents.Snapshot, under this request's `settings`."""
        return self.fill_text(
            snapshot.text, ranges, snapshot.language_id,
            tree=snapshot.tree, syntax=snapshot.syntax, settings=settings, cancelled=cancelled,
        )

    # -- the pipeline -----------------------------------------------------------------------

    def _encode_segments(self, plan: InfillPlan, suffix_first: bool = False
                         ) -> list[list[int]]:
        """Token ids of the plan's text segments, cut to the model's context if need be."""
        segments = [
            self.tokenizer.encode(s, add_special_tokens=False).ids if s else []
            for s in plan.segments
        ]
        if not self.card.reads_suffix:
            # a model that never saw text after a hole gets none: with a causal canvas it
            # would read the rest of the cursor's line (the planner's suffix) as if written
            segments[-1] = []
            if suffix_first and len(plan.holes) == 1:
                segments[0] = self._suffix_first(plan.segments[-1]) + segments[0]
        budget = self.card.max_context - 1
        limit = self.card.max_position - sum(h.canvas_length for h in plan.holes) - 1
        budget = min(budget, limit)
        excess = sum(len(s) for s in segments) - budget
        if excess > 0:  # the planner's estimate was short: trim far ends first
            log.debug("context over budget by %d tokens; trimming", excess)
            cut = min(excess, max(0, len(segments[0]) - budget // 2))
            segments[0] = segments[0][cut:]
            excess -= cut
            if excess > 0:
                segments[-1] = segments[-1][: max(0, len(segments[-1]) - excess)]
        return segments

    def _suffix_first(self, suffix: str) -> list[int]:
        """The lines after a hole's line, as tokens to put ahead of the prefix: a model that
        reads only what comes before its canvas then knows the names the code after the hole
        defines and uses (the functions below, the rest of the body), as a file read in
        another order would show them. Whole lines only: the rest of the hole's own line
        stays out (it would read as written before the hole)."""
        below = suffix.split("\n", 1)[1] if "\n" in suffix else ""
        below = below.strip("\r\n")
        if not below.strip():
            return []
        return self.tokenizer.encode(below + "\n\n\n", add_special_tokens=False).ids

    @property
    def healer(self) -> Healer:
        """Token healing over this model's vocabulary."""
        if self._healer is None:
            self._healer = Healer(self.tokenizer)
        return self._healer

    def _heal(self, plan: InfillPlan, segments: list[list[int]], settings: Settings
              ) -> list[Heal | None]:
        """Back the segment before each hole off to a token boundary (in place); per hole,
        what was removed, or None."""
        heals: list[Heal | None] = [None] * len(plan.holes)
        if not settings.token_healing or not getattr(self.denoiser, "returns_logits", False):
            return heals  # the constraint needs the logits of the canvas's first position
        for index in range(len(plan.holes)):
            segments[index], heals[index] = self.healer.heal(segments[index])
        return heals

    def _scope_check(self, plan: InfillPlan, text: str, syntax: Syntax | None,
                     heals: list[Heal | None]):
        """The sampler's `closed`: a hole whose decoded head already closes its scope."""
        def closed(index: int, ids: list[int]) -> bool:
            generated = unheal(self.tokenizer.decode(ids, skip_special_tokens=True),
                               heals[index])
            return generated is not None and scope_closed(plan, index, generated, text=text,
                                                          syntax=syntax)
        return closed

    # how much of the text after the last hole speculative drafts may copy from (characters)
    DRAFT_SOURCE_CHARS = 4000

    # a feature draft stops before its first guess the drafter is less sure of (its
    # probability): every drafted token makes the check call dearer
    DRAFT_CONFIDENCE = 0.3

    def _drafter(self, plan: InfillPlan, text: str, settings: Settings) -> Drafter:
        """Speculative drafts for this plan: prompt lookup in the text before the hole, then in
        the document after the last hole — drafts cost nothing in quality, so the code after
        the cursor, which a prefix-only model never reads, still helps here. Where lookup
        finds nothing and the model has a trained feature drafter, that drafter guesses."""
        end = plan.holes[-1].end
        after = text[end : end + self.DRAFT_SOURCE_CHARS]
        ids = self.tokenizer.encode(after, add_special_tokens=False).ids if after else []
        # measured on the target's own greedy tokens (benchmarks/draft_policy.py, seed 1) with
        # the fused graphs' call costs: a draft as long as its match, from 1- to 8-token
        # matches, spends least per committed token
        lookup = PromptLookup(min_ngram=1, max_ngram=8, reach=1, source=tuple(ids))
        # the runtime has a session only for a card with a drafter graph
        session = (getattr(self.denoiser, "drafter_session", None) if settings.feature_drafts
                   else None)
        if session is None:
            return lookup
        card = self.card
        return LookupThenFeatures(lookup, lambda: FeatureDrafter(
            session, card.drafter.n_layers, card.kv_heads, card.head_dim,
            min_confidence=self.DRAFT_CONFIDENCE))

    def _document_denoiser(self, key: str | None, settings: Settings) -> DocumentDenoiser:
        """The denoiser for one request: with a key (a uri) and the cache on, it starts
        from the document's cached context."""
        if not settings.context_cache:
            self.contexts.clear()
            key = None
        self.contexts.max_bytes = settings.context_cache_mb * 2**20
        return DocumentDenoiser(self.denoiser, self.contexts, key)

    def _run(self, plan: InfillPlan, text: str, syntax: Syntax | None, settings: Settings,
             cancelled: Check, key: str | None = None, rerank: int = 0,
             suffix_first: bool = False, branch: str | None = None) -> FillResult:
        """Denoise the plan's holes and finish them; `rerank` > 0: that many candidates for
        suffix-likelihood reranking (`_suffix_rerank`, its candidates by `branch`), where the
        model allows it."""
        if not plan.holes:
            return FillResult([], plan=plan)
        segments = self._encode_segments(plan, suffix_first and key is None)
        sampler = self.sampler_settings(settings)
        drafter = (self._drafter(plan, text, settings) if sampler.strategy == "speculative"
                   else None)
        heals = self._heal(plan, segments, settings)
        layout = build_layout(
            segments, [h.canvas_length for h in plan.holes], self.card.special_tokens.file,
            shift=self.card.shift,
        )
        denoiser = self._document_denoiser(key, settings)
        remote = getattr(self.denoiser, "denoise_request", None)
        reranked: Completion | None = None
        extra_steps = 0
        reranking = False
        if remote is not None:  # a server runs the whole loop (dlm_lsp.remote): no lock here
            result = remote(layout, self.card.special_tokens, sampler, cancelled)
        else:
            reranking = rerank > 0 and self._can_rerank(plan, layout)
            if reranking:  # candidates end within the lines the cuts try: decode no further
                plan = rerank_mod.capped(plan)
            closed = self._scope_check(plan, text, syntax, heals)
            with self._model_lock:
                # reranking scores its candidates on the same encoded context
                state = denoiser.encode(layout) if reranking else None
                result = denoise(denoiser, layout, self.card.special_tokens, sampler, cancelled,
                                 state=state, heals=heals, closed=closed, drafter=drafter)
                if reranking:
                    reranked, extra_steps = self._suffix_rerank(
                        plan, text, syntax, layout, denoiser, state, heals, result.canvases[0],
                        rerank, settings, cancelled, closed, drafter, branch=branch)
                # first-token candidates the reranking above did not already try (after a
                # beam: all of them, its lines are often all variants of the suffix's own)
                tried = rerank if (branch or rerank_mod.BRANCH) == "first" else 1
                if reranking and reranked is None and settings.empty_rerank > tried:
                    # nothing to show: more candidates, each starting with another first
                    # token (an answer that is not the suffix again, or one that parses)
                    reranked, more = self._suffix_rerank(
                        plan, text, syntax, layout, denoiser, state, heals, result.canvases[0],
                        settings.empty_rerank, settings, cancelled, closed, drafter,
                        branch="first")
                    extra_steps += more
        raw = [self.tokenizer.decode(ids, skip_special_tokens=True) for ids in result.canvases]
        at_holes = [unheal(generated, heal) for generated, heal in zip(raw, heals)]
        completions = [
            None if generated is None else finish(plan, index, generated, text=text,
                                                  syntax=syntax)
            for index, generated in enumerate(at_holes)
        ]
        if reranking:  # its winner (None: no candidate had text)
            completions[0] = reranked
        return FillResult(
            completions, plan=plan, steps=result.steps + extra_steps, rerank_steps=extra_steps,
            tokens=sum(len(c) for c in result.canvases), raw=raw, generated=at_holes,
            drafted=result.drafted, accepted=result.accepted,
            context_tokens=denoiser.context_tokens,
            context_tokens_encoded=denoiser.encoded_tokens,
            backend="local" if remote is None else "remote",
        )

    # -- suffix-likelihood reranking (dlm_lsp.rerank) ---------------------------------------

    def _can_rerank(self, plan: InfillPlan, layout) -> bool:
        """Reranking scores candidates in causal calls over the cached prefix: one hole, a
        shifted causal canvas (an autoregressive model) and logits from the decoder."""
        return (len(plan.holes) == 1 and layout.shifted and self.card.canvas_attention == "causal"
                and bool(getattr(self.denoiser, "returns_logits", False)))

    def _suffix_rerank(self, plan: InfillPlan, text: str, syntax: Syntax | None, layout,
                       denoiser, state, heals: list[Heal | None], greedy: list[int], k: int,
                       settings: Settings, cancelled: Check, closed, drafter=None,
                       branch: str | None = None) -> tuple[Completion | None, int]:
        """The best of `k` candidates at each of their cuts, by prefix + suffix
        log-likelihood, and the denoiser calls it took. The candidates are the greedy one
        and, by `branch` (default `rerank.BRANCH`), the beam's best first lines ("beam",
        `_beam_candidates`) or the best other first tokens at its first free position, each
        continued greedily ("first": an answer that does not start as the greedy one did)."""
        heal = heals[0]
        forced = heal.text if heal is not None else ""
        anchor = layout.context_ids[layout.anchors[0]]
        first = layout.canvas_positions[0][0]
        calls = 0

        def logits_of(ids, positions):
            nonlocal calls
            if cancelled():
                raise Cancelled
            calls += 1
            return denoiser.denoise_step(state, ids[None, :], positions[None, :],
                                         need_logits=True)[3][0]

        candidates = [greedy]
        # an alternative runs at most a little longer than the greedy one did
        room = min(len(layout.canvas_positions[0]), len(greedy) + rerank_mod.ALTERNATIVE_SLACK)
        if k > 1 and (branch or rerank_mod.BRANCH) == "beam":
            found, more = self._beam_candidates(layout, denoiser, state, heal, greedy, k, room,
                                                closed, cancelled, logits_of)
            calls += more
            # each a candidate as it is: a line that opens a block (`def __init__(self):`) is
            # no cut of a longer candidate, and the line is what the beam is for
            candidates += found
        elif k > 1:
            at = rerank_mod.first_free_position(greedy, self.healer.text_of, forced)
            ids = np.asarray([anchor, *greedy[:at]], np.int64)
            positions = np.arange(first - 1, first + at, dtype=np.int64)
            logits = logits_of(ids, positions)[-1]
            head = list(greedy[:at])
            taken = greedy[at] if at < len(greedy) else -1
            options = [t for t in rerank_mod.alternatives(logits, taken, None, k + 8)
                       if self.healer.text_of(t)][: k - 1]
            short = dataclasses.replace(layout,
                                        canvas_positions=[layout.canvas_positions[0][:room]])
            for token in options:
                start = rerank_mod.ForcedStart([*head, token], heal)
                alt = denoise(denoiser, short, self.card.special_tokens,
                              self.sampler_settings(settings), cancelled, state=state,
                              heals=[start], closed=closed, drafter=drafter)
                calls += alt.steps
                candidates.append(alt.canvases[0])
        multi_line = not plan.holes[0].stop.single_line
        scored: list[rerank_mod.Scored] = []
        kept: list[Completion] = []  # scored[i]'s completion
        seen: set[tuple[str, int]] = set()
        encode = self._encode_with_offsets
        for index, ids in enumerate(candidates):
            generated = unheal(self.tokenizer.decode(ids, skip_special_tokens=True), heal)
            whole = None if generated is None else finish(plan, 0, generated, text=text,
                                                          syntax=syntax)
            if whole is None:
                continue
            places = rerank_mod.cuts(whole.text, multi_line)
            if len(candidates) == 1 and len(places) == 1:
                return whole, calls  # nothing to choose between
            for cut in places:
                completion = finish(plan, 0, cut, text=text, syntax=syntax)
                if completion is None or (completion.text, completion.end) in seen:
                    continue
                seen.add((completion.text, completion.end))
                suffix = text[completion.end : completion.end + 64 * rerank_mod.SUFFIX_TOKENS]
                tokens, own = rerank_mod.score_tokens(forced + completion.text, suffix, encode)
                logprobs = rerank_mod.token_logprobs(
                    logits_of(*rerank_mod.shifted_inputs(anchor, tokens, first)), tokens)
                scored.append(rerank_mod.Scored(completion.text, float(logprobs[:own].sum()),
                                                float(logprobs[own:].sum()), own, index))
                kept.append(completion)
        winner = rerank_mod.best(scored)
        log.debug("suffix rerank: %s", [(s.index, round(s.score(), 2), s.text[:40])
                                        for s in scored])
        return (None if winner is None else kept[scored.index(winner)]), calls

    def _beam_candidates(self, layout, denoiser, state, heal: Heal | None, greedy: list[int],
                         k: int, room: int, closed, cancelled: Check, logits_of
                         ) -> tuple[list[list[int]], int]:
        """`rerank.beam`'s `k` best first lines (of at most `room` tokens) other than
        `greedy`'s own, and the
        calls it made (beyond `logits_of`'s, which counts its own). Where the runtime can
        append a call's inputs and mask a state (`masked`), each hypothesis's next-token
        logits cost one 1-token call: every hypothesis's inputs join one state, each call
        seeing the prefix and its own hypothesis's; else each call sends the hypothesis's
        tokens again after the anchor."""
        counted = [0]
        anchor = layout.context_ids[layout.anchors[0]]
        first = layout.canvas_positions[0][0]
        specials = self.card.special_tokens
        banned = list(specials.never_predicted)

        appending = getattr(denoiser, "appends", False) and getattr(denoiser, "masks", False)
        head = state
        prefix_mask = state.context_mask if appending else None
        # per hypothesis (its tokens), the state positions holding its inputs (the anchor,
        # then its tokens but the last): a child's call attends to its parent's inputs only
        slots: dict[tuple[int, ...], list[int]] = {}

        def next_logits(tokens: list[int]) -> np.ndarray:
            nonlocal head
            if not appending:  # the hypothesis's tokens again, after the anchor, each call
                ids, positions = rerank_mod.shifted_inputs(anchor, [*tokens, specials.mask],
                                                           first)
                row = np.array(logits_of(ids, positions)[-1], np.float64)
            else:  # one input a call: the hypothesis's last token, appended to the state
                key = tuple(tokens)
                seen = slots[key[:-1]] if key else []
                visible = np.zeros((1, head.length), np.int64)
                visible[:, : prefix_mask.shape[1]] = prefix_mask
                visible[0, seen] = 1
                view = denoiser.masked(head, visible)
                ids = np.asarray([[tokens[-1] if tokens else anchor]], np.int64)
                positions = np.asarray([[first - 1 + len(tokens)]], np.int64)
                if cancelled():
                    raise Cancelled
                out = denoiser.denoise_step(view, ids, positions, need_logits=True,
                                            keep_canvas=True)
                counted[0] += 1
                slots[key] = [*seen, head.length]
                head = denoiser.append_canvas(view, out[-1], 1)
                row = np.array(out[3][0, -1], np.float64)
            row[banned] = -np.inf
            return row

        def finished(tokens: list[int]) -> bool:
            """Its scope closed, or its first line is written: a hypothesis is a first line
            (the greedy candidate brings the longer cuts)."""
            if tokens[-1] == specials.end_of_span:
                return True
            generated = unheal(self.tokenizer.decode(tokens, skip_special_tokens=True), heal)
            return generated is not None and "\n" in generated.lstrip() or (
                closed is not None and closed(0, tokens))

        found = rerank_mod.beam(next_logits, k, room,
                                heal.allowed_after if heal is not None else None, finished)
        # the greedy candidate's own first line would only be decoded into it again
        return [tokens for tokens, _ in found if tokens != list(greedy[: len(tokens)])], counted[0]

    def _encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        encoding = self.tokenizer.encode(text, add_special_tokens=False)
        return encoding.ids, encoding.offsets


__all__ = ["Cancelled", "CompletionResult", "Engine", "FillResult", "ModelError", "PlanError"]
