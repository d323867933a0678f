"""An imported-AR-shaped model (grouped-query attention, causal canvas, shifted predictions)
exports with parity, and ggml-block quantization finds a block-quantized model's grid again."""

import numpy as np
import onnx
import pytest
import torch

from dlm_lsp.modelcard import SpecialTokens
from model_export.export import export_graphs, parity, share_weights
from model_export.model import Denoiser, DenoiserConfig
from model_export.quantize import q4_1, q8_0, quantize_graph

SPECIALS = SpecialTokens(pad=0, mask=1, end_of_span=2, file=3)


def on_ggml_grids(model: Denoiser) -> Denoiser:
    """Round every block matrix through Q4_1 and the embedding through Q8_0 (as a GGUF
    file's weights are)."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            w = param.numpy()
            if name == "embed.weight":
                q, d = q8_0(w)
                param.copy_(torch.from_numpy((q * d[..., None]).reshape(w.shape)))
            elif w.ndim == 2:
                q, d, m = q4_1(w)
                param.copy_(torch.from_numpy((q * d[..., None] + m[..., None]).reshape(w.shape)))
    return model


@pytest.fixture(scope="module")
def ar_model():
    torch.manual_seed(0)
    cfg = DenoiserConfig(vocab_size=320, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16,
                         mlp_hidden=96, canvas_attention="causal", shift=True)
    return on_ggml_grids(Denoiser(cfg).eval())


@pytest.fixture(scope="module")
def graphs(ar_model, tmp_path_factory):
    return export_graphs(ar_model, SPECIALS, tmp_path_factory.mktemp("ar"))


def test_grouped_query_causal_canvas_graphs_equal_torch(ar_model, graphs):
    report = parity(ar_model, SPECIALS, *graphs, shapes=((1, 5, 16), (2, 37, 32), (3, 20, 8)))
    assert report["pred_ids_agree"] == 1.0
    assert max(report["keys"], report["values"], report["logits"]) < 1e-4


def test_a_causal_canvas_position_ignores_the_canvas_after_it(ar_model):
    S, C = 6, 5
    ids = torch.randint(4, 320, (1, S))
    keys, values = ar_model.encode(ids, torch.arange(S)[None], torch.ones(1, S, dtype=torch.long))
    canvas = torch.randint(4, 320, (1, C))
    other = canvas.clone()
    other[0, 3:] = 1
    positions = torch.arange(S, S + C)[None]
    mask = torch.ones(1, S, dtype=torch.long)
    with torch.no_grad():
        a = ar_model.denoise(canvas, positions, keys, values, mask)
        b = ar_model.denoise(other, positions, keys, values, mask)
    assert torch.allclose(a[0, :3], b[0, :3], atol=1e-5)
    assert not torch.allclose(a[0, 3:], b[0, 3:], atol=1e-3)


def test_ggml_blocks_find_the_grid_again():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 64)).astype(np.float32)
    q, d, m = q4_1(w)
    back = (q * d[..., None] + m[..., None]).reshape(w.shape)
    q2, d2, m2 = q4_1(back)
    assert (q2 == q).all() and np.allclose(d2, d) and np.allclose(m2, m)
    assert q.max() == 15 and q.min() == 0
    t, s = q8_0(w)
    assert np.abs(t).max() == 127 and np.allclose((t * s[..., None]).reshape(w.shape), w,
                                                  atol=float(s.max()))


@pytest.mark.parametrize("accuracy_level, tolerance", [(0, 1e-3), (4, None)])
def test_block_quantized_graphs_keep_the_models_numbers(ar_model, graphs, tmp_path,
                                                         accuracy_level, tolerance):
    cfg = ar_model.cfg
    paths = []
    for src in graphs:
        model = onnx.load(str(src))
        report = quantize_graph(model, cfg.d_model, cfg.vocab_size, accuracy_level,
                                accuracy_level)
        assert report["q4_1_error"] < 1e-6 and report["q8_0_error"] < 1e-6
        assert report["embedding"] == 1 and report["q4_1"] >= 2 * cfg.n_layers
        dst = tmp_path / f"{src.stem}.q4.onnx"
        onnx.save(model, str(dst))
        paths.append(dst)
    assert quantize_graph(onnx.load(str(graphs[1])), cfg.d_model, cfg.vocab_size)["head"] == 1
    stored = share_weights(paths, tmp_path / "weights.bin", np.float16)
    report = parity(ar_model, SPECIALS, *paths, shapes=((1, 5, 16), (2, 37, 32)))
    if tolerance is not None:  # float32 arithmetic: the graphs compute the model itself
        assert report["logits"] < tolerance and report["pred_ids_agree"] == 1.0
    else:  # int8 activations (as llama.cpp's dot products): close, not equal
        assert report["pred_ids_agree"] >= 0.9
    # the 8-bit table is stored once for the lookup and the head
    assert stored["weights_bytes"] < 4 * sum(p.numel() for p in ar_model.parameters()) / 3
