"""A tiny random-weight model directory exported by model_export (format 2 by default).

Random weights make a deterministic model: the same request always gets the same answer, so
tests can compare a cached and an uncached engine token for token. The graphs, the shared
weights file and the card come from the real export code (`export_graphs`, `share_weights`),
the tokenizer from the synthetic model (a byte-level BPE with the four special tokens).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

# what this process exported already: the build's arguments → its directory (an export costs
# ~15 s of torch.onnx; the same arguments always give the same files, so later calls copy them)
_BUILT: dict[tuple, Path] = {}
# the torch model behind each directory written in this process (`torch_model`)
_MODELS: dict[Path, object] = {}


def torch_model(directory: str | Path):
    """The `Denoiser` (float32, on the grids the graphs were quantized from) that
    `build_exported_model` exported into `directory` in this process."""
    return _MODELS[Path(directory).resolve()]


def build_exported_model(directory: str | Path, *, context_attention: str = "causal",
                         seed: int = 0, max_context: int = 512, sharpness: float = 1.0,
                         shift: bool = False, canvas_attention: str = "bidirectional",
                         n_kv_heads: int = 0, reads_suffix: bool = True,
                         quantized: bool = False, fused: bool = False) -> Path:
    """Write the model directory (replacing `directory`) and return its path.

    `shift`, `canvas_attention`, `n_kv_heads` and `reads_suffix` make it shaped like an
    imported autoregressive model (shifted predictions, a causal canvas, grouped-query
    attention, no suffix), as `model_export gguf` writes.

    `sharpness` scales every weight: at 1 (an untrained model's initialisation) predictions are
    nearly uniform and hardly depend on the context; larger, attention and predictions turn
    peaked, so what the model writes follows the context's tokens (what a differential test
    of the context cache needs).

    `quantized`: the graphs block-quantized as the shipped model's are (`quantize_graph`,
    the weights first rounded onto ggml's grids, so the 4-bit graphs compute the model's own
    numbers); `fused` (causal context only): then rebuilt in the fused shape
    (`model_export.fused`), which the card names as its CPU graphs, the q4 pair kept
    beside them."""
    directory = Path(directory)
    key = (context_attention, seed, max_context, sharpness, shift, canvas_attention, n_kv_heads,
           reads_suffix, quantized, fused)
    built = _BUILT.get(key)
    if built is not None and built != directory and (built / "model.json").is_file():
        if directory.exists():
            shutil.rmtree(directory)
        shutil.copytree(built, directory)
        _MODELS[directory.resolve()] = _MODELS[built.resolve()]
        return directory
    import torch

    from dlm_lsp.modelcard import GraphFiles, ModelCard, SamplerDefaults, SpecialTokens
    from model_export.export import BUCKETS, WEIGHTS_FILE, export_graphs, share_weights
    from model_export.model import Denoiser, DenoiserConfig
    from tests.reliability.synthetic_model import SPECIAL_TOKENS, _tokenizer

    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    tokenizer = _tokenizer(directory)
    specials = SpecialTokens(**{name: tokenizer.token_to_id(token) for name, token in
                                zip(("pad", "mask", "end_of_span", "file"), SPECIAL_TOKENS)})
    torch.manual_seed(seed)
    cfg = DenoiserConfig(vocab_size=tokenizer.get_vocab_size(), n_layers=2, n_heads=2,
                         head_dim=16, mlp_hidden=64, max_position=1024,
                         context_attention=context_attention, shift=shift,
                         canvas_attention=canvas_attention, n_kv_heads=n_kv_heads)
    model = Denoiser(cfg).eval()
    if sharpness != 1.0:
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.mul_(sharpness)
    if quantized or fused:
        from tests.model_export.test_quantize import on_ggml_grids

        on_ggml_grids(model)
    encoder, decoder = export_graphs(model, specials, directory)
    if quantized or fused:
        import onnx

        from model_export.quantize import quantize_graph

        for path in (encoder, decoder):
            graph = onnx.load(str(path))
            quantize_graph(graph, cfg.d_model, cfg.vocab_size)
            onnx.save(graph, str(path))
    share_weights([encoder, decoder], directory / WEIGHTS_FILE, np.float16)
    card = ModelCard(
        name=f"tiny-{context_attention}", version="0", vocab_size=cfg.vocab_size,
        n_layers=cfg.n_layers, n_heads=cfg.n_heads, head_dim=cfg.head_dim,
        special_tokens=specials, canvas_buckets=BUCKETS, max_context=max_context,
        max_position=cfg.max_position, sampler=SamplerDefaults(threshold=0.9, max_steps=4),
        graphs={"cpu": GraphFiles(encoder=encoder.name, decoder=decoder.name)},
        context_attention=context_attention, weights=WEIGHTS_FILE,
        canvas_attention=canvas_attention, shift=shift, reads_suffix=reads_suffix,
        n_kv_heads=n_kv_heads,
    )
    import json

    (directory / "model.json").write_text(json.dumps(card.to_json(), indent=2) + "\n")
    if fused:
        from model_export.fused import fuse_graphs, ship

        from model_export.fused import one_graph_encoder

        # as shipped: one graph, the buffered decoder, encodes and decodes (a causal canvas)
        fused_encoder = one_graph_encoder(directory, "decoder.fused.onnx")
        fuse_graphs(directory, encoder.name, decoder.name, fused_encoder,
                    "decoder.fused.onnx", log=lambda _: None)
        ship(directory, fused_encoder, "decoder.fused.onnx")
    _BUILT[key] = directory
    _MODELS[directory.resolve()] = model
    return directory


def run_decoder(sess, names, feeds):
    """`sess.run(names, feeds)` for a decoder of either kind: one taking the stacked `keys`/
    `values`, or a buffered one (per-layer buffers bound as past and present), given the
    same feeds."""
    import onnxruntime as ort

    if "past_key_0" not in {i.name for i in sess.get_inputs()}:
        return sess.run(names, feeds)
    keys, values = feeds["keys"], feeds["values"]
    L, B, H, S, D = keys.shape
    C = feeds["canvas_ids"].shape[1]
    binding = sess.io_binding()
    for name, value in feeds.items():
        if name not in ("keys", "values"):
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
    if "predict_rows" in {i.name for i in sess.get_inputs()} and "predict_rows" not in feeds:
        binding.bind_cpu_input("predict_rows", np.arange(C, dtype=np.int64))  # every position
    for name in names:
        binding.bind_output(name, "cpu")
    for kind, stacked in (("key", keys), ("value", values)):
        buffer = np.zeros((L, B, H, S + C + 3, D), np.float32)  # room to spare, as a store
        buffer[:, :, :, :S] = stacked
        for layer in range(L):
            value = ort.OrtValue.ortvalue_from_numpy(buffer[layer])
            binding.bind_ortvalue_input(f"past_{kind}_{layer}", value)
            binding.bind_ortvalue_output(f"present_{kind}_{layer}", value)
    sess.run_with_iobinding(binding)
    return [value.numpy() for value in binding.get_outputs()[: len(names)]]

