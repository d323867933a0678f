"""Drafts for the speculative strategy: tokens the target is likely to write next.

A draft costs nothing in quality: the target checks every drafted token in one causal call and
the sampler keeps only the agreeing prefix (plus the target's own next token), so the text is
the target's greedy text whatever the draft. A draft only decides how many tokens one call
commits.

`PromptLookup` is the training-free drafter (prompt lookup decoding, Saxena 2023; llama.cpp's
`lookup`): code repeats its own names and lines, so the tokens that followed the latest earlier
occurrence of the text's last n tokens are a good guess for what follows now. Longer matches
first (they are right more often); none at all below `min_ngram`.

`FeatureDrafter` is the trained one (the card's `drafter.graph`, a DFlash block drafter): it
reads the target's own features of the text (the fused graphs' `features` output) and guesses
a block after the last committed token in one call of its small graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import numpy as np

from .modelcard import DRAFTER_OUTPUTS


# the target's features (N, F) of the text before the frontier from its `start`-th token on
# (the runtime's `visible_features` of the request's state), None where there are none
Features = Callable[[int], "np.ndarray | None"]


class Drafter(Protocol):
    """Proposes up to `length` tokens to follow `history` (the hole's text so far, in text
    order: the context before the hole, then its committed tokens). `features`, where the
    runtime has them, reads the target's features of history[:-1] (a feature drafter's
    context; the last token is the anchor, not yet run through the target)."""

    def draft(self, history: Sequence[int], length: int,
              features: Features | None = None) -> list[int]:
        ...


def _matches(tokens: np.ndarray, tail: np.ndarray, end: int) -> np.ndarray:
    """Starts of every occurrence of `tail` in `tokens` that begins before `end`."""
    candidates = np.flatnonzero(tokens[:end] == tail[0])
    for offset in range(1, len(tail)):
        if candidates.size == 0:
            break
        candidates = candidates[candidates + offset < len(tokens)]
        candidates = candidates[tokens[candidates + offset] == tail[offset]]
    return candidates


@dataclass(frozen=True)
class PromptLookup:
    """Drafts copied from the latest earlier occurrence of the history's last n tokens,
    n from `max_ngram` down to `min_ngram`; where the history has none, from the first
    occurrence in `source` (the text after the cursor, which a model that reads no suffix never
    sees: a name or a line used below is often what comes next)."""

    max_ngram: int = 4
    min_ngram: int = 2
    window: int = 4096  # how far back to look, in tokens (bounds the work per step)
    source: tuple[int, ...] = ()
    # > 0: a draft at most `reach` tokens per matched token (a longer match stays right for
    # longer, and every drafted token makes the check call dearer); 0: `length` always
    reach: int = 0

    def draft(self, history: Sequence[int], length: int,
              features: Features | None = None) -> list[int]:
        if length <= 0:
            return []
        tokens = np.asarray(history[-self.window :], dtype=np.int64)
        source = np.asarray(self.source[: self.window], dtype=np.int64)
        n_tokens = len(tokens)
        for n in range(min(self.max_ngram, n_tokens - 1), self.min_ngram - 1, -1):
            tail = tokens[n_tokens - n :]
            count = min(length, self.reach * n) if self.reach else length
            # every earlier n-gram equal to the tail (not the tail itself); the latest is the
            # nearest, most relevant
            candidates = _matches(tokens, tail, n_tokens - n)
            if candidates.size:
                start = int(candidates[-1]) + n
                return tokens[start : start + count].tolist()
            candidates = _matches(source, tail, len(source) - n)
            if candidates.size:
                start = int(candidates[0]) + n
                return source[start : start + count].tolist()
        return []


class FeatureDrafter:
    """Drafts from a trained feature drafter (`drafter.onnx`, the card's `DrafterCard`): a block
    of guesses after the anchor, read from the target's features of the text before it.

    It keeps the drafter's key/value cache of the context positions it has been given
    (0..`length`-1, in text order); each `draft` hands it the target's `FEATURES` of the
    positions after those (the committed tokens the target has run since), which it appends,
    and the anchor, the last committed token, which sits at the next position. Positions
    that stop being the text (a rejected tail, an edit) are dropped with `truncate`. Pure
    apart from the ONNX Runtime `session`; `last_prob` holds the last draft's probabilities.
    """

    def __init__(self, session, n_layers: int, kv_heads: int, head_dim: int,
                 min_confidence: float = 0.0) -> None:
        self.session = session
        self.shape = (n_layers, 1, kv_heads, 0, head_dim)
        self.min_confidence = min_confidence  # > 0: stop before the first guess below it
        # K·d, the width of the target features the graph reads
        self.width = int({i.name: i for i in session.get_inputs()}["features"].shape[2])
        self.reset()

    def reset(self) -> None:
        """Forget every cached position (another document)."""
        self.keys = np.zeros(self.shape, np.float32)
        self.values = np.zeros(self.shape, np.float32)
        self.last_prob: list[float] = []

    @property
    def length(self) -> int:
        """Context positions cached."""
        return self.keys.shape[3]

    def truncate(self, length: int) -> None:
        """Keep the first `length` cached positions."""
        self.keys = self.keys[:, :, :, :length]
        self.values = self.values[:, :, :, :length]

    def draft(self, features: np.ndarray, anchor: int, length: int) -> list[int]:
        """Up to `length` tokens after `anchor`, which sits right after the context: the cached
        positions, then `features` (N, K·d) (or (1, N, K·d)) of the N positions after them,
        which join the cache whatever `length` is (0 only keeps the cache in step)."""
        features = np.asarray(features, np.float32).reshape(1, -1, self.width)
        start = self.length
        n = features.shape[1]
        ids, probs, keys, values = self.session.run(list(DRAFTER_OUTPUTS), {
            "features": features,
            "feature_position_ids": np.arange(start, start + n, dtype=np.int64)[None],
            "past_drafter_keys": self.keys, "past_drafter_values": self.values,
            "anchor_ids": np.array([[anchor]], np.int64),
            "anchor_position_ids": np.array([[start + n]], np.int64)})
        if n:
            self.keys = np.concatenate([self.keys, keys], axis=3)
            self.values = np.concatenate([self.values, values], axis=3)
        self.last_prob = probs[0].tolist()
        keep = max(0, length)
        if self.min_confidence > 0:
            low = np.flatnonzero(probs[0] < self.min_confidence)
            if low.size:
                keep = min(keep, int(low[0]))
        return ids[0, :keep].tolist()


class LookupThenFeatures:
    """Prompt lookup's draft where it finds one of at least `min_lookup` tokens (a repeat in
    the document: long, and right more often), else the trained feature drafter's, from the
    target's features of the text so far. One request's drafter: `fresh()` gives another
    with its own feature cache (each request, each hole, has its own text).

    The drafter's cache must hold exactly history[:-1]: where the features do not line up
    with the history (no features, a state that is not one stretch of text), lookup's draft
    stands."""

    def __init__(self, lookup: PromptLookup, make_drafter: Callable[[], "FeatureDrafter"],
                 min_lookup: int = 2) -> None:
        self.lookup = lookup
        self.make_drafter = make_drafter
        self.min_lookup = min_lookup
        self._drafter: FeatureDrafter | None = None

    def fresh(self) -> "LookupThenFeatures":
        return LookupThenFeatures(self.lookup, self.make_drafter, self.min_lookup)

    def draft(self, history: Sequence[int], length: int,
              features: Features | None = None) -> list[int]:
        found = self.lookup.draft(history, length)
        if len(found) >= self.min_lookup or features is None or length <= 0:
            return found
        if self._drafter is None:
            self._drafter = self.make_drafter()
        drafter = self._drafter
        new = features(drafter.length)
        if new is None or drafter.length + len(new) != len(history) - 1:
            return found
        guessed = drafter.draft(new, int(history[-1]), length)
        return guessed if len(guessed) > len(found) else found


__all__ = ["Drafter", "FeatureDrafter", "LookupThenFeatures", "PromptLookup"]
