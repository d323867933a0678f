"""The denoising loop with a fake denoiser whose confidences we choose."""

import dataclasses

import numpy as np
import pytest

from dlm_lsp.layout import build_layout
from dlm_lsp.modelcard import SpecialTokens
from dlm_lsp.sampler import Cancelled, SamplerSettings, choose_commits, denoise

SPECIALS = SpecialTokens(pad=0, mask=1, end_of_span=2, file=3)


class ScriptedDenoiser:
    """Predicts a fixed target; the confidence of position i is `confidence[i]`."""

    returns_logits = False

    def __init__(self, target, confidence, canvas_prob=None):
        self.target = np.array(target, dtype=np.int64)
        self.confidence = np.array(confidence, dtype=np.float32)
        self.canvas_prob = canvas_prob
        self.encodes = 0
        self.calls = []

    def encode(self, layout):
        self.encodes += 1
        return {"context": list(layout.context_ids)}

    def denoise_step(self, state, canvas_ids, canvas_positions):
        assert canvas_ids.shape == canvas_positions.shape == (1, len(self.target))
        self.calls.append(canvas_ids[0].copy())
        prob = self.canvas_prob(canvas_ids[0]) if self.canvas_prob else np.ones(len(self.target))
        return self.target[None], self.confidence[None], np.asarray(prob, np.float32)[None]


def one_hole(length):
    return build_layout([[10, 11], [12]], [length], SPECIALS.file)


def test_confident_canvas_finishes_in_one_step():
    d = ScriptedDenoiser([5, 6, 7, 2], [0.99] * 4)
    result = denoise(d, one_hole(4), SPECIALS, SamplerSettings(threshold=0.9))
    assert result.canvases == [[5, 6, 7]]
    assert result.steps == 1
    assert d.encodes == 1


def test_at_least_one_commit_per_step_highest_first():
    d = ScriptedDenoiser([5, 6, 7, 8], [0.1, 0.4, 0.3, 0.2])
    result = denoise(d, one_hole(4), SPECIALS, SamplerSettings(threshold=0.9, max_steps=10))
    assert result.steps == 4
    assert result.committed_per_step == [1, 1, 1, 1]
    # the second call already has the most confident position (index 1) committed
    assert d.calls[1].tolist() == [1, 6, 1, 1]
    assert result.canvases == [[5, 6, 7, 8]]


def test_end_of_span_closes_the_rest_of_the_canvas():
    # position 1 is a confident end-of-span: positions 2.. are dropped without more steps
    d = ScriptedDenoiser([5, 2, 9, 9, 9, 9], [0.5, 0.99, 0.1, 0.1, 0.1, 0.1])
    result = denoise(d, one_hole(6), SPECIALS, SamplerSettings(threshold=0.9))
    assert result.canvases == [[5]]
    assert result.steps == 2


def test_unconfident_canvas_still_finishes_within_max_steps_on_schedule():
    confidence = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    d = ScriptedDenoiser([5, 6, 7, 8, 9, 10, 11, 12], confidence)
    result = denoise(d, one_hole(8), SPECIALS, SamplerSettings(threshold=0.9, max_steps=3))
    assert result.steps == 3
    assert result.committed_per_step == [3, 3, 2]  # ceil(8/3), ceil(5/2), the rest
    assert d.calls[1].tolist() == [1, 1, 1, 1, 1, 10, 11, 12]  # most confident first
    assert result.canvases == [[5, 6, 7, 8, 9, 10, 11, 12]]


def test_left_to_right_commits_one_token_per_step_in_order():
    d = ScriptedDenoiser([5, 6, 7, 2], [0.1, 0.99, 0.99, 0.99])
    result = denoise(d, one_hole(4), SPECIALS,
                     SamplerSettings(strategy="left_to_right", max_steps=100))
    assert [c.tolist() for c in d.calls[:3]] == [[1, 1, 1, 1], [5, 1, 1, 1], [5, 6, 1, 1]]
    assert result.steps == 4
    assert result.canvases == [[5, 6, 7]]


def test_several_holes_are_one_canvas_and_truncate_separately():
    layout = build_layout([[10], [11], [12]], [3, 2], SPECIALS.file)
    d = ScriptedDenoiser([5, 2, 9, 6, 7], [0.95] * 5)
    result = denoise(d, layout, SPECIALS, SamplerSettings(threshold=0.9))
    assert result.canvases == [[5], [6, 7]]
    assert result.steps == 1


def test_remask_floor_re_masks_committed_tokens_that_lost_confidence():
    # The first step commits position 0; afterwards the model says that token is unlikely
    # and prefers another: with a floor it is re-masked and re-committed, without it stays.
    confidences = [0.95, 0.2, 0.2]
    target_after = np.array([8, 6, 7])

    class Changing(ScriptedDenoiser):
        def denoise_step(self, state, canvas_ids, canvas_positions):
            step = len(self.calls)
            ids, prob, _ = super().denoise_step(state, canvas_ids, canvas_positions)
            if step >= 1:
                ids = target_after[None]
            cprob = np.where(canvas_ids[0] == 5, 0.01, 0.9).astype(np.float32)
            return ids, prob, cprob[None]

    plain = denoise(Changing([5, 6, 7], confidences), one_hole(3), SPECIALS,
                    SamplerSettings(threshold=0.9, max_steps=10))
    assert plain.canvases == [[5, 6, 7]]
    corrected = denoise(Changing([5, 6, 7], confidences), one_hole(3), SPECIALS,
                        SamplerSettings(threshold=0.9, max_steps=10, remask_floor=0.05))
    assert corrected.canvases == [[8, 6, 7]]


def test_cancellation_is_checked_between_steps():
    d = ScriptedDenoiser([5, 6, 7, 8], [0.1] * 4)
    calls = iter([False, False, True])
    with pytest.raises(Cancelled):
        denoise(d, one_hole(4), SPECIALS, SamplerSettings(max_steps=10),
                cancelled=lambda: next(calls, True))
    assert len(d.calls) == 1


def test_choose_commits_threshold_rule():
    masked = np.array([True, True, False, True])
    prob = np.array([0.95, 0.5, 0.99, 0.91], dtype=np.float32)
    got = choose_commits(masked, prob, SamplerSettings(threshold=0.9), steps_left=10)
    assert got.tolist() == [True, False, False, True]
    last = choose_commits(masked, prob, SamplerSettings(threshold=0.9), steps_left=1)
    assert last.tolist() == [True, True, False, True]


class LogitsDenoiser(ScriptedDenoiser):
    """Also offers logits: end-of-span is the argmax, token 9 the best real alternative."""

    returns_logits = True

    def denoise_step(self, state, canvas_ids, canvas_positions, need_logits=False):
        ids, prob, cprob = super().denoise_step(state, canvas_ids, canvas_positions)
        if not need_logits:
            return ids, prob, cprob
        logits = np.full((1, len(self.target), 12), -5.0, dtype=np.float32)
        logits[0, :, SPECIALS.end_of_span] = 3.0
        logits[0, :, SPECIALS.mask] = 9.0  # never chosen: special
        logits[0, :, 9] = 1.0
        return ids, prob, cprob, logits


def test_min_tokens_keeps_a_canvas_from_closing_empty():
    settings = SamplerSettings(threshold=0.9, min_tokens=1)
    empty = denoise(ScriptedDenoiser([2, 2, 2, 2], [0.99] * 4), one_hole(4), SPECIALS,
                    dataclasses.replace(settings, min_tokens=0))
    assert empty.canvases == [[]]
    d = LogitsDenoiser([2, 2, 2, 2], [0.99] * 4)
    result = denoise(d, one_hole(4), SPECIALS, settings)
    assert result.canvases == [[9]]  # the best token that is not special, then the span ends
