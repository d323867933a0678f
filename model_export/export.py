"""Write a model directory: model.json, tokenizer.json, encoder/decoder ONNX graphs, weights.

Graphs are exported with ``torch.onnx.export(..., dynamo=True)`` with dynamic batch and length
axes. The decoder computes, in-graph, the argmax (`pred_ids`), its probability (`pred_prob`)
and the probability of the token already at each canvas position (`canvas_prob`), all float32
even in the fp16 graph, with mask/pad/file banned (logit -inf); `logits` is an extra output for
evaluation. It takes a `canvas_mask`, so a batch may pad canvases of several requests. A causal
model's encoder also takes `past_keys`/`past_values`/`past_mask`: it extends a context encoded
before (model format 2). Each variant is checked against PyTorch on several random shapes,
incremental encoding and padded canvases included. Variants: fp32 (CPU), fp16 (CUDA) and int8
(onnxruntime dynamic quantization, CPU), kept for the CPU only when it is faster and loses no
validation exact-match.

Weights are stored once (`share_weights`): every kept graph reads its initializers from one
external-data file, each tensor stored once — in float32 while that fits the size budget,
else float16 (`weights_storage`), cast to the graph's own precision by a Cast node that ONNX
Runtime folds away when it loads the session — and a tensor that is another's transpose (the
tied output head) becomes a Transpose of it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from dlm_lsp import modelcard
from dlm_lsp.modelcard import GraphFiles, ModelCard, SamplerDefaults, SpecialTokens, load_card
from dlm_lsp.sampler import STRATEGIES

from .model import Denoiser

# The graphs as exported, in order: the card's contract, plus the decoder's canvas_mask and logits
ENCODER_INPUTS = list(modelcard.ENCODER_INPUTS)
PAST_INPUTS = list(modelcard.PAST_INPUTS)  # causal models only
ENCODER_OUTPUTS = list(modelcard.ENCODER_OUTPUTS)
DECODER_INPUTS = [*modelcard.DECODER_INPUTS, modelcard.CANVAS_MASK]
DECODER_OUTPUTS = [*modelcard.DECODER_OUTPUTS, modelcard.LOGITS]
BUCKETS = modelcard.DEFAULT_CANVAS_BUCKETS
WEIGHTS_FILE = "weights.bin"


def encoder_inputs(model: Denoiser) -> list[str]:
    """The encoder graph's input names: a causal model's also take the past."""
    return ENCODER_INPUTS + (PAST_INPUTS if model.cfg.causal else [])


class EncoderGraph(nn.Module):
    def __init__(self, model: Denoiser):
        super().__init__()
        self.model = model

    def forward(self, input_ids, position_ids, attention_mask, past_keys=None, past_values=None,
                past_mask=None):
        return self.model.encode(input_ids, position_ids, attention_mask, past_keys, past_values,
                                 past_mask)


class DecoderGraph(nn.Module):
    def __init__(self, model: Denoiser, banned: list[int]):
        super().__init__()
        self.model = model
        bias = torch.zeros(model.cfg.vocab_size)
        bias[banned] = float("-inf")
        self.register_buffer("banned_bias", bias)  # (V,) float32

    def forward(self, canvas_ids, canvas_position_ids, keys, values, context_mask, canvas_mask):
        logits = self.model.denoise(canvas_ids, canvas_position_ids, keys, values, context_mask,
                                    canvas_mask)
        logits = logits.float() + self.banned_bias  # (B, C, V) float32
        probs = torch.softmax(logits, dim=-1)
        pred_prob, pred_ids = probs.max(dim=-1)  # (B, C)
        canvas_prob = probs.gather(-1, canvas_ids.unsqueeze(-1)).squeeze(-1)  # (B, C)
        return pred_ids, pred_prob, canvas_prob, logits


def example_inputs(model: Denoiser, B: int, S: int, C: int, dtype=torch.float32, seed: int = 0,
                   past: int = 0):
    """Random encoder and decoder inputs; rows after the first have right padding (of the
    context and, from the third row on, of the canvas).

    The encoder's tuple holds `past` tokens of random past keys/values when the model is
    causal (its graph takes them; 0 is an empty past).
    """
    g = torch.Generator().manual_seed(seed)
    cfg = model.cfg
    ids = torch.randint(4, cfg.vocab_size, (B, S), generator=g)
    mask = torch.ones(B, S, dtype=torch.long)
    for row in range(1, B):
        mask[row, S - int(torch.randint(0, S, (1,), generator=g)):] = 0
    mask[:, 0] = 1
    positions = torch.arange(S).expand(B, S).clone() * mask
    canvas = torch.randint(0, cfg.vocab_size, (B, C), generator=g)
    canvas[:, ::2] = 1
    canvas_positions = torch.arange(S, S + C).expand(B, C).clone()
    canvas_mask = torch.ones(B, C, dtype=torch.bool)
    for row in range(2, B):
        canvas_mask[row, 1 + int(torch.randint(0, C, (1,), generator=g)):] = False
    L, H, D = cfg.n_layers, cfg.kv_heads, cfg.head_dim
    keys = torch.randn(L, B, H, S, D, generator=g).to(dtype)
    values = torch.randn(L, B, H, S, D, generator=g).to(dtype)
    encoder = (ids, positions + past, mask)
    if cfg.causal:
        encoder += (torch.randn(L, B, H, past, D, generator=g).to(dtype),
                    torch.randn(L, B, H, past, D, generator=g).to(dtype),
                    torch.ones(B, past, dtype=torch.long))
    return encoder, (canvas, canvas_positions, keys, values, mask, canvas_mask)


def export_graphs(model: Denoiser, specials: SpecialTokens, out_dir: Path, suffix: str = "",
                  dtype=torch.float32) -> tuple[Path, Path]:
    """Export encoder{suffix}.onnx and decoder{suffix}.onnx for `model` in `dtype`, each with
    its weights inside (`share_weights` moves them out)."""
    model = model.eval()
    if dtype != torch.float32:
        model = _copy(model).to(dtype)
    enc_args, dec_args = example_inputs(model, 2, 9, 5, dtype, past=3)
    batch, ctx, canvas, past = (torch.export.Dim.DYNAMIC,) * 4
    encoder_path = out_dir / f"encoder{suffix}.onnx"
    decoder_path = out_dir / f"decoder{suffix}.onnx"
    encoder_shapes = {"input_ids": {0: batch, 1: ctx}, "position_ids": {0: batch, 1: ctx},
                      "attention_mask": {0: batch, 1: ctx}}
    if model.cfg.causal:
        encoder_shapes.update({"past_keys": {1: batch, 3: past}, "past_values": {1: batch, 3: past},
                               "past_mask": {0: batch, 1: past}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            EncoderGraph(model), enc_args, str(encoder_path), dynamo=True,
            input_names=encoder_inputs(model), output_names=ENCODER_OUTPUTS,
            dynamic_shapes=encoder_shapes, external_data=False, optimize=True, verbose=False,
        )
        banned = list(specials.never_predicted)
        torch.onnx.export(
            DecoderGraph(model, banned), dec_args, str(decoder_path), dynamo=True,
            input_names=DECODER_INPUTS, output_names=DECODER_OUTPUTS,
            dynamic_shapes={"canvas_ids": {0: batch, 1: canvas},
                            "canvas_position_ids": {0: batch, 1: canvas},
                            "keys": {1: batch, 3: ctx}, "values": {1: batch, 3: ctx},
                            "context_mask": {0: batch, 1: ctx},
                            "canvas_mask": {0: batch, 1: canvas}},
            external_data=False, optimize=True, verbose=False,
        )
    return encoder_path, decoder_path


def share_weights(graphs: list[Path], weights: Path, storage=np.float16,
                  min_elements: int = 1024) -> dict:
    """Move the graphs' weights into one external-data file, each tensor stored once.

    Every float initializer of at least `min_elements` is stored in `storage` precision (int8
    ones as they are); a graph of another precision reads it through a Cast, and a tensor
    equal to a stored one's transpose through a Transpose (ONNX Runtime folds both when it
    loads the session). With float32 storage, a float16 graph's tensor that is a stored
    tensor rounded to float16 reads that one (list the float32 graphs first). Rewrites the
    graphs in place; returns byte counts before and after.
    """
    import hashlib

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    # digest → (name, shape, dtype, offset in the file) of a stored tensor, and by the digest
    # of its float16 rounding (how a float16 graph's copy of it looks)
    stored: dict[bytes, tuple] = {}
    rounded: dict[bytes, tuple] = {}
    count = 0
    blob = bytearray()
    before = sum(p.stat().st_size for p in graphs)

    def digest(array: np.ndarray) -> bytes:
        data = np.ascontiguousarray(array)
        return hashlib.blake2b(str((data.dtype, data.shape)).encode() + data.tobytes(),
                               digest_size=16).digest()

    for path in graphs:
        model = onnx.load(str(path))
        graph = model.graph
        keep, shared, nodes = [], {}, []
        for init in graph.initializer:
            array = numpy_helper.to_array(init)
            if array.size < min_elements or array.dtype not in (np.float32, np.float16,
                                                                  np.int8, np.uint8):
                keep.append(init)
                continue
            kept = array.astype(storage) if array.dtype.kind == "f" else array
            lower = array.dtype == np.float16 and kept.dtype == np.float32
            table, probe = (rounded, array) if lower else (stored, kept)
            source, transpose = table.get(digest(probe)), False
            if source is None and probe.ndim == 2:
                source, transpose = table.get(digest(probe.T)), True
            if source is None:
                name, transpose, count = f"weight_{count}", False, count + 1
                blob.extend(b"\0" * (-len(blob) % 64))  # 64-byte aligned tensors
                source = (name, kept.shape, kept.dtype, len(blob))
                blob.extend(np.ascontiguousarray(kept).tobytes())
                stored[digest(kept)] = source
                if kept.dtype.kind == "f":
                    rounded[digest(kept.astype(np.float16))] = source
            name, shape, dtype, offset = source
            if name not in shared:
                tensor = onnx.TensorProto(name=name, dims=list(shape),
                                          data_type=helper.np_dtype_to_tensor_dtype(dtype))
                length = int(np.prod(shape)) * np.dtype(dtype).itemsize
                for key, value in (("location", weights.name), ("offset", str(offset)),
                                   ("length", str(length))):
                    tensor.external_data.add(key=key, value=value)
                tensor.data_location = TensorProto.EXTERNAL
                shared[name] = tensor
            value = name
            if transpose:
                nodes.append(helper.make_node("Transpose", [value], [f"{init.name}__t"],
                                              perm=[1, 0]))
                value = f"{init.name}__t"
            if dtype != array.dtype:
                nodes.append(helper.make_node("Cast", [value], [init.name],
                                              to=helper.np_dtype_to_tensor_dtype(array.dtype)))
            else:
                nodes.append(helper.make_node("Identity", [value], [init.name]))
        graph.ClearField("initializer")
        graph.initializer.extend(keep + list(shared.values()))
        old = list(graph.node)
        graph.ClearField("node")
        graph.node.extend(nodes + old)
        onnx.save(model, str(path))
    weights.write_bytes(bytes(blob))
    after = sum(p.stat().st_size for p in graphs) + weights.stat().st_size
    return {"graph_bytes_before": before, "bytes_after": after, "weights_bytes": len(blob),
            "tensors": count, "storage": np.dtype(storage).name}


def _copy(model: Denoiser) -> Denoiser:
    clone = Denoiser(model.cfg)
    clone.load_state_dict(model.state_dict())
    return clone.eval()


WEIGHTS_BUDGET = 48 * 2**20  # float32 storage while it fits this; float16 beyond


def weights_storage(model: Denoiser, choice: str = "auto"):
    """The numpy dtype the weights are stored in: float32 keeps the CPU graphs exact against
    the checkpoint; "auto" takes it while it fits WEIGHTS_BUDGET (a model of ~12 M parameters)
    and float16 beyond, so a ~25 M-parameter directory stays near 50 MB."""
    if choice == "auto":
        return np.float32 if 4 * model.num_params() <= WEIGHTS_BUDGET else np.float16
    return np.dtype(choice).type

def session(path: Path, threads: int = 0, provider: str = "CPUExecutionProvider"):
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=[provider])


def encoder_feeds(ids, positions, mask, past_keys=None, past_values=None,
                  past_mask=None) -> dict:
    """An encoder graph's feeds (numpy); past_* only for a causal graph (None: no past)."""
    feeds = dict(zip(ENCODER_INPUTS, map(_np, (ids, positions, mask))))
    if past_keys is not None:
        feeds.update(zip(PAST_INPUTS, map(_np, (past_keys, past_values, past_mask))))
    return feeds


def empty_past(session, batch: int) -> dict:
    """Feeds of an empty past for a causal encoder session ({} for a bidirectional one)."""
    names = {i.name: i for i in session.get_inputs()}
    keys_name = PAST_INPUTS[0]
    if keys_name not in names:
        return {}
    L, _, H, _, D = names[keys_name].shape
    kind = np.float16 if names[keys_name].type == "tensor(float16)" else np.float32
    empty = np.zeros((L, batch, H, 0, D), kind)
    return dict(zip(PAST_INPUTS, (empty, empty, np.zeros((batch, 0), np.int64))))


def canvas_mask(session, batch: int, length: int) -> dict:
    """Feeds of an all-real canvas for a decoder session that takes `canvas_mask` (format 2)."""
    if modelcard.CANVAS_MASK not in {i.name for i in session.get_inputs()}:
        return {}
    return {modelcard.CANVAS_MASK: np.ones((batch, length), bool)}


def _np(value) -> np.ndarray:
    return value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def parity(model: Denoiser, specials: SpecialTokens, encoder_path: Path, decoder_path: Path,
           shapes=((1, 5, 16), (2, 37, 32), (3, 130, 64), (1, 512, 128)),
           dtype=torch.float32) -> dict:
    """Max abs differences between ONNX Runtime and PyTorch (same dtype) on random shapes.

    A causal model's context goes through the ONNX encoder in two calls at a random split,
    the second extending the first through past keys/values, against PyTorch's one call over
    the whole; rows from the third on pad their canvases (`canvas_mask`), and only real canvas
    positions are compared.
    """
    reference = model.eval() if dtype == torch.float32 else _copy(model).to(dtype)
    torch_dec = DecoderGraph(reference, list(specials.never_predicted))
    enc, dec = session(encoder_path), session(decoder_path)
    np_dtype = np.float16 if dtype == torch.float16 else np.float32
    worst = {"keys": 0.0, "values": 0.0, "logits": 0.0, "pred_prob": 0.0, "canvas_prob": 0.0}
    agree = total = 0
    for seed, (B, S, C) in enumerate(shapes):
        (ids, pos, mask, *_), (canvas, cpos, _, _, _, canvas_mask) = example_inputs(
            reference, B, S, C, dtype, seed)
        with torch.no_grad():
            keys, values = reference.encode(ids, pos, mask)
        split = S
        if model.cfg.causal and S > 1:
            split = int(np.random.default_rng(seed).integers(1, S))
        first = enc.run(ENCODER_OUTPUTS, {  # by name: a fused encoder may output features
            **encoder_feeds(ids[:, :split], pos[:, :split], mask[:, :split]),
            **empty_past(enc, B)})
        got_k, got_v = first
        if split < S:
            rest = enc.run(ENCODER_OUTPUTS, encoder_feeds(ids[:, split:], pos[:, split:],
                                                          mask[:, split:], *first,
                                                          mask[:, :split]))
            got_k, got_v = (np.concatenate([a, b], axis=3) for a, b in zip(first, rest))
        real = mask.bool().numpy()[None, :, None, :, None]  # padded keys are never attended
        worst["keys"] = max(worst["keys"], _diff(got_k, keys.float().numpy(), real))
        worst["values"] = max(worst["values"], _diff(got_v, values.float().numpy(), real))
        with torch.no_grad():
            ref = torch_dec(canvas, cpos, keys, values, mask, canvas_mask)
        got = dec.run(None, {"canvas_ids": canvas.numpy(), "canvas_position_ids": cpos.numpy(),
                             "keys": keys.numpy().astype(np_dtype),
                             "values": values.numpy().astype(np_dtype),
                             "context_mask": mask.numpy(), "canvas_mask": canvas_mask.numpy()})
        outputs = dict(zip(DECODER_OUTPUTS, got))
        rows = canvas_mask.numpy()
        for name in ("pred_prob", "canvas_prob", "logits"):
            where = rows[..., None] if name == "logits" else rows
            worst[name] = max(worst[name], _diff(outputs[name], ref[DECODER_OUTPUTS.index(name)]
                                                 .float().numpy(), where))
        assert outputs["pred_prob"].dtype == np.float32 and outputs["pred_ids"].dtype == np.int64
        agree += int((outputs["pred_ids"] == ref[0].numpy())[rows].sum())
        total += int(rows.sum())
    worst = {k: float(f"{v:.3g}") for k, v in worst.items()}
    worst["pred_ids_agree"] = round(agree / total, 5)
    worst["shapes"] = [list(s) for s in shapes]
    return worst


def _diff(got: np.ndarray, want: np.ndarray, where: np.ndarray | None = None) -> float:
    """Max |got - want| over `where`; inf when an infinity in one is not in the other."""
    got, want = got.astype(np.float64), want.astype(np.float64)
    keep = np.ones(got.shape, bool) if where is None else np.broadcast_to(where, got.shape)
    got, want = got[keep], want[keep]
    finite = np.isfinite(want) & np.isfinite(got)
    if not ((got == want) | finite).all():
        return float("inf")
    return float(np.abs(got[finite] - want[finite]).max(initial=0.0))


# -- CPU timing and exact-match through ONNX Runtime ----------------------------------------------

def time_graphs(encoder_path: Path, decoder_path: Path, threads: int = 2, context: int = 512,
                canvas: int = 64, repeats: int = 20, kv_dtype=np.float32) -> dict:
    """Milliseconds of the encoder at `context` tokens and of one decoder step (one variant)."""
    return compare_timings({"graphs": (encoder_path, decoder_path, kv_dtype)}, threads, context,
                           canvas, repeats)["graphs"]


def compare_timings(variants: dict, threads: int = 2, context: int = 512, canvas: int = 64,
                    repeats: int = 20) -> dict:
    """Interleaved CPU timings of several variants {name: (encoder, decoder, kv dtype)}.

    Runs alternate between variants so that load from other processes hits them alike; both
    the median and the minimum are reported (the minimum is the least disturbed by other load).
    """
    S, C = context, canvas
    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(4, 260, (1, S)).astype(np.int64),
             "position_ids": np.arange(S, dtype=np.int64)[None],
             "attention_mask": np.ones((1, S), np.int64)}
    outputs = ["pred_ids", "pred_prob", "canvas_prob"]
    runs = {}
    for name, (encoder_path, decoder_path, kv_dtype) in variants.items():
        enc, dec = session(encoder_path, threads), session(decoder_path, threads)
        enc_feeds = {**feeds, **empty_past(enc, 1)}
        keys, values = enc.run(ENCODER_OUTPUTS, enc_feeds)
        dec_feeds = {"canvas_ids": np.ones((1, C), np.int64),
                     "canvas_position_ids": np.arange(S, S + C, dtype=np.int64)[None],
                     "keys": keys.astype(kv_dtype), "values": values.astype(kv_dtype),
                     "context_mask": np.ones((1, S), np.int64), **canvas_mask(dec, 1, C)}
        for _ in range(2):
            enc.run(ENCODER_OUTPUTS, enc_feeds)
            dec.run(outputs, dec_feeds)
        runs[name] = (enc, enc_feeds, dec, dec_feeds, [], [])
    for _ in range(repeats):
        for enc, enc_feeds, dec, dec_feeds, encoder_ms, decoder_ms in runs.values():
            start = time.perf_counter()
            enc.run(ENCODER_OUTPUTS, enc_feeds)
            encoder_ms.append(1000 * (time.perf_counter() - start))
            start = time.perf_counter()
            dec.run(outputs, dec_feeds)
            decoder_ms.append(1000 * (time.perf_counter() - start))
    return {name: {"encoder_ms": round(float(np.median(e)), 2),
                   "encoder_min_ms": round(float(np.min(e)), 2),
                   "decoder_step_ms": round(float(np.median(d)), 2),
                   "decoder_step_min_ms": round(float(np.min(d)), 2),
                   "context": S, "canvas": C, "threads": threads, "repeats": repeats}
            for name, (_, _, _, _, e, d) in runs.items()}


def onnx_exact_match(encoder_path: Path, decoder_path: Path, examples, specials: SpecialTokens,
                     threshold: float = 0.9, threads: int = 2,
                     max_steps: int = 16) -> tuple[float, float]:
    """Exact-match of the server's sampler run through ONNX Runtime as the server runs it
    (`OnnxDenoiser`, CPU): (rate over holes, mean steps per example)."""
    from dlm_lsp.runtime import OnnxDenoiser

    from .sampling import exact_match, graphs_card

    denoiser = OnnxDenoiser(graphs_card(encoder_path, decoder_path, specials), "cpu", threads)
    return exact_match(denoiser, examples, specials, threshold, max_steps)


# -- sampler settings --------------------------------------------------------------------------

def measure_sampler(model: Denoiser, examples, specials: SpecialTokens,
                    thresholds=(0.5, 0.7, 0.9), step_caps=(4, 8, 16)) -> dict:
    """Validation exact-match and steps of the server's sampler (over the PyTorch model) on a
    grid; recommends the cheapest near-best setting."""
    from .sampling import exact_match
    from .torch_denoiser import TorchDenoiser

    denoiser = TorchDenoiser(model, specials)
    grid = []
    for cap in step_caps:
        for threshold in thresholds:
            rate, steps = exact_match(denoiser, examples, specials, threshold, cap,
                                      chunk=max(1, len(examples)))
            grid.append({"threshold": threshold, "max_steps": cap,
                         "exact_match": round(rate, 4), "mean_steps": round(steps, 2)})
    best = max(g["exact_match"] for g in grid)
    good = [g for g in grid if g["exact_match"] >= best - 0.01]
    pick = min(good, key=lambda g: (g["mean_steps"], -g["exact_match"], -g["threshold"]))
    return {"grid": grid, "recommended": pick, "examples": len(examples)}


# -- the model directory -----------------------------------------------------------------------

def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default="runs/model/last.pt")
    p.add_argument("--tokenizer", default="runs/tokenizer.json")
    p.add_argument("--corpus", default="runs/corpus", help="for validation exact-match/stats")
    p.add_argument("--out", default="runs/export", help="the model directory to write")
    p.add_argument("--name", default="dlm-lsp-default")
    p.add_argument("--version", default="0.1.0")
    p.add_argument("--max-context", type=int, default=0,
                   help="the card's context budget (default: what the checkpoint trained with)")
    p.add_argument("--em-examples", type=int, default=64)
    p.add_argument("--threads", type=int, default=2, help="CPU threads for timings")
    p.add_argument("--repeats", type=int, default=30, help="timed runs per graph")
    p.add_argument("--cpu-variant", choices=["auto", "fp32", "int8", "q4"], default="auto",
                   help="q4: ggml's blocks (Q4_1 matrices, a Q8_0 embedding/head, "
                   "model_export.quantize): an imported GGUF model's own numbers")
    p.add_argument("--accuracy-level", type=int, default=0, choices=[0, 1, 2, 3, 4],
                   help="q4: MatMulNBits' compute precision for the 4-bit matrices (0: "
                   "float32, the default; 4: int8 activations, as llama.cpp's Q4_1 × Q8_1 "
                   "dot products)")
    p.add_argument("--head-accuracy-level", type=int, default=4, choices=[0, 1, 2, 3, 4],
                   help="q4: the same for the 8-bit tied head (4: int8, ~200x faster here)")
    p.add_argument("--no-fuse", action="store_true",
                   help="q4, causal context: keep the exported graphs as the card's CPU graphs "
                   "instead of their fused rebuild (model_export.fused)")
    p.add_argument("--decoder-mlp-accuracy-level", type=int, default=None,
                   choices=[0, 1, 2, 3, 4],
                   help="fused: the decoder's MLP matrices' level (default: --accuracy-level; "
                   "4 measured on the shipped model: faster, below 0.97 argmax agreement with "
                   "float32, see benchmarks/README.md)")
    p.add_argument("--strategy", choices=STRATEGIES, default=None,
                   help="the card's sampler strategy (default: speculative for a shifted model "
                   "with a causal canvas, an AR model, else parallel)")
    p.add_argument("--max-steps", type=int, default=0,
                   help="the card's max_steps (default: measured on validation, or the "
                   "largest canvas bucket for left_to_right)")
    p.add_argument("--no-fp16", action="store_true", help="skip the CUDA fp16 variant")
    p.add_argument("--weights-dtype", choices=["auto", "float16", "float32"], default="auto",
                   help="precision the weights are stored in, once for every graph (auto: "
                   "float32 up to ~12 M parameters, float16 beyond)")
    p.add_argument("--note", default="", help="free text stored under training.note")


def add_verify_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", nargs="?", default="dlm_lsp/models/default")
    p.add_argument("--checkpoint", default="", help="compare with this PyTorch checkpoint")
    p.add_argument("--threads", type=int, default=2)


def trained_settings(state: dict, max_context: int = 0):
    """The example settings a checkpoint trained with — canvas buckets and context budgets —
    so the card says what the model learned. Checkpoints from before they were saved fall
    back to their training arguments, then to the old defaults. `max_context` overrides."""
    from .data import ExampleSettings

    fields = dict(state.get("example_settings") or {})
    args = state.get("args", {})
    if not fields:
        if args.get("buckets"):
            fields["buckets"] = tuple(sorted(int(b) for b in str(args["buckets"]).split(",")))
        for key in ("max_context", "suffix_tokens"):
            if args.get(key):
                fields[key] = int(args[key])
    if max_context:
        fields["max_context"] = max_context
    fields["buckets"] = tuple(fields.get("buckets", BUCKETS))
    settings = ExampleSettings(**{k: v for k, v in fields.items()
                                  if k in ExampleSettings.__dataclass_fields__})
    suffix = min(settings.suffix_tokens, settings.max_context // 4)
    return ExampleSettings(**{**{k: getattr(settings, k)
                                 for k in ExampleSettings.__dataclass_fields__},
                              "suffix_tokens": suffix,
                              "prefix_tokens": settings.max_context - 1 - suffix})


def _validation_examples(corpus: Path, tokenizer, specials, count: int, settings):
    from .data import ExampleMaker
    from .train import load_texts
    import random

    path = corpus / "val.jsonl.zst"
    if not path.is_file() or count <= 0:
        return []
    texts, languages = load_texts(path)
    maker = ExampleMaker(texts, languages, tokenizer, specials, settings)
    rng = random.Random(4242)
    return [maker.make(rng) for _ in range(count)]


def export_model_dir(args) -> dict:
    from .corpus import corpus_stats
    from .tokenizer import load_tokenizer, special_tokens
    from .train import load_checkpoint

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = out / ".work"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir()
    model, state = load_checkpoint(args.checkpoint)
    tokenizer = load_tokenizer(args.tokenizer)
    specials = special_tokens(tokenizer)
    assert tokenizer.get_vocab_size() == model.cfg.vocab_size
    report: dict = {}

    print("exporting fp32 graphs")
    enc32, dec32 = export_graphs(model, specials, work)
    report["parity_fp32"] = parity(model, specials, enc32, dec32)
    print("parity fp32:", report["parity_fp32"])
    trained = trained_settings(state, args.max_context)
    # the sampler grid and exact-match run canvases in the training layout, which a causal
    # canvas (an imported AR model) does not read: its settings come from `dlm-lsp eval`
    em_examples = 0 if model.cfg.canvas_attention == "causal" else args.em_examples
    examples = _validation_examples(Path(args.corpus), tokenizer, specials, em_examples,
                                    trained)
    sampler = measure_sampler(model, examples, specials) if examples else None
    threshold = sampler["recommended"]["threshold"] if sampler else 0.9
    em_steps = sampler["recommended"]["max_steps"] if sampler else 16
    report["sampler_grid"] = sampler

    variants = {"fp32": (enc32, dec32)}
    em = {}
    if args.cpu_variant in ("auto", "int8"):
        from onnxruntime.quantization import QuantType, quantize_dynamic

        enc8, dec8 = work / "encoder.int8.onnx", work / "decoder.int8.onnx"
        for src, dst in ((enc32, enc8), (dec32, dec8)):
            quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
        variants["int8"] = (enc8, dec8)
        report["parity_int8_vs_torch"] = parity(model, specials, enc8, dec8)
        print("int8 vs torch:", report["parity_int8_vs_torch"])
    if args.cpu_variant == "q4":
        import onnx

        from .quantize import quantize_graph

        enc4, dec4 = work / "encoder.q4.onnx", work / "decoder.q4.onnx"
        report["quantize_q4"] = {}
        for src, dst in ((enc32, enc4), (dec32, dec4)):
            graph = onnx.load(str(src))
            report["quantize_q4"][dst.stem] = quantize_graph(
                graph, model.cfg.d_model, model.cfg.vocab_size, args.accuracy_level,
                args.head_accuracy_level)
            onnx.save(graph, str(dst))
        print("q4:", report["quantize_q4"])
        variants["q4"] = (enc4, dec4)
        report["parity_q4_vs_torch"] = parity(model, specials, enc4, dec4,
                                              shapes=((1, 5, 16), (2, 37, 32), (1, 300, 16)))
        print("q4 vs torch:", report["parity_q4_vs_torch"])
    timings = compare_timings({k: (e, d, np.float32) for k, (e, d) in variants.items()},
                              args.threads, repeats=args.repeats)
    print("CPU timings:", json.dumps(timings))
    if len(variants) > 1 and examples:
        for name in variants:
            em[name] = onnx_exact_match(*variants[name], examples, specials, threshold,
                                        args.threads, em_steps)
        print("exact-match (onnx) fp32 / int8:", em)
    cpu = args.cpu_variant
    if cpu == "auto":
        # one request: the encoder plus a few denoising steps, least-disturbed runs
        cost = {k: v["encoder_min_ms"] + 4 * v["decoder_step_min_ms"] for k, v in timings.items()}
        int8_ok = "int8" in timings and (not em or em["int8"][0] >= em["fp32"][0])
        cpu = "int8" if int8_ok and cost["int8"] < cost["fp32"] else "fp32"
    report["cpu_timings_ms"] = timings
    report["onnx_exact_match"] = {k: {"exact_match": round(v[0], 4), "mean_steps": round(v[1], 2)}
                                  for k, v in em.items()}
    report["cpu_variant"] = cpu
    graphs = {}
    keep = {variants[cpu][0]: "encoder.onnx" if cpu == "fp32" else f"encoder.{cpu}.onnx",
            variants[cpu][1]: "decoder.onnx" if cpu == "fp32" else f"decoder.{cpu}.onnx"}
    graphs["cpu"] = GraphFiles(encoder=keep[variants[cpu][0]], decoder=keep[variants[cpu][1]],
                               dtype="float32")
    if not args.no_fp16:
        print("exporting fp16 graphs")
        enc16, dec16 = export_graphs(model, specials, work, ".fp16", torch.float16)
        try:
            report["parity_fp16"] = parity(model, specials, enc16, dec16, dtype=torch.float16,
                                           shapes=((1, 5, 16), (2, 37, 32)))
        except Exception as exc:  # CPU onnxruntime lacks some fp16 kernels
            report["parity_fp16"] = f"not checked on CPU: {type(exc).__name__}: {exc}"[:300]
        print("parity fp16:", report["parity_fp16"])
        keep[enc16], keep[dec16] = "encoder.fp16.onnx", "decoder.fp16.onnx"
        graphs["cuda"] = GraphFiles(encoder="encoder.fp16.onnx", decoder="decoder.fp16.onnx",
                                    dtype="float16")
    storage = weights_storage(model, args.weights_dtype)
    report["weights"] = share_weights(list(keep), work / WEIGHTS_FILE, storage)
    print("weights:", report["weights"])
    if cpu == "fp32":  # the CPU graph as shipped, over the stored weights
        report["parity_cpu"] = parity(model, specials, enc32, dec32)
        print("parity cpu (stored weights):", report["parity_cpu"])
    for old in [*out.glob("*.onnx"), out / WEIGHTS_FILE]:
        old.unlink(missing_ok=True)
    for src, name in keep.items():
        shutil.move(str(src), out / name)
    shutil.move(str(work / WEIGHTS_FILE), out / WEIGHTS_FILE)
    shutil.rmtree(work)
    save_compact(tokenizer, out / "tokenizer.json")

    cfg = model.cfg
    recommended = sampler["recommended"] if sampler else {"threshold": 0.9, "max_steps": 32}
    autoregressive = cfg.canvas_attention == "causal" and cfg.shift
    strategy = args.strategy or ("speculative" if autoregressive
                                 else "left_to_right" if cfg.canvas_attention == "causal"
                                 else "parallel")
    if args.max_steps:
        recommended = {**recommended, "max_steps": args.max_steps}
    elif strategy in ("left_to_right", "speculative") and not sampler:
        recommended = {**recommended, "max_steps": max(trained.buckets)}
    base = state.get("base")
    if base:
        _write_base_licence(out, base)
    train_args = state.get("args", {})
    card = ModelCard(
        name=args.name, version=args.version, vocab_size=cfg.vocab_size,
        n_layers=cfg.n_layers, n_heads=cfg.n_heads, head_dim=cfg.head_dim,
        special_tokens=specials, canvas_buckets=trained.buckets,
        max_context=trained.max_context,
        max_position=cfg.max_position,
        sampler=SamplerDefaults(threshold=recommended["threshold"],
                                max_steps=recommended["max_steps"], remask_floor=0.0,
                                strategy=strategy),
        graphs=graphs,
        context_attention=cfg.context_attention,
        n_kv_heads=cfg.n_kv_heads,
        canvas_attention=cfg.canvas_attention,
        shift=cfg.shift,
        reads_suffix=bool(state.get("reads_suffix", True)),
        weights=WEIGHTS_FILE,
        extra={
            "architecture": {"type": _architecture_type(cfg, imported=bool(base)),
                             "d_model": cfg.d_model, "mlp_hidden": cfg.mlp_hidden,
                             "mlp": "SwiGLU", "norm": "RMSNorm", "positions": "RoPE",
                             "rope_base": cfg.rope_base, "tied_embeddings": True,
                             "params": model.num_params()},
            "training": {
                "objective": ("none: the base model as pretrained (next-token prediction), "
                              "not trained here" if base and not state["step"] else
                              "masked diffusion, t~U(1e-3,1), CE on masked canvas tokens / t"),
                "steps": state["step"], "tokens_seen": state["tokens_seen"],
                "tokens_seen_counts": "context + canvas tokens of every training example",
                "wall_seconds": round(state["train_seconds"], 1),
                "hardware": state.get("hardware", "unknown"),
                "batch_size": train_args.get("batch_size"), "lr": train_args.get("lr"),
                "note": args.note,
                "final": _final_log(Path(args.checkpoint).parent),
            },
            **({"base_model": base} if base else {}),
            **({"drafter": PROMPT_LOOKUP_DRAFTER} if strategy == "speculative" else {}),
            "corpus": corpus_stats(Path(args.corpus)),
            "tokenizer_stats": _tokenizer_stats(Path(args.tokenizer)),
            "export": report,
        },
    )
    (out / "model.json").write_text(json.dumps(card.to_json(), indent=2) + "\n")
    if cpu == "q4" and cfg.causal and not args.no_fuse:
        from .fused import fuse_graphs, one_graph_encoder, ship

        encoder, decoder = graphs["cpu"].encoder, graphs["cpu"].decoder
        # a causal canvas: one graph, the buffered decoder also encodes (PREDICT_ROWS)
        fused_encoder = one_graph_encoder(out, "decoder.fused.onnx")
        nodes = fuse_graphs(out, encoder, decoder, fused_encoder, "decoder.fused.onnx",
                            None, args.decoder_mlp_accuracy_level)
        report["fused"] = {"from": [encoder, decoder], "accuracy_level": None,
                           "decoder_mlp_accuracy_level": args.decoder_mlp_accuracy_level,
                           "buffers": True, "nodes": nodes}
        ship(out, fused_encoder, "decoder.fused.onnx", report["fused"])
    load_card(out)  # the runtime's own validation
    sizes = {p.name: p.stat().st_size for p in out.iterdir() if p.is_file()}
    print("wrote", out, json.dumps(sizes))
    return report


# What drafts a speculative model's blocks today: no trained drafter ships yet (issue 29's
# DFlash drafter is not trained), so the drafts come from the document itself.
PROMPT_LOOKUP_DRAFTER = {
    "kind": "prompt lookup: the tokens after the latest earlier match of the text's last 8..1 "
            "tokens, else after the first match in the document after the cursor, as many as "
            "the match is long (dlm_lsp.draft.PromptLookup)",
    "trained": False,
    "training_tokens": 0,
    "lossless": "the target checks every draft in one causal call; the text is its greedy text",
}


def _architecture_type(cfg, imported: bool) -> str:
    """What the model is, in words (the card's architecture.type)."""
    if imported and cfg.canvas_attention == "causal" and cfg.shift:
        return ("autoregressive transformer (LLaMA family), imported as it is: causal context "
                "and canvas, shifted predictions")
    return f"transformer denoiser (MDLM/LLaDA-style), {cfg.context_attention} context"


def save_compact(tokenizer, path: Path) -> None:
    """tokenizer.json without indentation, merges as "a b" strings (both forms load): a
    50 k-token vocabulary in 1.4 MB instead of 3.5."""
    raw = json.loads(tokenizer.to_str(pretty=False))
    merges = raw.get("model", {}).get("merges")
    if merges and isinstance(merges[0], list):
        raw["model"]["merges"] = [" ".join(pair) for pair in merges]
    path.write_text(json.dumps(raw, ensure_ascii=False, separators=(",", ":")),
                    encoding="utf-8")


LICENSES = Path(__file__).resolve().parent / "licenses"


def _write_base_licence(out: Path, base: dict) -> None:
    """LICENSE (the base model's licence text) and NOTICE (what the weights are, from whom)
    in the model directory, as the base model's licence asks of a redistribution."""
    licence = str(base.get("license", "")).lower()
    text = LICENSES / f"{licence}.txt"
    if not text.is_file():
        raise SystemExit(f"no licence text for the base model's licence {licence!r} in "
                         f"{LICENSES}: add it before shipping its weights")
    shutil.copy(text, out / "LICENSE")
    (out / "NOTICE").write_text(
        f"This model directory holds the weights of {base.get('organization', '')} "
        f"{base.get('basename', '')} {base.get('size_label', '')} "
        f"({base.get('name', '')}), licensed under {base.get('license', '')} (LICENSE),\n"
        f"imported from {base.get('file', '')} (sha256 {base.get('sha256', '')}), converted "
        f"to ONNX by dlm-lsp's model_export; block quantization kept as in that file.\n")


def _final_log(run_dir: Path) -> dict:
    path = run_dir / "summary.json"
    if path.is_file():
        summary = json.loads(path.read_text())
        return {k: summary.get(k) for k in ("final_train_loss_ema", "final_val_loss",
                                            "val_exact_match", "params")}
    return {}


def _tokenizer_stats(path: Path) -> dict:
    stats = path.with_suffix(".stats.json")
    return json.loads(stats.read_text()) if stats.is_file() else {}


def main_from_args(args) -> int:
    export_model_dir(args)
    return 0


def verify_from_args(args) -> int:
    card = load_card(args.model_dir)
    print(f"card ok: {card.name} {card.version}, vocab {card.vocab_size}, "
          f"graphs {sorted(card.graphs)}")
    report = {}
    for provider, files in card.graphs.items():
        kv = np.float16 if files.dtype == "float16" else np.float32
        try:
            report[provider] = time_graphs(card.path(files.encoder), card.path(files.decoder),
                                           args.threads, kv_dtype=kv, repeats=5)
        except Exception as exc:
            report[provider] = f"not runnable here: {type(exc).__name__}: {str(exc)[:200]}"
    if args.checkpoint:
        from .tokenizer import load_tokenizer, special_tokens
        from .train import load_checkpoint

        model, _ = load_checkpoint(args.checkpoint)
        specials = special_tokens(load_tokenizer(card.path(card.tokenizer)))
        cpu = card.graphs["cpu"]
        report["parity_cpu"] = parity(model, specials, card.path(cpu.encoder),
                                      card.path(cpu.decoder))

    print(json.dumps(report, indent=2))
    return 0

