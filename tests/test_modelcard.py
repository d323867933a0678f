"""model.json validation and the shared position layout."""

import json

import pytest

from dlm_lsp.layout import build_layout
from dlm_lsp.modelcard import ModelError, load_card

CARD = {
    "format": 1, "name": "t", "version": "1",
    "architecture": {"vocab_size": 100, "n_layers": 2, "n_heads": 2, "head_dim": 8},
    "special_tokens": {"pad": 0, "mask": 1, "end_of_span": 2, "file": 3},
    "canvas_buckets": [32, 16], "max_context": 64, "max_position": 128,
    "sampler": {"threshold": 0.8, "unknown_knob": 1},
    "graphs": {"cpu": {"encoder": "e.onnx", "decoder": "d.onnx"}},
}


def write(tmp_path, card):
    (tmp_path / "model.json").write_text(json.dumps(card))
    for name in ("e.onnx", "d.onnx", "tokenizer.json"):
        (tmp_path / name).write_text("x")
    return tmp_path


def test_valid_card(tmp_path):
    card = load_card(write(tmp_path, CARD))
    assert card.canvas_buckets == (16, 32)
    assert card.sampler.threshold == 0.8
    assert card.bucket_for(17) == 32 and card.bucket_for(1000) == 32
    assert card.graphs_for("cuda").encoder == "e.onnx"
    assert load_card(tmp_path).to_json()["special_tokens"]["end_of_span"] == 2


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c.pop("graphs"), "graphs"),
    (lambda c: c["special_tokens"].update(mask=500), "outside the vocabulary"),
    (lambda c: c["architecture"].update(n_layers="two"), "n_layers"),
    (lambda c: c.update(canvas_buckets=[]), "canvas_buckets"),
    (lambda c: c.update(format=9), "format"),
])
def test_bad_cards_name_the_problem(tmp_path, mutate, message):
    card = json.loads(json.dumps(CARD))
    mutate(card)
    with pytest.raises(ModelError, match=message):
        load_card(write(tmp_path, card))


def test_missing_and_corrupt(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_card(tmp_path / "nope")
    with pytest.raises(ModelError, match="missing"):
        load_card(tmp_path)
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(ModelError, match="cannot be read"):
        load_card(tmp_path)
    write(tmp_path, CARD)
    (tmp_path / "d.onnx").unlink()
    with pytest.raises(ModelError, match="d.onnx"):
        load_card(tmp_path)


def test_layout_positions_run_through_the_canvases():
    layout = build_layout([[7, 8], [9], [10, 11]], [3, 2], file_id=3)
    assert layout.context_ids == [3, 7, 8, 9, 10, 11]
    assert layout.context_positions == [0, 1, 2, 6, 9, 10]
    assert layout.canvas_positions == [[3, 4, 5], [7, 8]]
    with pytest.raises(ValueError):
        build_layout([[1]], [4], file_id=3)


def test_format_1_cards_are_bidirectional_and_format_2_names_its_weights(tmp_path):
    card = load_card(write(tmp_path, CARD))
    assert card.context_attention == "bidirectional" and not card.causal and card.weights is None
    causal = {**CARD, "format": 2, "context_attention": "causal", "weights": "weights.bin"}
    with pytest.raises(ModelError, match="weights.bin"):
        load_card(write(tmp_path, causal))
    (tmp_path / "weights.bin").write_bytes(b"\0")
    card = load_card(tmp_path)
    assert card.causal and card.weights == "weights.bin"
    assert card.to_json()["context_attention"] == "causal" and card.to_json()["format"] == 2
    with pytest.raises(ModelError, match="context_attention"):
        load_card(write(tmp_path, {**causal, "context_attention": "sideways"}))


FEATURE_DRAFTER = {"kind": "DFlash block drafter", "graph": "drafter.onnx", "trained": True,
                   "target_layers": [2, 0, 1], "block_size": 8, "n_layers": 1,
                   "params": 4536576, "training_tokens": 2703056, "training_minutes": 102.5,
                   "tau": {"tau_drafter": 1.437}, "lossless": "..."}


def test_the_drafter_block_prompt_lookup_or_a_feature_drafter(tmp_path):
    lookup = {**CARD, "drafter": {"kind": "prompt lookup", "trained": False,
                                  "training_tokens": 0, "tokens_per_target_call": {}}}
    card = load_card(write(tmp_path, lookup))
    assert card.drafter.graph is None and not card.drafter.trained
    assert load_card(write(tmp_path, CARD)).drafter is None
    with pytest.raises(ModelError, match="drafter.onnx"):  # the graph it names must be there
        load_card(write(tmp_path, {**CARD, "drafter": FEATURE_DRAFTER}))
    (tmp_path / "drafter.onnx").write_text("x")
    card = load_card(tmp_path)
    assert card.drafter.target_layers == (2, 0, 1) and card.drafter.block_size == 8
    assert card.drafter.training_minutes == 102.5 and card.drafter.tau["tau_drafter"] == 1.437
    assert card.to_json()["drafter"] == FEATURE_DRAFTER  # the block as written


@pytest.mark.parametrize("change, message", [
    ({"target_layers": [3]}, "target_layers"),  # the card's model has 2 blocks
    ({"block_size": 1}, "block_size"),
    ({"training_tokens": -1}, "training_tokens"),
    ({"kind": None}, "kind"),
])
def test_a_bad_drafter_block_names_the_problem(tmp_path, change, message):
    (tmp_path / "drafter.onnx").write_text("x")
    with pytest.raises(ModelError, match=message):
        load_card(write(tmp_path, {**CARD, "drafter": {**FEATURE_DRAFTER, **change}}))
