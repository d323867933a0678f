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


def test_uncertain_position_is_the_smallest_margin_from_start():
    logits = np.full((4, 5), -10.0)
    logits[0, 1] = 5.0  # sure of token 1
    logits[1, 2], logits[1, 3] = 5.0, 4.9  # token 2 barely ahead of 3
    logits[2, 0], logits[2, 4] = 5.0, 4.0
    logits[3, 2], logits[3, 1] = 5.0, 4.99  # the closest call, but the taken token is 1
    taken = [1, 2, 0, 1]
    assert rerank.uncertain_position(logits, taken, 0) == 3  # 1 trails 2: negative margin
    assert rerank.uncertain_position(logits[:3], taken, 0) == 1
    assert rerank.uncertain_position(logits[:3], taken, 2) == 2
