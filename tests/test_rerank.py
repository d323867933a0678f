"""rerank.py: the pure parts of suffix-likelihood reranking."""

from __future__ import annotations

import numpy as np
import pytest

from dlm_lsp import rerank
from dlm_lsp.rerank import ForcedStart, Scored


def test_cuts_of_a_block_are_its_line_ends_without_open_ones():
    text = "    for x in xs:\n        total += x\n    count = len(xs)\n    mean = total / count"
    assert rerank.cuts(text, multi_line=True) == [
        "    for x in xs:\n        total += x",
        "    for x in xs:\n        total += x\n    count = len(xs)",
        text,
    ]
    assert rerank.cuts(text, multi_line=False) == [text]
    assert rerank.cuts("x = 1", multi_line=True) == ["x = 1"]


def test_cuts_are_capped():
    text = "\n".join(f"x{i} = {i}" for i in range(10))
    found = rerank.cuts(text, multi_line=True, max_cuts=3)
    assert found[:3] == ["x0 = 0", "x0 = 0\nx1 = 1", "x0 = 0\nx1 = 1\nx2 = 2"]
    assert found[-1] == text and len(found) == 4


def fake_encode(text: str):
    """One token per character (id = code point), offsets as characters."""
    return [ord(c) for c in text], [(i, i + 1) for i in range(len(text))]


def test_score_tokens_split_candidate_and_suffix():
    tokens, own = rerank.score_tokens("ab", "cdefg", fake_encode, suffix_tokens=3)
    assert tokens == [ord(c) for c in "abcde"] and own == 2


def test_token_logprobs_are_log_softmax_of_the_targets():
    logits = np.array([[0.0, 0.0], [np.log(3.0), 0.0]])
    got = rerank.token_logprobs(logits, [1, 0])
    assert got == pytest.approx([np.log(0.5), np.log(0.75)])


def test_shifted_inputs_put_the_anchor_first():
    ids, positions = rerank.shifted_inputs(7, [1, 2, 3], first_position=10)
    assert ids.tolist() == [7, 1, 2] and positions.tolist() == [9, 10, 11]


def test_best_is_the_document_likelihood_ties_to_the_first():
    one = Scored("a", candidate=-1.0, suffix=-5.0, tokens=1)
    two = Scored("a\nb", candidate=-2.0, suffix=-1.0, tokens=2)
    three = Scored("a\nb\nc", candidate=-6.0, suffix=-0.5, tokens=6)
    assert rerank.best([one, two, three]) is two
    assert rerank.best([two, Scored("x", -2.0, -1.0, 2)]) is two
    # length normalisation favours the long candidate whose tokens are likely on average
    assert rerank.best([one, three], alpha=1.0) is three
    assert rerank.best([]) is None


def test_first_free_position_skips_the_healed_text():
    texts = {1: "\n", 2: "    ", 3: "return", 4: "\n    "}
    assert rerank.first_free_position([1, 2, 3], texts.get, "\n    ") == 2
    assert rerank.first_free_position([4, 3], texts.get, "\n    ") == 1
    assert rerank.first_free_position([3], texts.get, "") == 0


def test_alternatives_are_the_best_others_among_the_allowed():
    logits = np.array([0.0, 5.0, 4.0, 3.0, 2.0])
    assert rerank.alternatives(logits, taken=1, allowed=None, count=2) == [2, 3]
    assert rerank.alternatives(logits, taken=1, allowed=np.array([1, 3, 4]), count=5) == [3, 4]
    assert rerank.alternatives(logits, taken=1, allowed=None, count=0) == []


class AfterTwo:
    def allowed_after(self, committed):
        return np.array([9]) if len(committed) == 2 else None


def test_forced_start_then_the_healing_constraint():
    start = ForcedStart([5, 6], AfterTwo())
    assert start.allowed_after([]).tolist() == [5]
    assert start.allowed_after([5]).tolist() == [6]
    assert start.allowed_after([5, 6]).tolist() == [9]
    assert start.allowed_after([5, 6, 9]) is None
    assert start.allowed_after([4]) is None  # the runtime went elsewhere: no constraint
    assert ForcedStart([5]).allowed_after([5]) is None


def test_capped_limits_block_holes_only():
    from dlm_lsp.plan import plan_completion
    from dlm_lsp.modelcard import DEFAULT_CANVAS_BUCKETS

    text = "def f():\n    \n"
    plan = plan_completion(text, 13, None, None, buckets=DEFAULT_CANVAS_BUCKETS,
                           count_tokens=len, language_id="python")
    assert plan.holes[0].stop.max_lines > rerank.MAX_LINES
    assert rerank.capped(plan).holes[0].stop.max_lines == rerank.MAX_LINES
    line = plan_completion("x = ", 4, None, None, buckets=DEFAULT_CANVAS_BUCKETS,
                           count_tokens=len, language_id="python")
    assert rerank.capped(line).holes[0].stop == line.holes[0].stop


def _bigram_model(table: dict[int, dict[int, float]], vocab: int = 6):
    """next_logits for a toy model: log-probabilities of the token after the last one."""
    calls = []

    def next_logits(tokens):
        calls.append(list(tokens))
        row = np.full(vocab, -50.0)
        for token, p in table.get(tokens[-1] if tokens else -1, {}).items():
            row[token] = np.log(p)
        return row
    return next_logits, calls


def test_beam_finds_the_likelier_sequence_greedy_misses():
    # greedy takes 1 (0.6) then 3 or 4 (0.5 each): 0.3; 2 (0.4) then 5 (0.9) is 0.36
    next_logits, _ = _bigram_model({-1: {1: 0.6, 2: 0.4}, 1: {3: 0.5, 4: 0.5}, 2: {5: 0.9, 0: 0.1},
                                    3: {0: 1.0}, 4: {0: 1.0}, 5: {0: 1.0}})
    found = rerank.beam(next_logits, 2, 8, None, lambda tokens: tokens[-1] == 0)
    assert [tokens for tokens, _ in found] == [[2, 5, 0], [1, 3, 0]]
    assert found[0][1] == pytest.approx(np.log(0.36), abs=1e-6)
    assert found[0][1] > found[1][1]


def test_beam_keeps_to_the_allowed_ids_and_stops_at_its_length():
    next_logits, calls = _bigram_model({-1: {1: 0.6, 2: 0.4}, 1: {1: 1.0}, 2: {2: 1.0}})
    allowed = lambda tokens: np.array([2]) if not tokens else None  # noqa: E731
    found = rerank.beam(next_logits, 2, 3, allowed, lambda tokens: False)
    assert all(tokens[0] == 2 and len(tokens) == 3 for tokens, _ in found)
    assert len(calls) <= 1 + 2 * 2  # one hypothesis at the start, then at most `width` a step


def test_beam_stops_once_no_live_hypothesis_can_win():
    # both first tokens end at once: nothing is left to extend after one step
    next_logits, calls = _bigram_model({-1: {0: 0.7, 1: 0.3}, 1: {0: 1.0}})
    found = rerank.beam(next_logits, 2, 8, None, lambda tokens: tokens[-1] in (0, 1))
    assert [tokens for tokens, _ in found] == [[0], [1]]
    assert len(calls) == 1

