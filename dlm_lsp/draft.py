"""Drafts for the speculative strategy: tokens the target is likely to write next.

A draft costs nothing in quality: the target checks every drafted token in one causal call and
the sampler keeps only the agreeing prefix (plus the target's own next token), so the text is
the target's greedy text whatever the draft. A draft only decides how many tokens one call
commits.

`PromptLookup` is the training-free drafter (prompt lookup decoding, Saxena 2023; llama.cpp's
`lookup`): code repeats its own names and lines, so the tokens that followed the latest earlier
occurrence of the text's last n tokens are a good guess for what follows now. Longer matches
first (they are right more often); none at all below `min_ngram`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np


class Drafter(Protocol):
    """Proposes up to `length` tokens to follow `history` (the hole's text so far, in text
    order: the context before the hole, then its committed tokens)."""

    def draft(self, history: Sequence[int], length: int) -> list[int]:
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

    def draft(self, history: Sequence[int], length: int) -> list[int]:
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


__all__ = ["Drafter", "PromptLookup"]
