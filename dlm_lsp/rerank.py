"""Suffix-likelihood reranking: the code after the hole picks the candidate and where it ends.

A model that reads no suffix (the shipped autoregressive one) cannot know where a span ends
or which of its likely continuations fits the code that follows. The server can ask it: as in
InCoder's left-to-right reranking (arXiv 2204.05999, §3.2), K candidates are decoded from the
prefix — the greedy one, and the K−1 best first lines of a beam search over the prefix (or,
for dlm/fill and `emptyRerank`, the best other first tokens, each continued greedily) — each
is cut at the places its scope allows (line ends for a block), and every (candidate, cut) is
scored by

    log P(candidate | prefix) + log P(first M suffix tokens | prefix + candidate)

with one causal decoder call over the cached prefix per (candidate, cut): the canvas is the
candidate's tokens followed by the suffix's, and its logits give every log-probability at
once. The best score wins.

The beam matters because the greedy line is often not the one the suffix wants, and no
candidate that starts with the greedy token (or branches only there) contains the right one: on
the held-out set's single lines a beam of 3 or 4 took inline exact match from 12 % to 22 %
(benchmarks/README.md).

Pure logic: what to score (`cuts`, `score_tokens`), how (`token_logprobs`, `Scored`), which
candidates to decode (`beam`, `alternatives`, `ForcedStart`). The engine runs the calls.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

SUFFIX_TOKENS = 16  # M: suffix tokens scored after each candidate
MAX_CUTS = 4  # line ends tried per candidate (the full candidate always is one)
MAX_LINES = MAX_CUTS + 1  # a reranked block has at most this many lines (decoding stops there)
ALTERNATIVE_SLACK = 16  # an alternative may run this many tokens past the greedy one's length
# where the other candidates come from: "beam" (the K−1 best first lines of a beam search
# besides the greedy one, `beam`) or "first" (the best other tokens at the greedy candidate's
# first free position, each continued greedily), measured in benchmarks/README.md
BRANCH = "beam"
# dlm/fill's: with the suffix ahead of the prefix (`suffixFirst`) the beam finds likelier
# one-line bodies that copy the code after the hole (`return sum(values) / len(values)` for
# an empty `summary`) where the greedy block uses its names (`mean(values)`): a fill keeps the
# first-token alternatives (tests/test_suffix_fit.py, benchmarks/README.md)
FILL_BRANCH = "first"
_OPEN_ENDS = (":", "{", "(", "[")  # a cut after a line ending so leaves its block open


@dataclass(frozen=True)
class Scored:
    """One (candidate, cut) with its log-probabilities."""

    text: str  # the completion text at this cut (what the user would get)
    candidate: float  # log P(candidate tokens | prefix)
    suffix: float  # log P(first M suffix tokens | prefix + candidate)
    tokens: int  # candidate tokens scored
    index: int = 0  # which candidate (0: greedy)

    def score(self, alpha: float = 0.0) -> float:
        """The ranking score; `alpha` > 0 divides the candidate's part by its length**alpha
        (length normalisation; 0: the plain document log-likelihood of the window)."""
        length = max(1, self.tokens) ** alpha if alpha else 1.0
        return self.candidate / length + self.suffix


def best(scored: Sequence[Scored], alpha: float = 0.0) -> Scored | None:
    """The highest score; ties go to the earlier (greedy first, shorter cut first)."""
    winner = None
    for item in scored:
        if winner is None or item.score(alpha) > winner.score(alpha) + 1e-9:
            winner = item
    return winner


def capped(plan):
    """`plan` (an `InfillPlan`) with each multi-line hole's line cap at `MAX_LINES`: the cuts
    try the first line ends, so a candidate's later lines would only cost decoder calls."""
    holes = [h if h.stop.single_line or (h.stop.max_lines or MAX_LINES + 1) <= MAX_LINES
             else replace(h, stop=replace(h.stop, max_lines=MAX_LINES)) for h in plan.holes]
    return replace(plan, holes=holes)


def cuts(text: str, multi_line: bool, max_cuts: int = MAX_CUTS) -> list[str]:
    """The places a completion may end: for a block or statement, after each of its first
    `max_cuts` non-blank lines that do not leave a block or bracket open (`if x:`, `f(`),
    and the whole; for a line scope only the whole."""
    if not multi_line or "\n" not in text.strip("\n"):
        return [text]
    lines = text.split("\n")
    found: list[str] = []
    for end in range(1, len(lines)):
        head = "\n".join(lines[:end])
        last = lines[end - 1].rstrip()
        if last.strip() and not last.endswith(_OPEN_ENDS) and head not in found:
            found.append(head)
        if len(found) >= max_cuts:
            break
    if text not in found:
        found.append(text)
    return found


def score_tokens(candidate_text: str, suffix_text: str,
                 encode: Callable[[str], tuple[list[int], list[tuple[int, int]]]],
                 suffix_tokens: int = SUFFIX_TOKENS) -> tuple[list[int], int]:
    """The tokens to score for one (candidate, cut) and how many of them are the candidate's.

    The candidate and the suffix are tokenized together (the tokens an uninterrupted file
    would have: a newline merges with the next line's indentation); a token starting inside
    the candidate is the candidate's. `encode` gives (ids, character offsets).
    """
    ids, offsets = encode(candidate_text + suffix_text)
    boundary = len(candidate_text)
    own = sum(1 for start, _ in offsets if start < boundary)
    return ids[: own + suffix_tokens], own


def token_logprobs(logits: np.ndarray, targets: Sequence[int]) -> np.ndarray:
    """log softmax(logits)[i, targets[i]] for (T, V) logits: each target's log-probability."""
    scores = np.asarray(logits, np.float64)
    top = scores.max(-1, keepdims=True)
    norm = np.log(np.exp(scores - top).sum(-1)) + top[:, 0]
    picked = scores[np.arange(len(targets)), np.asarray(targets, np.int64)]
    return picked - norm


def shifted_inputs(anchor: int, tokens: Sequence[int], first_position: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Decoder inputs that score `tokens` on a shifted (autoregressive) canvas starting at
    `first_position`: the anchor (the token before the hole) then every token but the last,
    one position earlier each, so that output i predicts tokens[i]."""
    ids = np.asarray([anchor, *tokens[:-1]], np.int64)
    positions = np.arange(first_position - 1, first_position - 1 + len(tokens), dtype=np.int64)
    return ids, positions


def first_free_position(ids: Sequence[int], text_of: Callable[[int], str], forced: str) -> int:
    """The first canvas position whose token is not forced by token healing: the one after
    the tokens that spell the healed-off text `forced` ("" : position 0)."""
    written = ""
    for position, token in enumerate(ids):
        if len(written) >= len(forced):
            return position
        written += text_of(token)
    return len(ids)


def alternatives(logits: np.ndarray, taken: int, allowed: np.ndarray | None, count: int
                 ) -> list[int]:
    """The `count` most likely tokens at one position other than `taken` (the greedy one),
    among `allowed` ids (None: any)."""
    if count <= 0:
        return []
    scores = np.asarray(logits, np.float64).copy()
    if allowed is not None:
        mask = np.full(scores.shape, -np.inf)
        mask[allowed] = 0.0
        scores = scores + mask
    scores[taken] = -np.inf
    order = np.argsort(-scores, kind="stable")[:count]
    return [int(i) for i in order if np.isfinite(scores[i])]


def log_softmax(row: np.ndarray) -> np.ndarray:
    """log softmax of one logits row, in float64."""
    scores = np.asarray(row, np.float64)
    scores = scores - scores.max()
    return scores - np.log(np.exp(scores).sum())


def beam(next_logits: Callable[[list[int]], np.ndarray], width: int, max_tokens: int,
         allowed_after: Callable[[list[int]], np.ndarray | None] | None,
         finished: Callable[[list[int]], bool]) -> list[tuple[list[int], float]]:
    """The `width` most likely continuations by a beam search (tokens, log P(tokens | prefix)),
    best first: each step every live hypothesis is extended by its `width` best next tokens
    (among `allowed_after(tokens)`, token healing's constraint; None: any) and the `width`
    best extensions live on; a hypothesis is done when `finished(tokens)` (its scope
    closed, an end-of-span token) or at `max_tokens`. The search ends when `width`
    hypotheses are done or no live one can still beat the worst of them (log-probabilities
    only fall as a hypothesis grows). `next_logits(tokens)` is the model's logits row for
    the token after `tokens` (one decoder call)."""
    live: list[tuple[list[int], float]] = [([], 0.0)]
    done: list[tuple[list[int], float]] = []
    for _ in range(max_tokens):
        grown: list[tuple[list[int], float]] = []
        for tokens, score in live:
            row = log_softmax(next_logits(tokens))
            allowed = allowed_after(tokens) if allowed_after is not None else None
            if allowed is not None and allowed.size:
                keep = np.full(row.shape, -np.inf)
                keep[allowed] = row[allowed]
                row = keep
            top = np.argpartition(-row, width)[:width] if row.size > width else np.arange(row.size)
            for token in sorted(top, key=lambda t: (-row[t], t)):
                if np.isfinite(row[token]):
                    grown.append(([*tokens, int(token)], score + float(row[token])))
        grown.sort(key=lambda item: -item[1])
        live = []
        for tokens, score in grown[:width]:
            (done if finished(tokens) else live).append((tokens, score))
        done.sort(key=lambda item: -item[1])
        done = done[:width]
        if not live or (len(done) >= width and live[0][1] <= done[-1][1]):
            break
    return sorted(done + live, key=lambda item: -item[1])[:width]


class ForcedStart:
    """A hole constraint (the sampler's `HoleStart`): the canvas begins with `forced` ids,
    then obeys `then` (token healing's constraint, or none)."""

    def __init__(self, forced: Sequence[int], then=None) -> None:
        self.forced = [int(i) for i in forced]
        self.then = then

    def allowed_after(self, committed: list[int]) -> np.ndarray | None:
        n = len(committed)
        if n < len(self.forced):
            if list(committed) != self.forced[:n]:
                return None  # the runtime could not hold the constraint: let it go
            return np.asarray([self.forced[n]], np.int64)
        return self.then.allowed_after(committed) if self.then is not None else None
