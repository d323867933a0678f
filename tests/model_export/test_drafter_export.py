"""The drafter's ONNX graph (model_export/drafter_export.py) drafts what the torch `Drafter`
drafts, over the target's own embedding and head in the model directory's weights file, and
its key/value cache extends exactly."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import onnx
import pytest
import torch

from dlm_lsp.modelcard import load_card
from model_export.drafter import Drafter
from model_export.drafter_export import (DRAFTER_GRAPH, drafter_session, export_drafter,
                                         time_one_call)
from model_export.fused import encoder_session
from model_export.model import block_mask
from tests.causal_model import build_exported_model, torch_model

LAYERS = [1, 0]  # deepest last is not required: the order is the drafter's


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny target shaped as the shipped one (fused q4 graphs), a 2-layer drafter with
    float16-exact weights, exported into a copy of the target's directory."""
    root = tmp_path_factory.mktemp("drafter")
    built = build_exported_model(root / "built", sharpness=4.0, shift=True,
                                 canvas_attention="causal", n_kv_heads=1, reads_suffix=False,
                                 fused=True)
    target = torch_model(built)
    directory = root / "model"
    shutil.copytree(built, directory)
    torch.manual_seed(1)
    drafter = Drafter.for_target(target, target_layers=LAYERS, block_size=5, n_layers=2)
    with torch.no_grad():
        for module in drafter.modules():  # sharp weights: every input and position matters
            if isinstance(module, torch.nn.Linear):
                torch.nn.init.normal_(module.weight, std=0.5)
        torch.nn.init.normal_(drafter.mask_embedding, std=1.0)
        for parameter in drafter.parameters():  # the graph stores float16
            parameter.copy_(parameter.half().float())
    drafter.eval()
    checkpoint = root / "run" / "last.pt"
    checkpoint.parent.mkdir()
    torch.save({"drafter": drafter.state_dict(), "config": drafter.cfg.to_dict(), "step": 7,
                "tokens_seen": 1234, "train_seconds": 90.0, "labels": "greedy"}, checkpoint)
    (checkpoint.parent / "curve.jsonl").write_text(
        json.dumps({"step": 0, "tau_drafter": 1.0}) + "\n" +
        json.dumps({"step": 7, "tau_drafter": 1.5, "tau_lookup": 1.25, "time": "t"}) + "\n")
    weights = (directory / "weights.bin").read_bytes()
    # the head in float32 (the shipped one rounds its input to int8): the torch comparison
    # is then exact up to the weights file's float16 scales, and near-ties stay rare
    report = export_drafter(checkpoint, directory, head_accuracy_level=0)
    assert hashlib.sha256((directory / "weights.bin").read_bytes()).digest() == \
        hashlib.sha256(weights).digest()
    return directory, target, drafter, report


def _features(target, ids):
    x = torch.tensor([ids])
    real = torch.ones_like(x, dtype=torch.bool)
    with torch.no_grad():
        states = target.layer_states(x, torch.arange(len(ids))[None],
                                     block_mask(real, torch.zeros_like(real), causal=True),
                                     LAYERS)
    return torch.cat(states, -1)  # (1, S, K·d)


def _call(session, features, start, past_k, past_v, anchor, position):
    return session.run(None, {
        "features": features.numpy()[:, start:], "feature_position_ids":
            np.arange(start, features.shape[1])[None],
        "past_drafter_keys": past_k, "past_drafter_values": past_v,
        "anchor_ids": np.array([[anchor]]), "anchor_position_ids": np.array([[position]])})


def test_the_onnx_drafter_drafts_what_the_torch_drafter_drafts(exported):
    directory, target, drafter, report = exported
    card = load_card(directory)
    session = drafter_session(directory)
    rng = np.random.default_rng(0)
    S = 23
    ids = rng.integers(4, card.vocab_size, S).tolist()
    features = _features(target, ids)
    anchor = int(rng.integers(4, card.vocab_size))
    n, Hkv, D = drafter.cfg.n_layers, card.kv_heads, card.head_dim
    empty = np.zeros((n, 1, Hkv, 0, D), np.float32)
    draft_ids, draft_prob, keys, values = _call(session, features, 0, empty, empty, anchor, S)
    with torch.no_grad():
        fused = drafter.fuse([features])
        logits = drafter(target, torch.tensor([[anchor]]), torch.tensor([[S]]), fused,
                         torch.arange(S)[None])[0, 0]  # (B-1, V)
        logits[:, list(card.special_tokens.never_predicted)] = float("-inf")
        probs, want = logits.softmax(-1).max(-1)
        cos, sin = drafter.rotary(torch.arange(S)[None], torch.float32)
        _, k0, v0 = drafter.layers[0].attn.project(fused, cos, sin)
    assert draft_ids.shape == (1, drafter.cfg.block_size - 1)
    assert (draft_ids[0] == want.numpy()).all()
    assert np.abs(draft_prob[0] - probs.numpy()).max() < 1e-2  # the 8-bit head rounds (int8)
    assert keys.shape == (n, 1, Hkv, S, D)
    assert np.abs(keys[0] - k0.numpy()).max() < 1e-3  # the cache holds torch's keys
    assert np.abs(values[0] - v0.numpy()).max() < 1e-3
    # the cache extended in two calls (and a call with nothing new) drafts the same block
    _, _, k1, v1 = _call(session, features[:, :15], 0, empty, empty, anchor, 15)
    again = _call(session, features, 15, k1, v1, anchor, S)
    assert (again[0] == draft_ids).all() and np.abs(again[1] - draft_prob).max() < 1e-5
    assert np.abs(np.concatenate([k1, again[2]], axis=3) - keys).max() < 1e-5
    assert np.abs(np.concatenate([v1, again[3]], axis=3) - values).max() < 1e-5
    nothing_new = _call(session, features[:, :0], 0, keys, values, anchor, S)
    assert (nothing_new[0] == draft_ids).all() and nothing_new[2].shape[3] == 0
    other = _call(session, features, 0, empty, empty, (anchor + 1) % card.vocab_size, S)
    assert not np.allclose(other[1], draft_prob)  # the anchor matters
    assert time_one_call(session, 3, 40, repeats=2)["ms_median"] > 0


def test_the_drafter_shares_the_targets_tensors_and_the_card_says_what_it_is(exported):
    directory, target, drafter, report = exported
    model = onnx.load(str(directory / DRAFTER_GRAPH), load_external_data=False)
    external = {init.name for init in model.graph.initializer if init.data_location == 1}
    decoder = onnx.load(str(directory / "decoder.fused.onnx"), load_external_data=False)
    shared = {init.name: list(init.external_data) for init in decoder.graph.initializer
              if init.data_location == 1}
    assert external and external <= set(shared)  # the embedding, head, bias: the target's
    assert all(list(init.external_data) == shared[init.name]
               for init in model.graph.initializer if init.data_location == 1)
    own = [init for init in model.graph.initializer if init.name.startswith("drafter.")]
    assert sum(int(np.prod(init.dims)) for init in own) == drafter.num_params()
    assert all(init.data_type == onnx.TensorProto.FLOAT16 for init in own)
    card = load_card(directory)
    assert card.drafter.graph == DRAFTER_GRAPH and card.drafter.trained
    assert card.drafter.target_layers == tuple(LAYERS) and card.drafter.block_size == 5
    assert card.drafter.n_layers == 2 and card.drafter.params == drafter.num_params()
    assert card.drafter.training_tokens == 1234 and card.drafter.training_minutes == 1.5
    assert card.drafter.tau["tau_drafter"] == 1.5  # the checkpoint's own curve point
    assert report["tau_recorded"] and report["params"] == drafter.num_params()


def test_the_feature_drafter_keeps_its_cache_with_the_text(exported):
    """`dlm_lsp.draft.FeatureDrafter`: features handed over in pieces as the text grows, a
    truncated tail handed over again, draft what one call over the whole context drafts; the
    confidence floor cuts the draft before its first unsure guess; in the speculative loop's
    replay it counts what the torch drafter counts."""
    from dlm_lsp.draft import FeatureDrafter
    from model_export.drafter_export import feature_drafter, onnx_drafter_proposer
    from model_export.speculative import drafter_proposer, greedy_reference, replay

    directory, target, drafter, _ = exported
    card = load_card(directory)
    rng = np.random.default_rng(4)
    ids = rng.integers(4, card.vocab_size, 30).tolist()
    features = _features(target, ids)[0].numpy()  # (30, K·d)
    whole = feature_drafter(directory)
    want = whole.draft(features[:26], ids[26], 4)
    assert whole.length == 26 and len(want) == 4 and len(whole.last_prob) == 4
    pieces = FeatureDrafter(drafter_session(directory), 2, card.kv_heads, card.head_dim)
    pieces.draft(features[:9], ids[9], 4)
    pieces.draft(features[9:20], ids[20], 4)
    pieces.truncate(14)  # positions 14.. rejected: handed over again
    assert pieces.length == 14
    assert pieces.draft(features[14:26], ids[26], 4) == want
    assert np.allclose(pieces.keys, whole.keys, atol=1e-5)
    assert pieces.draft(features[26:26], ids[26], 2) == want[:2]  # nothing new: the same block
    floor = sorted(whole.last_prob)[1] + 1e-6  # above the two least probable guesses
    unsure = FeatureDrafter(drafter_session(directory), 2, card.kv_heads, card.head_dim,
                            min_confidence=floor)
    first_low = min(i for i, p in enumerate(whole.last_prob) if p < floor)
    assert unsure.draft(features[:26], ids[26], 4) == want[:first_low]
    def logged(propose, log):
        def wrapped(session, history, length):
            log.append(propose(session, history, length))
            return log[-1]
        return wrapped

    onnx_propose = onnx_drafter_proposer(whole)
    for seed in (1, 2):
        prompt = rng.integers(4, card.vocab_size, 20).tolist()
        reference = greedy_reference(target, prompt, 12, LAYERS)
        torch_drafts, onnx_drafts = [], []
        torch_side = replay(reference, logged(drafter_proposer(drafter), torch_drafts), 4)
        onnx_side = replay(reference, logged(onnx_propose, onnx_drafts), 4)
        assert onnx_drafts == torch_drafts and len(onnx_drafts) > 1  # every call's draft
        assert (onnx_side.calls, onnx_side.accepted) == (torch_side.calls, torch_side.accepted)


def test_fuse_features_card_reads_the_drafters_layers(exported, tmp_path):
    """`python -m model_export fuse DIR --features card --ship`: the drafter block's layers,
    recorded in the card's fused note; the served target's own features (the fused q4
    encoder's) through the graph draft what the torch drafter drafts on torch's."""
    import argparse

    from model_export.fused import add_fuse_arguments, feature_layers, main_from_args

    directory = tmp_path / "model"
    shutil.copytree(exported[0], directory)
    assert feature_layers("card", directory) == LAYERS
    parser = argparse.ArgumentParser()
    add_fuse_arguments(parser)
    main_from_args(parser.parse_args([str(directory), "--encoder", "encoder.onnx", "--decoder",
                                      "decoder.onnx", "--features", "card", "--ship"]))
    card = load_card(directory)
    assert card.graphs["cpu"].one_graph  # the fused decoder encodes too
    outputs = onnx.load(str(directory / "decoder.fused.onnx"),
                        load_external_data=False).graph.output
    assert outputs[-1].name == "features"
    assert card.extra["export"]["fused"]["features"] == LAYERS
    assert feature_layers("", directory) == [] and feature_layers("2,1", directory) == [2, 1]
    from model_export.drafter_export import feature_drafter

    _, target, drafter, _ = exported
    encoder = encoder_session(directory, card.graphs["cpu"])
    rng = np.random.default_rng(9)
    S = 27
    ids = rng.integers(4, card.vocab_size, S)
    empty = np.zeros((card.n_layers, 1, card.kv_heads, 0, card.head_dim), np.float32)
    (served,) = encoder.run(["features"], {
        "input_ids": ids[None], "position_ids": np.arange(S)[None],
        "attention_mask": np.ones((1, S), np.int64), "past_keys": empty, "past_values": empty,
        "past_mask": np.zeros((1, 0), np.int64)})
    features = _features(target, ids.tolist())
    assert np.abs(served - features.numpy()).max() < 1e-3
    anchor = int(rng.integers(4, card.vocab_size))
    with torch.no_grad():
        logits = drafter(target, torch.tensor([[anchor]]), torch.tensor([[S]]),
                         drafter.fuse([features]), torch.arange(S)[None])[0, 0]
    logits[:, list(card.special_tokens.never_predicted)] = float("-inf")
    assert feature_drafter(directory).draft(served[0], anchor, 4) == \
        logits.argmax(-1).tolist()
