"""The batched sampler: a batch in lockstep gives each request what it would get alone."""

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from dlm_lsp.layout import build_layout
from dlm_lsp.modelcard import SpecialTokens
from dlm_lsp.sampler import SamplerSettings, denoise, denoise_batch, split_canvas

SPECIALS = SpecialTokens(pad=0, mask=1, end_of_span=2, file=3)
VOCAB = 24


def predict(context, canvas, positions):
    """A deterministic toy model of one request: depends on its context, its canvas and its
    positions (never on other requests or on padding); predicts end-of-span now and then."""
    seed = int(np.sum(context) * 31 + np.sum(canvas * (np.arange(len(canvas)) + 1)))
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((len(canvas), VOCAB)).astype(np.float32) * 3
    logits[:, 2] += (positions % 5 == 4) * 6.0  # end-of-span likes some positions
    logits[:, [0, 1, 3]] -= 20.0  # pad, mask, file: never
    exp = np.exp(logits - logits.max(-1, keepdims=True))
    probs = exp / exp.sum(-1, keepdims=True)
    pred = probs.argmax(-1)
    canvas_prob = probs[np.arange(len(canvas)), np.clip(canvas, 0, VOCAB - 1)]
    return pred.astype(np.int64), probs.max(-1).astype(np.float32), canvas_prob, logits


class OneByOne:
    """A runtime with only the per-request calls (like a fake or an old runtime)."""

    returns_logits = True

    def __init__(self):
        self.encodes = 0
        self.steps = 0

    def encode(self, layout):
        self.encodes += 1
        return np.array(layout.context_ids)

    def denoise_step(self, state, canvas_ids, canvas_positions, need_logits=False):
        assert canvas_ids.shape[0] == 1
        self.steps += 1
        pred, prob, cprob, logits = predict(state, canvas_ids[0], canvas_positions[0])
        out = (pred[None], prob[None], cprob[None])
        return out + (logits[None],) if need_logits else out


class Batched(OneByOne):
    """Also the batch protocol; records every call's shape and mask."""

    def __init__(self):
        super().__init__()
        self.batch_encodes = []
        self.masks = []

    def encode_batch(self, layouts):
        self.batch_encodes.append(len(layouts))
        width = max(len(layout.context_ids) for layout in layouts)
        ids = np.zeros((len(layouts), width), np.int64)  # padded like the real thing
        for row, layout in enumerate(layouts):
            ids[row, : len(layout.context_ids)] = layout.context_ids
        return ids

    def denoise_step_batch(self, state, canvas_ids, canvas_positions, canvas_mask,
                           need_logits=False):
        assert canvas_ids.shape == canvas_positions.shape == canvas_mask.shape
        assert canvas_ids.shape[0] == state.shape[0]
        self.masks.append(canvas_mask.copy())
        batch, width = canvas_ids.shape
        pred = np.zeros((batch, width), np.int64)
        prob = np.zeros((batch, width), np.float32)
        cprob = np.zeros((batch, width), np.float32)
        logits = np.zeros((batch, width, VOCAB), np.float32)
        for row in range(batch):
            n = int(canvas_mask[row].sum())
            if n:
                p, q, c, lg = predict(state[row], canvas_ids[row, :n], canvas_positions[row, :n])
                pred[row, :n], prob[row, :n], cprob[row, :n], logits[row, :n] = p, q, c, lg
        out = (pred, prob, cprob)
        return out + (logits,) if need_logits else out


def layout(context, lengths):
    segments = [[10 + (context + i) % 9] * (1 + (context + i) % 4) for i in range(len(lengths) + 1)]
    return build_layout(segments, lengths, SPECIALS.file)


LAYOUTS = [layout(1, [8]), layout(2, [4, 6]), layout(3, [16]), layout(4, [3]), layout(5, [12])]
SETTINGS = [
    SamplerSettings(threshold=0.9, max_steps=8),
    SamplerSettings(threshold=0.5, max_steps=4),
    SamplerSettings(threshold=0.95, max_steps=16, remask_floor=0.05),
    SamplerSettings(strategy="left_to_right", max_steps=32),
    SamplerSettings(threshold=0.9, max_steps=8, min_tokens=0),
]


def alone(runtime_cls, lay, s):
    return denoise(runtime_cls(), lay, SPECIALS, s)


def test_a_batch_equals_one_by_one_and_encodes_once():
    expected = [alone(OneByOne, lay, s) for lay, s in zip(LAYOUTS, SETTINGS)]
    runtime = Batched()
    got = denoise_batch(runtime, LAYOUTS, SPECIALS, SETTINGS)
    assert got == expected
    assert runtime.batch_encodes == [len(LAYOUTS)] and runtime.encodes == 0
    steps = [r.steps for r in expected]
    assert len(set(steps)) > 1  # the requests finish at different steps
    assert len(runtime.masks) == max(steps)  # one decoder call per lockstep step
    # a finished request rides along masked out; an open one shows its whole canvas
    for step, mask in enumerate(runtime.masks):
        for row, result in enumerate(expected):
            assert mask[row].sum() == (sum(LAYOUTS[row].canvas_lengths)
                                       if step < result.steps else 0)
        assert mask.shape[1] == max(sum(LAYOUTS[row].canvas_lengths)
                                    for row, r in enumerate(expected) if step < r.steps)


def test_a_batch_of_one_through_the_batch_calls_equals_the_per_request_calls():
    for lay, s in zip(LAYOUTS, SETTINGS):
        runtime = Batched()
        assert denoise(runtime, lay, SPECIALS, s) == alone(OneByOne, lay, s)
        assert runtime.batch_encodes == [1]


def test_a_runtime_without_batch_calls_runs_the_same_lockstep_per_request():
    runtime = OneByOne()
    got = denoise_batch(runtime, LAYOUTS, SPECIALS, SETTINGS)
    assert got == [alone(OneByOne, lay, s) for lay, s in zip(LAYOUTS, SETTINGS)]
    assert runtime.encodes == len(LAYOUTS)
    assert runtime.steps == sum(r.steps for r in got)


def test_a_cancelled_request_leaves_the_batch_and_the_others_are_unchanged():
    steps_seen = {"n": 0}

    def cancel_second_after_one_step():
        steps_seen["n"] += 1
        return steps_seen["n"] > 2  # before encode, before step 1: no; then yes

    never = lambda: False  # noqa: E731
    checks = [never, cancel_second_after_one_step, never, lambda: True, never]
    runtime = Batched()
    got = denoise_batch(runtime, LAYOUTS, SPECIALS, SETTINGS, checks)
    expected = [alone(OneByOne, lay, s) for lay, s in zip(LAYOUTS, SETTINGS)]
    assert got[1] is None and got[3] is None
    assert [got[i] for i in (0, 2, 4)] == [expected[i] for i in (0, 2, 4)]
    assert runtime.batch_encodes == [4]  # cancelled before the encoder: never encoded
    assert runtime.masks[1][1].sum() == 0  # the cancelled row is masked out after its step


def test_an_encoded_state_skips_the_encoder():
    runtime = Batched()
    lay = LAYOUTS[0]
    got = denoise(runtime, lay, SPECIALS, SETTINGS[0], state=np.array(lay.context_ids))
    assert got == alone(OneByOne, lay, SETTINGS[0])
    assert runtime.batch_encodes == [] and runtime.encodes == 0


def test_split_canvas_truncates_each_hole_at_its_end_of_span():
    assert split_canvas([5, 2, 9, 6, 7, 2, 2], [3, 4], eos=2) == [[5], [6, 7]]
    assert split_canvas([], [], eos=2) == []


@hsettings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    holes=st.lists(st.lists(st.integers(1, 12), min_size=1, max_size=3), min_size=1, max_size=6),
    thresholds=st.lists(st.sampled_from([0.3, 0.7, 0.9, 0.99]), min_size=6, max_size=6),
    max_steps=st.lists(st.integers(1, 10), min_size=6, max_size=6),
)
def test_any_batch_equals_its_requests_alone(holes, thresholds, max_steps):
    layouts = [layout(i * 3 + 1, lengths) for i, lengths in enumerate(holes)]
    settings = [SamplerSettings(threshold=t, max_steps=m)
                for t, m in zip(thresholds, max_steps)][: len(layouts)]
    got = denoise_batch(Batched(), layouts, SPECIALS, settings)
    assert got == [alone(OneByOne, lay, s) for lay, s in zip(layouts, settings)]


def test_mismatched_arguments_are_refused():
    with pytest.raises(ValueError):
        denoise_batch(Batched(), LAYOUTS, SPECIALS, SETTINGS[:2])
    with pytest.raises(ValueError):
        denoise_batch(Batched(), LAYOUTS[:2], SPECIALS, SETTINGS[0], state=object())
    assert dataclasses.asdict(SETTINGS[0])  # settings stay plain data (sent over the wire)
