"""ONNX export: graph IO contract and parity with PyTorch (torch-vs-ONNX equivalence)."""

import argparse

import numpy as np
import pytest
import torch

from dlm_lsp.modelcard import SpecialTokens, load_card
from model_export.export import (DECODER_INPUTS, DECODER_OUTPUTS, ENCODER_INPUTS,
                                 ENCODER_OUTPUTS, PAST_INPUTS, empty_past, export_graphs,
                                 parity, session, share_weights, weights_storage,
                                 _diff)
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
    assert [i.name for i in encoder.get_inputs()] == ENCODER_INPUTS + PAST_INPUTS
    assert [o.name for o in encoder.get_outputs()] == ENCODER_OUTPUTS
    assert [i.name for i in decoder.get_inputs()] == DECODER_INPUTS
    assert [o.name for o in decoder.get_outputs()] == DECODER_OUTPUTS
    B, S, C = 2, 9, 16
    keys, values = encoder.run(None, {
        "input_ids": np.full((B, S), 7, np.int64),
        "position_ids": np.tile(np.arange(S), (B, 1)),
        "attention_mask": np.ones((B, S), np.int64), **empty_past(encoder, B)})
    assert keys.shape == (2, B, 2, S, 16) and keys.dtype == np.float32
    canvas = np.full((B, C), SPECIALS.mask, np.int64)
    pred_ids, pred_prob, canvas_prob, logits = decoder.run(None, {
        "canvas_ids": canvas, "canvas_position_ids": np.tile(np.arange(S, S + C), (B, 1)),
        "keys": keys, "values": values, "context_mask": np.ones((B, S), np.int64),
        "canvas_mask": np.ones((B, C), bool)})
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
                                      "attention_mask": np.ones_like(ctx),
                                      **empty_past(encoder, 1)})
    got = decoder.run(["pred_ids", "pred_prob", "canvas_prob"], {
        "canvas_ids": canvas, "canvas_position_ids": positions, "keys": keys, "values": values,
        "context_mask": np.ones_like(ctx), "canvas_mask": np.ones(canvas.shape, bool)})
    assert (got[0] == want[0]).all()
    assert np.abs(got[1] - want[1]).max() < 1e-5 and np.abs(got[2] - want[2]).max() < 1e-5


def test_exact_match_runs_the_servers_sampler_through_either_runtime(tiny_model, fp32_graphs):
    """Training (PyTorch) and export (ONNX Runtime) measure exact-match with the server's own
    sampler, in lockstep batches: both runtimes fill the same canvases in the same steps."""
    from dlm_lsp.runtime import OnnxDenoiser
    from dlm_lsp.sampler import SamplerSettings, denoise_batch
    from model_export.data import Example
    from model_export.sampling import example_layout, exact_match, graphs_card
    from model_export.torch_denoiser import TorchDenoiser

    rng = np.random.default_rng(0)
    examples = []
    for S, C in ((7, 16), (40, 32), (3, 16)):
        context = [SPECIALS.file] + rng.integers(4, 300, S - 1).tolist()
        examples.append(Example(context, list(range(S)), [SPECIALS.end_of_span] * C,
                                list(range(S, S + C)), [(0, C)], [0]))
    torch_runtime = TorchDenoiser(tiny_model, SPECIALS)
    onnx_runtime = OnnxDenoiser(graphs_card(*fp32_graphs, SPECIALS), "cpu", 1)
    settings = SamplerSettings(threshold=0.5, max_steps=8)
    layouts = [example_layout(e) for e in examples]
    want = denoise_batch(torch_runtime, layouts, SPECIALS, settings)
    got = denoise_batch(onnx_runtime, layouts, SPECIALS, settings)
    assert [r.canvases for r in got] == [r.canvases for r in want]
    assert [r.steps for r in got] == [r.steps for r in want]
    filled = want[0].canvases[0]
    examples[0].canvas_ids = filled + [SPECIALS.end_of_span] * (16 - len(filled))
    rate, steps = exact_match(torch_runtime, examples, SPECIALS, 0.5, 8, chunk=2)
    assert (rate, steps) == exact_match(onnx_runtime, examples, SPECIALS, 0.5, 8)
    assert rate >= 1 / 3 and steps == sum(r.steps for r in want) / 3


def test_onnx_encoder_in_pieces_equals_torch_at_once(tiny_model, fp32_graphs):
    """A causal context encoded through the graph in several calls at random split points,
    each extending the last through past keys/values, equals PyTorch's single call."""
    encoder, decoder = (session(p) for p in fp32_graphs)
    rng = np.random.default_rng(7)
    for trial in range(4):
        S, C = int(rng.integers(8, 200)), 16
        ids = torch.from_numpy(rng.integers(4, 300, (1, S)))
        positions = torch.arange(S)[None]
        with torch.no_grad():
            want_k, want_v = tiny_model.encode(ids, positions, torch.ones_like(ids))
        cuts = sorted({0, S, *rng.integers(1, S, 3).tolist()})
        past = empty_past(encoder, 1)
        for lo, hi in zip(cuts, cuts[1:]):
            keys, values = encoder.run(None, {
                "input_ids": ids[:, lo:hi].numpy(), "position_ids": positions[:, lo:hi].numpy(),
                "attention_mask": np.ones((1, hi - lo), np.int64), **past})
            past = {"past_keys": np.concatenate([past["past_keys"], keys], 3),
                    "past_values": np.concatenate([past["past_values"], values], 3),
                    "past_mask": np.ones((1, hi), np.int64)}
        assert np.abs(past["past_keys"] - want_k.numpy()).max() < 1e-5, cuts
        assert np.abs(past["past_values"] - want_v.numpy()).max() < 1e-5, cuts
        feeds = {"canvas_ids": np.full((1, C), SPECIALS.mask, np.int64),
                 "canvas_position_ids": np.arange(S, S + C)[None], "context_mask":
                 np.ones((1, S), np.int64), "canvas_mask": np.ones((1, C), bool)}
        pieces = decoder.run(None, {**feeds, "keys": past["past_keys"],
                                    "values": past["past_values"]})
        whole = decoder.run(None, {**feeds, "keys": want_k.numpy(), "values": want_v.numpy()})
        assert (pieces[0] == whole[0]).all() and _diff(pieces[3], whole[3]) < 1e-4


def test_padded_canvases_answer_as_each_request_alone(tiny_model, fp32_graphs):
    """A batch of two requests, the second's canvas padded: its real positions get what the
    request gets on its own (issue 15's batched sampler relies on it)."""
    encoder, decoder = (session(p) for p in fp32_graphs)
    rng = np.random.default_rng(3)
    ctx = [rng.integers(4, 300, n) for n in (30, 12)]
    canvas = [np.full(16, SPECIALS.mask), np.array([SPECIALS.mask, 9, 10, SPECIALS.mask])]
    alone = []
    for c, x in zip(canvas, ctx):
        feeds = {"input_ids": x[None], "position_ids": np.arange(len(x))[None],
                 "attention_mask": np.ones((1, len(x)), np.int64), **empty_past(encoder, 1)}
        keys, values = encoder.run(None, feeds)
        alone.append(decoder.run(None, {
            "canvas_ids": c[None], "canvas_position_ids": np.arange(len(x), len(x) + len(c))[None],
            "keys": keys, "values": values, "context_mask": np.ones((1, len(x)), np.int64),
            "canvas_mask": np.ones((1, len(c)), bool)}))
    ids = np.zeros((2, 30), np.int64)
    mask = np.zeros((2, 30), np.int64)
    positions = np.zeros((2, 30), np.int64)
    canvas_ids = np.full((2, 16), SPECIALS.pad, np.int64)
    canvas_positions = np.zeros((2, 16), np.int64)
    for row, (c, x) in enumerate(zip(canvas, ctx)):
        ids[row, :len(x)], mask[row, :len(x)], positions[row, :len(x)] = x, 1, np.arange(len(x))
        canvas_ids[row, :len(c)] = c
        canvas_positions[row, :len(c)] = np.arange(len(x), len(x) + len(c))
    keys, values = encoder.run(None, {"input_ids": ids, "position_ids": positions,
                                      "attention_mask": mask, **empty_past(encoder, 2)})
    batch = decoder.run(None, {"canvas_ids": canvas_ids, "canvas_position_ids": canvas_positions,
                               "keys": keys, "values": values, "context_mask": mask,
                               "canvas_mask": canvas_ids != SPECIALS.pad})
    for row, c in enumerate(canvas):
        n = len(c)
        assert (batch[0][row, :n] == alone[row][0][0]).all()
        assert _diff(batch[3][row, :n], alone[row][3][0]) < 1e-4


@pytest.fixture(scope="module")
def trained_like(tiny_model):
    """The tiny model with norm weights away from 1, as training leaves them (an exporter
    may fold a norm's weight into the next matrix: parity must hold all the same)."""
    model = Denoiser(tiny_model.cfg).eval()
    model.load_state_dict(tiny_model.state_dict())
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, tensor in model.named_parameters():
            if name.endswith("norm.weight"):
                tensor.copy_(1 + 0.5 * torch.randn(tensor.shape, generator=g))
    return model


@pytest.mark.parametrize("storage", [np.float32, np.float16])
def test_shared_weights_store_each_tensor_once_and_keep_parity(trained_like, tmp_path, storage):
    """Four graphs (fp32 and fp16, encoder and decoder) over one weights file: it holds each
    parameter once, the graphs hold no large tensor; float32 storage keeps the CPU graphs
    exact, float16 storage keeps their argmax."""
    model = trained_like
    fp32 = export_graphs(model, SPECIALS, tmp_path)
    fp16 = export_graphs(model, SPECIALS, tmp_path, ".fp16", torch.float16)
    report = share_weights([*fp32, *fp16], tmp_path / "weights.bin", storage)
    width = np.dtype(storage).itemsize
    params = sum(p.numel() for p in model.parameters() if p.numel() >= 1024)
    assert report["weights_bytes"] <= width * params + 64 * report["tensors"], report
    assert report["tensors"] == 1 + 5 * model.cfg.n_layers  # embedding once: tied head
    import onnx

    for path in [*fp32, *fp16]:
        inline = [i for i in onnx.load(str(path), load_external_data=False).graph.initializer
                  if i.data_location != onnx.TensorProto.EXTERNAL]
        assert all(np.prod(i.dims) < 1024 for i in inline), path
    cpu = parity(model, SPECIALS, *fp32)
    if storage == np.float32:
        assert cpu["logits"] < 1e-4 and cpu["keys"] < 1e-4 and cpu["pred_ids_agree"] == 1.0
    else:
        assert cpu["logits"] < 5e-2 and cpu["pred_ids_agree"] >= 0.99
    assert parity(model, SPECIALS, *fp16, dtype=torch.float16,
                  shapes=((1, 5, 16), (2, 37, 32)))["pred_prob"] < 1e-2


def test_weights_are_float32_while_they_fit_the_budget(tiny_model):
    assert weights_storage(tiny_model) == np.float32
    big = Denoiser(DenoiserConfig(vocab_size=8192, n_layers=8, n_heads=8, head_dim=64,
                                  mlp_hidden=1024))  # ~25 M parameters
    assert weights_storage(big) == np.float16 and 2 * big.num_params() <= 60 * 2**20
    assert weights_storage(big, "float32") == np.float32


def test_bidirectional_model_exports_without_a_past(tmp_path):
    torch.manual_seed(1)
    model = Denoiser(DenoiserConfig(vocab_size=300, n_layers=1, n_heads=2, head_dim=16,
                                    mlp_hidden=48, context_attention="bidirectional")).eval()
    encoder, decoder = export_graphs(model, SPECIALS, tmp_path)
    assert [i.name for i in session(encoder).get_inputs()] == ENCODER_INPUTS
    report = parity(model, SPECIALS, encoder, decoder, shapes=((1, 5, 16), (3, 40, 32)))
    assert report["logits"] < 1e-4 and report["pred_ids_agree"] == 1.0


@pytest.mark.slow
def test_export_model_dir_loads_with_the_runtime_card(tiny_checkpoint, tiny_corpus,
                                                      tiny_tokenizer, tmp_path):
    from model_export.export import add_export_arguments, export_model_dir

    parser = argparse.ArgumentParser()
    add_export_arguments(parser)
    out = tmp_path / "model"
    args = parser.parse_args(["--checkpoint", str(tiny_checkpoint), "--tokenizer",
                              str(tiny_tokenizer), "--corpus", str(tiny_corpus), "--out", str(out),
                              "--em-examples", "8", "--threads", "1"])
    report = export_model_dir(args)
    card = load_card(out)
    assert card.graphs["cpu"].dtype == "float32" and card.graphs["cuda"].dtype == "float16"
    # the card says what the checkpoint trained with, not the export's defaults
    assert card.special_tokens == SPECIALS and card.canvas_buckets == (16, 32)
    assert card.max_context == 96
    assert card.extra["training"]["steps"] == 30
    assert report["parity_fp32"]["logits"] < 1e-4
    assert set(report["cpu_timings_ms"]) == {"fp32", "int8"}


def test_card_settings_come_from_the_checkpoint():
    from model_export.export import trained_settings

    saved = {"example_settings": {"buckets": [16, 32], "max_context": 1024,
                                  "suffix_tokens": 128, "prefix_tokens": 895}}
    settings = trained_settings(saved)
    assert settings.buckets == (16, 32) and settings.max_context == 1024
    assert settings.prefix_tokens == 895 and settings.suffix_tokens == 128
    # older checkpoints: their training arguments; an explicit budget overrides
    old = {"args": {"buckets": "32,16,64", "max_context": 512, "suffix_tokens": 128}}
    assert trained_settings(old).buckets == (16, 32, 64)
    assert trained_settings(old, max_context=256).max_context == 256
    assert trained_settings({}).buckets == (16, 32, 64, 128)
