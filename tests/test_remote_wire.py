"""The remote wire format and the Triton model's batch logic, without a server."""

import numpy as np
import pytest

from dlm_lsp.layout import build_layout
from dlm_lsp.remote import wire
from dlm_lsp.remote.triton_model import fill_requests
from dlm_lsp.sampler import SamplerSettings, denoise
from test_sampler_batch import LAYOUTS, SETTINGS, SPECIALS, Batched, OneByOne


class Card:  # what fill_requests reads of a model card
    vocab_size, max_context, max_position, special_tokens = 64, 64, 256, SPECIALS
    shift = False


def roundtrip(tensors):
    """What Triton hands the model: numpy arrays, strings as bytes."""
    return {name: np.array(value) for name, value in tensors.items()}


def test_a_request_round_trips_through_the_wire():
    layout = build_layout([[5, 6], [7], [8, 9]], [4, 2], SPECIALS.file)
    settings = SamplerSettings(threshold=0.7, max_steps=5, strategy="left_to_right")
    tensors = wire.request_tensors(layout, settings)
    assert all(value.shape[0] == 1 for value in tensors.values())
    assert wire.parse_request(roundtrip(tensors)) == (layout, settings)


def test_the_triton_model_answers_a_batch_as_each_request_alone():
    requests = [roundtrip(wire.request_tensors(lay, s)) for lay, s in zip(LAYOUTS, SETTINGS)]
    runtime = Batched()
    answers = fill_requests(runtime, Card, requests)
    assert runtime.batch_encodes == [len(LAYOUTS)]
    for answer, lay, s in zip(answers, LAYOUTS, SETTINGS):
        got = wire.parse_response(answer, lay, SPECIALS.end_of_span)
        assert got == denoise(OneByOne(), lay, SPECIALS, s)


def test_a_bad_request_is_refused_alone_and_a_cancelled_one_is_dropped():
    good = roundtrip(wire.request_tensors(LAYOUTS[0], SETTINGS[0]))
    too_far = build_layout([[5], [6]], [8], SPECIALS.file)
    too_far = type(too_far)(too_far.context_ids, too_far.context_positions,
                            [[p + 1000 for p in too_far.canvas_positions[0]]])
    bad_ids = build_layout([[500], [6]], [8], SPECIALS.file)
    broken = dict(good, canvas_lengths=np.array([[3]]))
    requests = [good, roundtrip(wire.request_tensors(too_far, SETTINGS[0])),
                roundtrip(wire.request_tensors(bad_ids, SETTINGS[0])), broken,
                dict(good, sampler=np.array([[b"not json"]], dtype=object)), good]
    answers = fill_requests(Batched(), Card, requests,
                            [lambda: False] * 5 + [lambda: True])
    assert isinstance(answers[0], dict)
    assert [type(a) for a in answers[1:]] == [wire.WireError] * 4 + [InterruptedError]
    assert "positions" in str(answers[1]) and "ids" in str(answers[2])


def test_the_server_bounds_the_steps_a_request_may_ask_for():
    settings = wire.check_request(LAYOUTS[0], SamplerSettings(max_steps=10**9), vocab_size=64,
                                  max_context=64, max_position=256)
    assert settings.max_steps == wire.MAX_STEPS


def test_a_response_with_the_wrong_canvas_length_is_refused():
    answer = {"canvas": np.array([[5, 2]]), "steps": np.array([[1]]),
              "committed_per_step": np.array([[2]])}
    with pytest.raises(wire.WireError):
        wire.parse_response(answer, LAYOUTS[0], SPECIALS.end_of_span)


def test_grouping_by_canvas_length_gives_the_same_answers():
    requests = [roundtrip(wire.request_tensors(lay, s)) for lay, s in zip(LAYOUTS, SETTINGS)]
    grouped = Batched()
    answers = fill_requests(grouped, Card, requests, group_by_canvas=True)
    assert sorted(grouped.batch_encodes) == [1, 1, 1, 1, 1]  # five different canvas lengths
    plain = fill_requests(Batched(), Card, requests)
    assert all((a[k] == b[k]).all() for a, b in zip(answers, plain) for k in a)
