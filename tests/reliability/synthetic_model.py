"""A tiny, deterministic model directory that honours the model contract (model.json,
tokenizer.json, encoder.onnx, decoder.onnx), built in a second from onnx.helper.

The reliability tests need a model that loads through the real runtime (so that truncating its
`.onnx` or breaking its card exercises the real failure paths) and that answers fast and the
same way every time (so that a storm of 1,000 requests fits in seconds on a shared CPU). The
decoder ignores the context: at relative canvas position k it predicts the k-th token of
`ANSWER` and then end-of-span, confident only about the first, so a request takes
len(tokens(ANSWER)) + 1 denoise steps and can be cancelled between them. `work` adds a
matrix product per step (a (work, work) @ (work, work) matmul) to make steps cost real time.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

SPECIAL_TOKENS = ("<|pad|>", "<|mask|>", "<|endofspan|>", "<|file|>")
ANSWER = "pass"
SAMPLE = (
    "def f(x):\n    return x + 1\n\nclass A:\n    pass\n\nfor i in range(10):\n    print(i)\n"
    "import os\nif x == 1:\n    y = [1, 2, 3]\nwhile True:\n    break\n"
)
N_HEADS, HEAD_DIM, TABLE = 2, 8, 512


def _tokenizer(directory: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, min_frequency=1, special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tokenizer.train_from_iterator([SAMPLE] * 4, trainer=trainer)
    tokenizer.save(str(directory / "tokenizer.json"))
    return tokenizer


def _encoder(vocab: int):
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    table = numpy_helper.from_array(
        rng.standard_normal((vocab, N_HEADS * HEAD_DIM)).astype(np.float32), "table")
    shape = numpy_helper.from_array(np.array([0, 0, N_HEADS, HEAD_DIM], np.int64), "shape")
    zero = numpy_helper.from_array(np.array(0.0, np.float32), "zero")
    axes2 = numpy_helper.from_array(np.array([2], np.int64), "axes2")
    axes0 = numpy_helper.from_array(np.array([0], np.int64), "axes0")
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["emb"]),  # (B, S, H*D)
        helper.make_node("Add", ["position_ids", "attention_mask"], ["pm"]),
        helper.make_node("Cast", ["pm"], ["pmf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["pmf", "zero"], ["pm0"]),
        helper.make_node("Unsqueeze", ["pm0", "axes2"], ["pm1"]),  # (B, S, 1)
        helper.make_node("Add", ["emb", "pm1"], ["emb1"]),
        helper.make_node("Reshape", ["emb1", "shape"], ["bshd"]),  # (B, S, H, D)
        helper.make_node("Transpose", ["bshd"], ["bhsd"], perm=[0, 2, 1, 3]),
        helper.make_node("Unsqueeze", ["bhsd", "axes0"], ["keys"]),  # (1, B, H, S, D)
        helper.make_node("Identity", ["keys"], ["values"]),
    ]
    ints = lambda name: helper.make_tensor_value_info(name, TensorProto.INT64, ["B", "S"])  # noqa: E731
    kv = lambda name: helper.make_tensor_value_info(  # noqa: E731
        name, TensorProto.FLOAT, [1, "B", N_HEADS, "S", HEAD_DIM])
    graph = helper.make_graph(
        nodes, "encoder", [ints("input_ids"), ints("position_ids"), ints("attention_mask")],
        [kv("keys"), kv("values")], [table, shape, zero, axes2, axes0])
    return graph


def _decoder(answer_ids: list[int], eos: int, work: int):
    from onnx import TensorProto, helper, numpy_helper

    ids = np.full(TABLE, eos, np.int64)
    ids[: len(answer_ids)] = answer_ids
    probs = np.full(TABLE, 0.5, np.float32)
    probs[0] = 0.95
    inits = [
        numpy_helper.from_array(ids, "answer"),
        numpy_helper.from_array(probs, "probs"),
        numpy_helper.from_array(np.array(TABLE - 1, np.int64), "last"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
    ]
    nodes = [
        helper.make_node("ReduceMin", ["canvas_position_ids", "axis1"], ["first"], keepdims=1),
        helper.make_node("Sub", ["canvas_position_ids", "first"], ["rel"]),
        helper.make_node("Min", ["rel", "last"], ["index"]),  # (B, C)
        helper.make_node("Gather", ["answer", "index"], ["pred_ids"]),
        helper.make_node("Gather", ["probs", "index"], ["p0"]),
        # keep every input alive (and make a step cost `work`): zero-valued terms
        helper.make_node("ReduceSum", ["keys"], ["ks"], keepdims=0),
        helper.make_node("ReduceSum", ["values"], ["vs"], keepdims=0),
        helper.make_node("ReduceSum", ["context_mask"], ["cm"], keepdims=0),
        helper.make_node("ReduceSum", ["canvas_ids"], ["ci"], keepdims=0),
        helper.make_node("Add", ["cm", "ci"], ["icount"]),
        helper.make_node("Cast", ["icount"], ["fcount"], to=TensorProto.FLOAT),
        helper.make_node("Add", ["ks", "vs"], ["kv"]),
        helper.make_node("Add", ["kv", "fcount"], ["noise"]),
        helper.make_node("Mul", ["noise", "zero"], ["nothing"]),
    ]
    if work > 0:
        rng = np.random.default_rng(1)
        inits.append(numpy_helper.from_array(
            (rng.standard_normal((work, work)) / work).astype(np.float32), "w"))
        nodes += [
            helper.make_node("Add", ["w", "nothing"], ["w1"]),  # depends on the input: no folding
            helper.make_node("MatMul", ["w1", "w"], ["ww"]),
            helper.make_node("ReduceSum", ["ww"], ["wsum"], keepdims=0),
            helper.make_node("Mul", ["wsum", "zero"], ["wzero"]),
            helper.make_node("Add", ["nothing", "wzero"], ["nothing2"]),
        ]
        last = "nothing2"
    else:
        last = "nothing"
    nodes += [
        helper.make_node("Add", ["p0", last], ["pred_prob"]),
        helper.make_node("Cast", ["canvas_ids"], ["cf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["cf", "zero"], ["cz"]),
        helper.make_node("Add", ["cz", "one"], ["canvas_prob"]),
    ]
    ints = lambda name, dims: helper.make_tensor_value_info(name, TensorProto.INT64, dims)  # noqa: E731
    kv = lambda name: helper.make_tensor_value_info(  # noqa: E731
        name, TensorProto.FLOAT, [1, "B", N_HEADS, "S", HEAD_DIM])
    floats = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, ["B", "C"])  # noqa: E731
    return helper.make_graph(
        nodes, "decoder",
        [ints("canvas_ids", ["B", "C"]), ints("canvas_position_ids", ["B", "C"]), kv("keys"),
         kv("values"), ints("context_mask", ["B", "S"])],
        [ints("pred_ids", ["B", "C"]), floats("pred_prob"), floats("canvas_prob")], inits)


def build_synthetic_model(directory: str | Path, *, work: int = 0, answer: str = ANSWER) -> Path:
    """Write a synthetic model directory (replacing `directory`) and return its path; its
    every canvas decodes to `answer`."""
    import onnx
    from onnx import helper

    directory = Path(directory)
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    tokenizer = _tokenizer(directory)
    specials = {name: tokenizer.token_to_id(token) for name, token in
                zip(("pad", "mask", "end_of_span", "file"), SPECIAL_TOKENS)}
    vocab = tokenizer.get_vocab_size()
    answer_ids = tokenizer.encode(answer, add_special_tokens=False).ids
    opset = [helper.make_opsetid("", 18)]
    for name, graph in (("encoder.onnx", _encoder(vocab)),
                        ("decoder.onnx", _decoder(answer_ids, specials["end_of_span"], work))):
        model = helper.make_model(graph, opset_imports=opset, producer_name="dlm-lsp tests")
        model.ir_version = 8
        onnx.checker.check_model(model)
        onnx.save(model, str(directory / name))
    card = {
        "format": 1, "name": "synthetic", "version": "0",
        "architecture": {"vocab_size": vocab, "n_layers": 1, "n_heads": N_HEADS,
                         "head_dim": HEAD_DIM},
        "special_tokens": specials,
        "canvas_buckets": [8, 16, 32],
        "max_context": 256, "max_position": 1024,
        "sampler": {"threshold": 0.9, "max_steps": 8, "remask_floor": 0.0},
        "graphs": {"cpu": {"encoder": "encoder.onnx", "decoder": "decoder.onnx",
                           "dtype": "float32"}},
        "tokenizer": "tokenizer.json",
        "training": {"note": "synthetic test model: predicts a fixed answer, never trained"},
    }
    (directory / "model.json").write_text(json.dumps(card, indent=2))
    return directory


if __name__ == "__main__":  # pragma: no cover - manual use
    import sys

    print(build_synthetic_model(sys.argv[1], work=int(sys.argv[2]) if len(sys.argv) > 2 else 0))
