"""ONNX export: graph IO contract and parity with PyTorch (torch-vs-ONNX equivalence)."""

import argparse

import numpy as np
import pytest
import torch

from dlm_lsp.modelcard import SpecialTokens, load_card
from model_export.export import (DECODER_INPUTS, DECODER_OUTPUTS, ENCODER_INPUTS,
                                 ENCODER_OUTPUTS, export_graphs, parity, session)
from model_export.model import Denoiser, DenoiserConfig

SPECIALS = SpecialTokens(pad=0, mask=1, end_of_span=2, file=3)


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    cfg = DenoiserConfig(vocab_size=300, n_layers=2, n_heads=2, head_dim=16, mlp_hidden=48)
    model = Denoiser(cfg).eval()
    with torch.no_grad():  # make the banned tokens the most likely, to prove they are banned
        model.embed.weight[[0, 1, 3]] *= 30
    return model


@pytest.fixture(scope="module")
def fp32_graphs(tiny_model, tmp_path_factory):
    return export_graphs(tiny_model, SPECIALS, tmp_path_factory.mktemp("onnx"))


def test_fp32_parity_on_random_shapes(tiny_model, fp32_graphs):
    report = parity(tiny_model, SPECIALS, *fp32_graphs,
                    shapes=((1, 1, 16), (1, 5, 16), (2, 37, 32), (3, 130, 64), (1, 512, 128)))
    print("fp32 parity", report)
    for name in ("keys", "values", "logits", "pred_prob", "canvas_prob"):
        assert report[name] < 1e-4, report
    assert report["pred_ids_agree"] == 1.0


def test_graph_io_contract(tiny_model, fp32_graphs):
    encoder, decoder = (session(p) for p in fp32_graphs)
    assert [i.name for i in encoder.get_inputs()] == ENCODER_INPUTS
    assert [o.name for o in encoder.get_outputs()] == ENCODER_OUTPUTS
    assert [i.name for i in decoder.get_inputs()] == DECODER_INPUTS
    assert [o.name for o in decoder.get_outputs()] == DECODER_OUTPUTS
    B, S, C = 2, 9, 16
    keys, values = encoder.run(None, {
        "input_ids": np.full((B, S), 7, np.int64),
        "position_ids": np.tile(np.arange(S), (B, 1)),
        "attention_mask": np.ones((B, S), np.int64)})
    assert keys.shape == (2, B, 2, S, 16) and keys.dtype == np.float32
    canvas = np.full((B, C), SPECIALS.mask, np.int64)
    pred_ids, pred_prob, canvas_prob, logits = decoder.run(None, {
        "canvas_ids": canvas, "canvas_position_ids": np.tile(np.arange(S, S + C), (B, 1)),
        "keys": keys, "values": values, "context_mask": np.ones((B, S), np.int64)})
    assert pred_ids.dtype == np.int64 and pred_prob.dtype == np.float32
    assert canvas_prob.dtype == np.float32 and logits.shape == (B, C, 300)
    assert not np.isin(pred_ids, [SPECIALS.mask, SPECIALS.pad, SPECIALS.file]).any()
    assert (canvas_prob == 0).all()  # the mask token has probability 0
    assert np.allclose(pred_prob, np.take_along_axis(
        np.exp(logits - logits.max(-1, keepdims=True)) /
        np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True),
        pred_ids[..., None], -1)[..., 0], atol=1e-6)


def test_fp16_graphs_keep_float32_probabilities(tiny_model, tmp_path):
    encoder, decoder = export_graphs(tiny_model, SPECIALS, tmp_path, ".fp16", torch.float16)
    enc = session(encoder)
    assert enc.get_outputs()[0].type == "tensor(float16)"
    dec = session(decoder)
    types = {o.name: o.type for o in dec.get_outputs()}
    assert types["pred_prob"] == types["canvas_prob"] == "tensor(float)"
    report = parity(tiny_model, SPECIALS, encoder, decoder, dtype=torch.float16,
                    shapes=((1, 5, 16), (2, 37, 32)))
    print("fp16 parity", report)
    assert report["pred_prob"] < 1e-2 and report["keys"] < 1e-2


def test_torch_denoiser_matches_decoder_graph(tiny_model, fp32_graphs):
    from dlm_lsp.layout import build_layout
    from model_export.torch_denoiser import TorchDenoiser

    layout = build_layout([[5, 6, 7, 8], [9, 10]], [16], SPECIALS.file)
    reference = TorchDenoiser(tiny_model, SPECIALS)
    state = reference.encode(layout)
    canvas = np.full((1, 16), SPECIALS.mask, np.int64)
    canvas[0, :3] = [11, 12, 2]
    positions = np.array(layout.canvas_positions, np.int64)
    want = reference.denoise_step(state, canvas, positions)
    encoder, decoder = (session(p) for p in fp32_graphs)
    ctx = np.array([layout.context_ids], np.int64)
    keys, values = encoder.run(None, {"input_ids": ctx,
                                      "position_ids": np.array([layout.context_positions]),
                                      "attention_mask": np.ones_like(ctx)})
    got = decoder.run(["pred_ids", "pred_prob", "canvas_prob"], {
        "canvas_ids": canvas, "canvas_position_ids": positions, "keys": keys, "values": values,
        "context_mask": np.ones_like(ctx)})
    assert (got[0] == want[0]).all()
    assert np.abs(got[1] - want[1]).max() < 1e-5 and np.abs(got[2] - want[2]).max() < 1e-5


@pytest.mark.slow
def test_export_model_dir_loads_with_the_runtime_card(tiny_checkpoint, tiny_corpus,
                                                      tiny_tokenizer, tmp_path):
    from model_export.export import add_export_arguments, export_model_dir

    parser = argparse.ArgumentParser()
    add_export_arguments(parser)
    out = tmp_path / "model"
    args = parser.parse_args(["--checkpoint", str(tiny_checkpoint), "--tokenizer",
                              str(tiny_tokenizer), "--corpus", str(tiny_corpus), "--out", str(out),
                              "--em-examples", "8", "--max-context", "96", "--threads", "1"])
    report = export_model_dir(args)
    card = load_card(out)
    assert card.graphs["cpu"].dtype == "float32" and card.graphs["cuda"].dtype == "float16"
    assert card.special_tokens == SPECIALS and card.canvas_buckets == (16, 32, 64, 128)
    assert card.extra["training"]["steps"] == 30
    assert report["parity_fp32"]["logits"] < 1e-4
    assert set(report["cpu_timings_ms"]) == {"fp32", "int8"}
