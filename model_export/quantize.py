"""Block-quantized CPU graphs in ggml's own formats: Q4_1 block matrices, a Q8_0 embedding.

An imported GGUF model's weights *are* block-quantized already (SmolLM2's file: every block
matrix Q4_1, the embedding Q8_0). Re-quantizing them onto another grid loses what the file
had (measured here: onnxruntime's 4-bit quantizer gave 75 % argmax agreement with the float
model on 16 positions). So each matrix is quantized the way ggml quantizes it, which for an
imported model finds back the file's own grid, exactly:

* Q4_1 (blocks of 32 along the input): ``w = d·q + m``, q in 0..15, ``m`` the block's minimum.
  ONNX Runtime's `MatMulNBits` has integer zero points only (its float zero points run a
  slow path: 0.7 ms for one row of a 576×1536 matrix against 0.02 ms), so the matrix product
  is split: ``x·Wᵀ = MatMulNBits(x; q, d, zero point 0) + blocksum(x)·mᵀ``, the second a
  [K/32 × N] float product, 1/32 of the first's work.
* Q8_0 (blocks of 32): ``w = d·q``, q in −127..127. Stored once as uint8 (q + 128) in the
  layout `MatMulNBits` reads with 8 bits (zero point 128), it serves the tied output head
  *and* the embedding lookup (a Gather of rows and their scales).

Both ``d`` and ``m`` are float16 in a GGUF file; the weights file stores floats as float16,
so the stored model is the file's numbers. `quantize_graph` rewrites an exported ONNX graph in
place; `share_weights` then stores every tensor once across the encoder and the decoder.
"""

from __future__ import annotations

import numpy as np

BLOCK = 32


def q4_1(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ggml's Q4_1 of `weight` (N, K): (q (N, K/32, 32) uint8, d (N, K/32), m (N, K/32)).

    d = (max − min)/15 and m = min per block, q = round((w − m)/d): on a matrix that was
    Q4_1 already this finds its grid again (the block's minimum has q = 0, its maximum q = 15).
    """
    N, K = weight.shape
    blocks = weight.astype(np.float32).reshape(N, K // BLOCK, BLOCK)
    low, high = blocks.min(-1), blocks.max(-1)
    d = (high - low) / 15.0
    inverse = np.divide(1.0, d, out=np.zeros_like(d), where=d > 0)
    q = np.clip(np.rint((blocks - low[..., None]) * inverse[..., None]), 0, 15).astype(np.uint8)
    return q, d.astype(np.float32), low.astype(np.float32)


def q8_0(table: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ggml's Q8_0 of `table` (V, K): (q (V, K/32, 32) int8, d (V, K/32)); d = max|w|/127."""
    V, K = table.shape
    blocks = table.astype(np.float32).reshape(V, K // BLOCK, BLOCK)
    d = np.abs(blocks).max(-1) / 127.0
    inverse = np.divide(1.0, d, out=np.zeros_like(d), where=d > 0)
    q = np.clip(np.rint(blocks * inverse[..., None]), -127, 127).astype(np.int8)
    return q, d.astype(np.float32)


def pack_nibbles(q: np.ndarray) -> np.ndarray:
    """(N, B, 32) values 0..15 → (N, B, 16) bytes, the first of each pair in the low nibble
    (`MatMulNBits`' layout)."""
    return (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)


def dequantized_error(weight: np.ndarray, q: np.ndarray, d: np.ndarray,
                      m: np.ndarray | None = None) -> float:
    """Largest |w − dequantized| relative to the largest |w| (0 for an exact grid)."""
    back = q.astype(np.float32) * d[..., None] + (0 if m is None else m[..., None])
    return float(np.abs(back.reshape(weight.shape) - weight).max() / max(np.abs(weight).max(),
                                                                          1e-30))


def quantize_graph(model, d_model: int, vocab_size: int, accuracy_level: int = 0,
                   head_accuracy_level: int = 4) -> dict:
    """Rewrite an exported graph (onnx ModelProto) in place: every MatMul by a constant
    (K, N) matrix with K a multiple of 32 → Q4_1 (`MatMulNBits` + the block-minimum term),
    the tied head (d_model, vocab) → 8-bit `MatMulNBits` over the Q8_0 table, and the
    embedding Gather (vocab, d_model) → a Gather of that table's rows and scales.

    `accuracy_level` is `MatMulNBits`' compute precision for the Q4_1 matrices: 0 (float32)
    by default — measured here on the 135 M model, int8 activations (4) made a decoder step
    over one token 15 % faster but prefill and 64-token steps 15-20 % slower, and their
    rounding turns float-level differences (a context padded in a batch, the order of a sum)
    into flipped near-ties; in float32 the graphs compute the file's own numbers. The 8-bit
    head keeps int8 activations (`head_accuracy_level`): in float32 that kernel takes 0.2 s
    over the 49 k-token vocabulary, 1 ms in int8.

    Returns what it did: counts and the worst relative dequantization error per kind.
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    arrays: dict[str, np.ndarray] = {}

    def array(name: str) -> np.ndarray | None:
        if name not in inits:
            return None
        if name not in arrays:
            arrays[name] = numpy_helper.to_array(inits[name])
        return arrays[name]

    new_inits: dict[str, np.ndarray] = {}
    report = {"q4_1": 0, "q4_1_error": 0.0, "head": 0, "embedding": 0, "q8_0_error": 0.0,
              "accuracy_level": accuracy_level, "head_accuracy_level": head_accuracy_level}
    table_name = "embed_q8_0"
    nodes = []
    counter = 0

    def q8_table(table: np.ndarray) -> None:
        if table_name in new_inits:
            return
        q, d = q8_0(table)
        V, K = table.shape
        report["q8_0_error"] = max(report["q8_0_error"], dequantized_error(table, q, d))
        new_inits[table_name] = (q.astype(np.int16) + 128).astype(np.uint8)  # (V, K/32, 32)
        new_inits[table_name + "_scale"] = d.reshape(-1)  # (V·K/32,), stored once
        new_inits[table_name + "_zero"] = np.full(d.size, 128, np.uint8)
        new_inits[table_name + "_row_shape"] = np.array([V, K // BLOCK, 1], np.int64)
        nodes.append(helper.make_node("Reshape", [table_name + "_scale",
                                                  table_name + "_row_shape"],
                                      [table_name + "_row_scale"]))  # (V, K/32, 1)

    # a constant matrix read through a Transpose node (how the exporter writes the tied head)
    transposed = {node.output[0]: node.input[0] for node in graph.node
                  if node.op_type == "Transpose" and node.input[0] in inits
                  and [list(a.ints) for a in node.attribute if a.name == "perm"] in ([], [[1, 0]])}

    for node in graph.node:
        if node.op_type == "Gather" and len(node.input) == 2:
            table = array(node.input[0])
            if table is not None and table.shape == (vocab_size, d_model):
                q8_table(table)
                name = f"embed_{counter}"
                counter += 1
                ids = node.input[1]
                nodes += [
                    helper.make_node("Gather", [table_name, ids], [f"{name}_q"]),  # (B,T,K/32,32)
                    helper.make_node("Gather", [table_name + "_row_scale", ids],
                                     [f"{name}_d"]),  # (B, T, K/32, 1)
                    helper.make_node("Cast", [f"{name}_q"], [f"{name}_f"], to=1),
                    helper.make_node("Sub", [f"{name}_f", f"{name}_128"], [f"{name}_c"]),
                    helper.make_node("Mul", [f"{name}_c", f"{name}_d"], [f"{name}_w"]),
                    helper.make_node("Reshape", [f"{name}_w", f"{name}_shape"], node.output),
                ]
                new_inits[f"{name}_128"] = np.array(128.0, np.float32)
                new_inits[f"{name}_shape"] = np.array([0, 0, d_model], np.int64)
                report["embedding"] += 1
                continue
        if node.op_type == "MatMul" and len(node.input) == 2:
            b = array(node.input[1])
            if b is None and node.input[1] in transposed:
                source = array(transposed[node.input[1]])
                b = None if source is None or source.ndim != 2 else source.T
            if b is not None and b.ndim == 2 and b.shape[0] % BLOCK == 0:
                K, N = b.shape
                name = f"q4_{counter}"
                counter += 1
                x, (y,) = node.input[0], node.output
                if (K, N) == (d_model, vocab_size):  # the tied head: the Q8_0 table, 8 bits
                    q8_table(b.T)
                    nodes.append(helper.make_node(
                        "MatMulNBits", [x, table_name, table_name + "_scale",
                                        table_name + "_zero"], [y], domain="com.microsoft",
                        K=K, N=N, bits=8, block_size=BLOCK,
                        accuracy_level=head_accuracy_level))
                    report["head"] += 1
                    continue
                q, d, m = q4_1(np.ascontiguousarray(b.T))
                report["q4_1_error"] = max(report["q4_1_error"], dequantized_error(b.T, q, d, m))
                blocks = K // BLOCK
                new_inits[f"{name}_q"] = pack_nibbles(q)  # (N, K/32, 16)
                new_inits[f"{name}_d"] = d.reshape(-1)
                new_inits[f"{name}_zero"] = np.zeros(N * ((blocks + 1) // 2), np.uint8)
                new_inits[f"{name}_mT"] = np.ascontiguousarray(m.T)  # (K/32, N)
                new_inits[f"{name}_blocks"] = np.array([0, 0, blocks, BLOCK], np.int64)
                new_inits[f"{name}_axis"] = np.array([-1], np.int64)
                nodes += [
                    helper.make_node("MatMulNBits", [x, f"{name}_q", f"{name}_d",
                                                     f"{name}_zero"], [f"{name}_dq"],
                                     domain="com.microsoft", K=K, N=N, bits=4,
                                     block_size=BLOCK, accuracy_level=accuracy_level),
                    helper.make_node("Reshape", [x, f"{name}_blocks"], [f"{name}_xb"]),
                    helper.make_node("ReduceSum", [f"{name}_xb", f"{name}_axis"],
                                     [f"{name}_xs"], keepdims=0),  # (B, T, K/32)
                    helper.make_node("MatMul", [f"{name}_xs", f"{name}_mT"], [f"{name}_min"]),
                    helper.make_node("Add", [f"{name}_dq", f"{name}_min"], [y]),
                ]
                report["q4_1"] += 1
                continue
        nodes.append(node)
    used = {name for node in nodes for name in node.input}
    graph_outputs = {output.name for output in graph.output}
    nodes = [node for node in nodes if node.op_type != "Transpose"
             or node.output[0] not in transposed or node.output[0] in used | graph_outputs]
    used = {name for node in nodes for name in node.input}
    kept = [init for init in graph.initializer if init.name in used]
    for node in nodes:  # the exporter's per-node stack traces: a quarter of a graph file
        node.ClearField("metadata_props")
    graph.ClearField("value_info")  # shape hints only; ONNX Runtime infers them
    graph.ClearField("node")
    graph.node.extend(nodes)
    graph.ClearField("initializer")
    graph.initializer.extend(kept + [numpy_helper.from_array(value, name)
                                     for name, value in new_inits.items()])
    if not any(op.domain == "com.microsoft" for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return report
