"""Validation exact-match through the server's own sampler (`dlm_lsp.sampler.denoise_batch`).

Training runs it over the PyTorch model (`torch_denoiser.TorchDenoiser`), the export over the
ONNX graphs (`dlm_lsp.runtime.OnnxDenoiser`): either way the rate is what the server would get
on the same holes, with the same commit rule, span closing and step cap. Each example becomes
the `Layout` the server would build for it, and the examples of one call run in lockstep.
"""

from __future__ import annotations

from pathlib import Path

from dlm_lsp.layout import Layout
from dlm_lsp.modelcard import (DECODER_INPUTS, DEFAULT_CANVAS_BUCKETS, ENCODER_OUTPUTS, LOGITS,
                               PAST_INPUTS, GraphFiles, ModelCard, SamplerDefaults,
                               SpecialTokens)
from dlm_lsp.sampler import SamplerSettings, denoise_batch


def example_layout(example) -> Layout:
    """The layout of a `data.Example`: its context, and one canvas per hole."""
    return Layout(list(example.context_ids), list(example.context_positions),
                  [list(example.canvas_positions[start: start + length])
                   for start, length in example.holes])


def until_end(ids: list[int], end_of_span: int) -> list[int]:
    """A canvas as text tokens: everything before the first end-of-span."""
    return ids[: ids.index(end_of_span)] if end_of_span in ids else ids


def exact_match(denoiser, examples, specials: SpecialTokens, threshold: float = 0.9,
                max_steps: int = 16, chunk: int = 16) -> tuple[float, float]:
    """(exact-match rate over holes, mean denoiser steps per example) of the server's sampler
    on `examples`, `chunk` of them per lockstep batch."""
    settings = SamplerSettings(threshold=threshold, max_steps=max_steps)
    hits = total = steps = 0
    for i in range(0, len(examples), chunk):
        group = examples[i: i + chunk]
        results = denoise_batch(denoiser, [example_layout(e) for e in group], specials, settings)
        for example, result in zip(group, results):
            steps += result.steps
            for (start, length), got in zip(example.holes, result.canvases):
                want = until_end(example.canvas_ids[start: start + length], specials.end_of_span)
                hits += got == want
                total += 1
    return hits / max(total, 1), steps / max(len(examples), 1)


def graphs_card(encoder_path: Path, decoder_path: Path, specials: SpecialTokens) -> ModelCard:
    """An in-memory card for a pair of exported graphs (before model.json is written), read
    from their signatures, so that `OnnxDenoiser` can run them as the server would."""
    import onnxruntime as ort

    if encoder_path.parent != decoder_path.parent:
        raise ValueError("the encoder and the decoder must sit in one directory")
    encoder = ort.InferenceSession(str(encoder_path), providers=["CPUExecutionProvider"])
    decoder = ort.InferenceSession(str(decoder_path), providers=["CPUExecutionProvider"])
    keys = {o.name: o for o in encoder.get_outputs()}[ENCODER_OUTPUTS[0]]
    n_layers, _, n_heads, _, head_dim = keys.shape  # (L, B, H, S, D)
    if not all(isinstance(n, int) for n in (n_layers, n_heads, head_dim)):
        raise ValueError(f"{encoder_path}: keys of shape {keys.shape}, expected static L, H, D")
    outputs = {o.name: o for o in decoder.get_outputs()}
    inputs = {i.name for i in decoder.get_inputs()}
    if LOGITS not in outputs or not set(DECODER_INPUTS) <= inputs:
        raise ValueError(f"{decoder_path}: not a decoder with logits")
    causal = set(PAST_INPUTS) <= {i.name for i in encoder.get_inputs()}
    return ModelCard(
        name=encoder_path.stem, version="0", vocab_size=int(outputs[LOGITS].shape[-1]),
        n_layers=int(n_layers), n_heads=int(n_heads), head_dim=int(head_dim),
        special_tokens=specials, canvas_buckets=DEFAULT_CANVAS_BUCKETS, max_context=1 << 30,
        max_position=1 << 30, sampler=SamplerDefaults(),
        graphs={"cpu": GraphFiles(encoder=encoder_path.name, decoder=decoder_path.name)},
        context_attention="causal" if causal else "bidirectional",
        directory=encoder_path.parent,
    )
