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


@dataclass(frozen=True)
class PromptLookup:
    """Drafts copied from the latest earlier occurrence of the history's last n tokens,
    n from `max_ngram` down to `min_ngram`."""

    max_ngram: int = 4
    min_ngram: int = 2
    window: int = 4096  # how far back to look, in tokens (bounds the work per step)

    def draft(self, history: Sequence[int], length: int) -> list[int]:
        if length <= 0:
            return []
        tokens = np.asarray(history[-self.window :], dtype=np.int64)
        n_tokens = len(tokens)
        for n in range(min(self.max_ngram, n_tokens - 1), self.min_ngram - 1, -1):
            tail = tokens[n_tokens - n :]
            # starts of every earlier n-gram equal to the tail (not the tail itself)
            candidates = np.flatnonzero(tokens[: n_tokens - n] == tail[0])
            for offset in range(1, n):
                if candidates.size == 0:
                    break
                candidates = candidates[tokens[candidates + offset] == tail[offset]]
            if candidates.size:
                start = int(candidates[-1]) + n  # the latest match: nearest, most relevant
                return tokens[start : start + length].tolist()
        return []


__all__ = ["Drafter", "PromptLookup"]
