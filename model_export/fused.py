"""The block-quantized graphs rebuilt in ONNX Runtime's fused LLaMA shape, over the same weights.

The exported graphs (`export.export_graphs` + `quantize.quantize_graph`) spell attention out
in primitive nodes: per layer a split, reshapes and transposes of the heads, the rotary
embedding as slices, negations and concats, scores over the context and over the canvas
joined, a masked softmax — ~100 nodes a layer, ~3,200 a call, and a quarter of a decoder
call's time in the transposes, splits and concats alone (benchmarks/README.md, the profile).
ONNX Runtime has fused kernels for exactly this block, the ones its own LLaMA builder
(onnxruntime-genai) emits and its CUDA provider has too:

* ``SimplifiedLayerNormalization`` / ``SkipSimplifiedLayerNormalization``: RMSNorm, fused
  with the residual add before it;
* ``com.microsoft.RotaryEmbedding`` on the queries and keys, with the explicit position ids
  of the layout (a canvas's positions do not follow its context's length: a shifted hole's
  first input re-reads the context's last token at its position, and a suffix sits after
  the holes);
* ``com.microsoft.GroupQueryAttention`` over the cached keys/values (the past) and the new
  tokens' own, causal from the past on (the canvas of an AR model, a causal context), or
  not (a denoiser's bidirectional canvas); everything else the old graphs masked — the
  shifted layout's hidden anchor, context padding, padded canvas positions of a batch, the
  past of a context extension — is an additive ``attention_bias`` over the keys.

`fuse_graphs` builds both graphs from an exported q4 pair *without* re-exporting: it reads
which quantized matrices and norm weights each layer uses from the old graph and copies
those tensors as they are (the same names, the same external-data references into the
same weights file), so the weights file does not change by a byte. The Q4_1 block-minimum
term of `quantize.quantize_graph` (``blocksum(x)·mᵀ``) is kept exact, its block sums
computed once per input (Q, K and V share one matrix; gate and up share their input).
The contract (names, shapes, dtypes in dlm_lsp.modelcard) is the old graphs'; the decoder
also outputs the canvas's own keys/values (`CANVAS_KEYS`, `CANVAS_VALUES`, (L,B,H,C,D)),
so a runtime can append committed canvas tokens to a context without an encoder call.

What ships is one graph: the buffered decoder (per-layer key/value buffers the call writes
into) takes `PREDICT_ROWS`, the canvas positions its head runs on, and with none it only
writes a piece of context's keys/values: it is the encoder too (`fuse_graphs` with the same
name for both; the card then names that file twice). One ONNX Runtime session then prepacks
the weights once: two sessions held two prepacked copies (RSS after load 354 → 262 MB, load
0.47 → 0.23 s, measured), for a 512-token encode ~5 % slower than the encoder graph's (the
last block's MLP and the canvas keys' copy run too). `fuse_encoder` stays for the stacked
decoder's pair (tests, comparisons).

With `features` (a drafter's target layers, `model_export/drafter.py`), both graphs also
output `FEATURES` (B, T, K·d): the residual stream after each of those blocks (0: the
embedding, L: the last block, before the final norm; `Denoiser.layer_states`), concatenated
in the order asked, for every input token. The residuals are computed anyway (the
`SkipSimplifiedLayerNormalization` nodes' sum outputs); only their Concat is added. ONNX
Runtime runs it on every call, fetched or not (its profiler shows the `features` Concat, and
the canvas keys' too, in every run: it does not prune unfetched outputs), but it is one copy
of K·d floats a token: a 512-token encode took 1014 ms without fetching it and 1047 with,
within the noise of a loaded machine (benchmarks/feature_drafter_calls.py).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from dlm_lsp import modelcard

CANVAS_KEYS, CANVAS_VALUES = modelcard.CANVAS_KEYS, modelcard.CANVAS_VALUES
FEATURES = modelcard.FEATURES
MASKED = -1.0e9  # the attention bias of a key a query may not see (finite: no NaN rows)
MS = "com.microsoft"


class GraphShapeError(ValueError):
    """An exported graph that is not the quantized transformer this builder knows."""


class _Source:
    """The exported q4 graph: its per-layer weights found by position and name."""

    def __init__(self, model, n_layers: int) -> None:
        self.model = model
        graph = model.graph
        self.inits = {init.name: init for init in graph.initializer}
        self.producer = {out: node for node in graph.node for out in node.output}
        nbits = [node for node in graph.node if node.op_type == "MatMulNBits"]
        attrs = [{a.name: a.i for a in node.attribute} for node in nbits]
        self.q4 = [(n, a) for n, a in zip(nbits, attrs) if a.get("bits") == 4]
        heads = [(n, a) for n, a in zip(nbits, attrs) if a.get("bits") == 8]
        # an encoder's last layer has its QKV matrix only (its keys/values are all it needs)
        if len(self.q4) not in (5 * n_layers, 5 * n_layers - 4) or len(heads) > 1:
            raise GraphShapeError(f"{len(self.q4)} 4-bit and {len(heads)} 8-bit matrices: not "
                                  f"a quantized {n_layers}-layer graph (quantize_graph's)")
        self.head = heads[0] if heads else None
        means = [node for node in graph.node if node.op_type == "ReduceMean"]
        if not means:
            raise GraphShapeError("no RMSNorm in the graph")
        consumers = [n for n in graph.node if means[0].output[0] in n.input]
        eps = [self.constant_value(name) for n in consumers if n.op_type == "Add"
               for name in n.input if name != means[0].output[0]]
        self.eps = float(eps[0]) if eps and eps[0] is not None else 1e-5

    def constant_value(self, name: str) -> np.ndarray | None:
        from onnx import numpy_helper

        init = self.inits.get(name)
        if init is None or init.data_location == 1:  # external: not needed here
            return None
        return numpy_helper.to_array(init)


class _Builder:
    """Nodes, initializers and copied constants of the new graph."""

    def __init__(self, source: _Source) -> None:
        self.source = source
        self.nodes: list = []
        self.inits: dict = {}
        self.copied: set[str] = set()
        self.count = 0

    def name(self, stem: str) -> str:
        self.count += 1
        return f"{stem}_{self.count}"

    def node(self, op: str, inputs: list[str], outputs: int | list[str] = 1,
             domain: str = "", stem: str | None = None, **attrs) -> list[str]:
        from onnx import helper

        if isinstance(outputs, int):
            outputs = [self.name(stem or op.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op, inputs, outputs, domain=domain or None,
                                           name=self.name(f"n_{op}"), **attrs))
        return outputs

    def one(self, op: str, inputs: list[str], **kw) -> str:
        return self.node(op, inputs, 1, **kw)[0]

    def const(self, value: np.ndarray, stem: str = "c") -> str:
        from onnx import numpy_helper

        name = self.name(stem)
        self.inits[name] = numpy_helper.from_array(np.asarray(value), name)
        return name

    def copy(self, name: str) -> str:
        """Make the old graph's constant `name` available under the same name: its
        initializer as stored (an external-data reference stays one), or the constant node
        chain that made it (the Cast of a float16-stored tensor, a Reshape of a table)."""
        if name in self.copied or not name:
            return name
        source = self.source
        if name in source.inits:
            self.inits[name] = source.inits[name]
        elif name in source.producer:
            node = source.producer[name]
            if node.op_type not in ("Identity", "Cast", "Reshape", "Transpose", "Constant"):
                raise GraphShapeError(f"{name} is not a constant ({node.op_type})")
            for value in node.input:
                self.copy(value)
            self.nodes.append(node)
            self.copied.update(node.output)
        else:
            raise GraphShapeError(f"no constant {name} in the exported graph")
        self.copied.add(name)
        return name


def _layer_matrices(source: _Source, d_model: int):
    """Per layer (qkv, proj, gate, up, down) MatMulNBits nodes, in the exporter's order."""
    layers = []
    for index in range(0, len(source.q4), 5):
        group = [node for node, _ in source.q4[index : index + 5]]
        attrs = [a for _, a in source.q4[index : index + 5]]
        if len(group) == 1:  # the encoder's last layer: keys/values only
            layers.append(group + [None] * 4)
            break
        if attrs[1]["N"] != d_model or attrs[4]["N"] != d_model or attrs[2]["N"] != attrs[3]["N"]:
            raise GraphShapeError(f"layer {index // 5}: matrices not in qkv, proj, gate, up, "
                                  "down order")
        layers.append(group)
    return layers


def _norm_weights(source: _Source) -> list[str]:
    """The RMSNorm weights in graph order (per layer attention's then the MLP's, then the
    final norm's): each ReduceMean's norm ends in a Mul by a constant vector. Found by the
    graph's structure, not by name: the exporter folds equal tensors (a fresh model's norms
    are all ones) into one initializer."""
    graph = source.model.graph
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def constant(name: str) -> bool:
        node = source.producer.get(name)
        return name in source.inits or (node is not None and node.op_type in ("Cast", "Identity")
                                        and constant(node.input[0]))

    weights = []
    for mean in (n for n in graph.node if n.op_type == "ReduceMean"):
        frontier, found = [mean.output[0]], None
        for _ in range(6):  # Add(eps) → Sqrt → Reciprocal → Mul(x) → [Cast] → Mul(weight)
            nodes = [n for name in frontier for n in consumers.get(name, [])]
            for node in nodes:
                others = [i for i in node.input if i not in frontier]
                if node.op_type == "Mul" and len(others) == 1 and constant(others[0]):
                    found = others[0]
                    break
            if found:
                break
            frontier = [o for n in nodes for o in n.output]
        if found is None:
            raise GraphShapeError(f"no weight after the RMSNorm at {mean.output[0]}")
        weights.append(found)
    return weights


def _q4_matmul(b: _Builder, x: str, node, sums: dict[str, str],
               accuracy_level: int | None) -> str:
    """x · Wᵀ for a Q4_1 matrix: MatMulNBits over the stored nibbles and scales plus the
    block-minimum term blocksum(x)·mᵀ (block sums shared by the matrices of one input)."""
    from onnx import helper

    q, d, zero = (b.copy(name) for name in node.input[1:4])
    stem = q[: -len("_q")]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if accuracy_level is not None:
        attrs["accuracy_level"] = accuracy_level
    product = b.one("MatMulNBits", [x, q, d, zero], domain=MS, **attrs)
    if x not in sums:
        blocks = b.one("Reshape", [x, b.copy(f"{stem}_blocks")])
        sums[x] = b.one("ReduceSum", [blocks, b.copy(f"{stem}_axis")], keepdims=0)
    minimum = b.one("MatMul", [sums[x], b.copy(f"{stem}_mT")])
    return b.one("Add", [product, minimum])


def _rope_caches(b: _Builder, max_position: int) -> tuple[str, str]:
    """cos/sin caches (max_position, D/2) from the graph's own inverse frequencies, computed
    in the graph so ONNX Runtime folds them when it loads the session (the file stays small)."""
    inv_freq = b.copy("model.rotary.inv_freq")
    steps = b.one("Range", [b.const(np.array(0.0, np.float32)),
                            b.const(np.array(float(max_position), np.float32)),
                            b.const(np.array(1.0, np.float32))])
    angles = b.one("Mul", [b.one("Unsqueeze", [steps, b.const(np.array([1], np.int64))]),
                           inv_freq])
    return b.one("Cos", [angles], stem="cos_cache"), b.one("Sin", [angles], stem="sin_cache")


def _embed(b: _Builder, ids: str) -> str:
    """The Q8_0 table's rows, dequantized (quantize_graph's embedding, same tensors)."""
    table = b.copy("embed_q8_0")
    row_scale = b.copy("embed_q8_0_row_scale")
    q = b.one("Gather", [table, ids])
    d = b.one("Gather", [row_scale, ids])
    centred = b.one("Sub", [b.one("Cast", [q], to=1), b.const(np.array(128.0, np.float32))])
    rows = b.one("Mul", [centred, d])
    d_model = None
    shape = b.source.constant_value("embed_0_shape")
    if shape is not None:
        d_model = int(shape[-1])
    if d_model is None:
        raise GraphShapeError("no embedding shape")
    return b.one("Reshape", [rows, b.const(np.array([0, 0, d_model], np.int64))])


def _dim(b: _Builder, value: str, axis: int) -> str:
    """Shape(value)[axis] as a (1,) int64."""
    return b.one("Shape", [value], start=axis, end=axis + 1)


def _attention_bias(b: _Builder, key_masks: list[str], queries: str) -> str:
    """(B, 1, T, P+T) float: 0 where a key is visible, MASKED where not, from the keys'
    masks (each (B, n) int64 or bool, concatenated in key order) for `queries` (B, T, ·)."""
    parts = [b.one("Cast", [mask], to=1) for mask in key_masks]
    visible = parts[0] if len(parts) == 1 else b.one("Concat", parts, axis=1)
    bias = b.one("Mul", [b.one("Sub", [visible, b.const(np.array(1.0, np.float32))]),
                         b.const(np.array(-MASKED, np.float32))])  # 0 or MASKED
    bias = b.one("Unsqueeze", [bias, b.const(np.array([1, 2], np.int64))])  # (B, 1, 1, K)
    shape = b.one("Concat", [_dim(b, bias, 0), b.const(np.array([1], np.int64)),
                             _dim(b, queries, 1), _dim(b, bias, 3)], axis=0)
    return b.one("Expand", [bias, shape])


def _body(b: _Builder, card, x: str, positions: str, past_keys, past_values,
          past_length: str, bias: str, causal: bool, levels: tuple[int | None, int | None],
          last_mlp: bool, max_position: int, states: dict[int, str] | None = None):
    """The transformer blocks over x (B, T, d) at `positions` (B, T) against the past:
    `past_keys`/`past_values` one (L, B, H, P, D) input each, or per layer (B, H, ≥P+T, D)
    buffers that GroupQueryAttention writes x's keys/values into at P.. (a list of input
    names each; their present outputs are then `present_key_{l}`/`present_value_{l}`);
    `past_length` (1,) int64 is P. Returns (final hidden state or None, per-layer keys,
    per-layer values), the keys/values (B, H, T, D) of x's own tokens, post-rotary.
    `levels`: MatMulNBits accuracy level per matrix role (`MATRICES`; None: as exported).
    `states`, when given, receives the residual stream after each block (0: x itself, l:
    after block l, L with `last_mlp` only), by layer."""
    wanted_last = states is not None and last_mlp  # the stream after the last block
    states = {} if states is None else states
    source = b.source
    d_model = card.n_heads * card.head_dim
    H, Hkv, D = card.n_heads, card.kv_heads, card.head_dim
    cos, sin = _rope_caches(b, max_position)
    B = _dim(b, x, 0)
    T = _dim(b, x, 1)
    total = b.one("Add", [past_length, T])
    total32 = b.one("Cast", [b.one("Squeeze", [total])], to=6)  # scalar int32
    seqlens = b.one("Expand", [b.one("Cast", [b.one("Sub", [total, b.const(
        np.array([1], np.int64))])], to=6), B])  # (B,) int32: total − 1 every row
    heads_shape = b.const(np.array([0, 0, Hkv, D], np.int64))
    layers = _layer_matrices(source, d_model)
    norms = iter(_norm_weights(source))
    keys, values = [], []
    residual, pending = x, None
    for index, (qkv_node, proj, gate, up, down) in enumerate(layers):
        attn_norm = b.copy(next(norms))
        if pending is None:
            normed = b.one("SimplifiedLayerNormalization", [residual, attn_norm], axis=-1,
                           epsilon=source.eps)
        else:
            normed, _, _, residual = b.node(
                "SkipSimplifiedLayerNormalization", [pending, residual, attn_norm], 4,
                domain=MS, epsilon=source.eps)
        states[index] = residual  # the stream after block `index` (0: the embedding)
        sums: dict[str, str] = {}
        qkv = _q4_matmul(b, normed, qkv_node, sums, levels["qkv"])
        sizes = b.const(np.array([H * D, Hkv * D, Hkv * D], np.int64))
        q, k, v = b.node("Split", [qkv, sizes], 3, axis=-1)
        q = b.one("RotaryEmbedding", [q, positions, cos, sin], domain=MS)
        k = b.one("RotaryEmbedding", [k, positions, cos, sin], domain=MS)
        layer = b.const(np.array(index, np.int64))
        for own, out in ((k, keys), (v, values)):  # (B, T, Hkv·D) → (B, Hkv, T, D)
            out.append(b.one("Transpose", [b.one("Reshape", [own, heads_shape])],
                             perm=[0, 2, 1, 3]))
        if index + 1 == len(layers) and not last_mlp:  # only its keys/values are wanted
            return None, keys, values
        if isinstance(past_keys, str):  # one stacked input: this layer's slice (a copy)
            past_k = b.one("Gather", [past_keys, layer], axis=0)
            past_v = b.one("Gather", [past_values, layer], axis=0)
            presents: int | list[str] = 3
        else:  # the layer's own buffers, shared with its present outputs
            past_k, past_v = past_keys[index], past_values[index]
            presents = [b.name("attended"), f"present_key_{index}", f"present_value_{index}"]
        attended = b.node(
            "GroupQueryAttention",
            [q, k, v, past_k, past_v, seqlens, total32, "", "", "", bias], presents,
            domain=MS, num_heads=H, kv_num_heads=Hkv, causal=int(causal), do_rotary=0)[0]
        projected = _q4_matmul(b, attended, proj, sums, levels["proj"])
        mlp_norm = b.copy(next(norms))
        normed, _, _, residual = b.node(
            "SkipSimplifiedLayerNormalization", [projected, residual, mlp_norm], 4,
            domain=MS, epsilon=source.eps)
        gated = _q4_matmul(b, normed, gate, sums, levels["gate"])
        silu = b.one("Mul", [gated, b.one("Sigmoid", [gated])])
        hidden = b.one("Mul", [silu, _q4_matmul(b, normed, up, sums, levels["up"])])
        pending = _q4_matmul(b, hidden, down, sums, levels["down"])
    final = b.copy(next(norms))
    outputs = b.node("SkipSimplifiedLayerNormalization", [pending, residual, final],
                     4 if wanted_last else 1, domain=MS, epsilon=source.eps)
    if wanted_last:
        states[len(layers)] = outputs[3]
    return outputs[0], keys, values


def _features(b: _Builder, states: dict[int, str], layers, n_layers: int, what: str) -> str:
    """The `FEATURES` output: the streams of `layers`, in that order, concatenated."""
    missing = [layer for layer in layers if layer not in states]
    if missing:
        last = n_layers if what == "decoder" else n_layers - 1  # the encoder's last block: k/v
        raise GraphShapeError(f"the {what} has no residual stream after block(s) {missing}: "
                              f"layers 0..{last}")
    b.node("Concat", [states[layer] for layer in layers], [FEATURES], axis=-1)
    return FEATURES


def _feature_output(layers, d_model: int, length: str):
    from onnx import TensorProto, helper

    return helper.make_tensor_value_info(FEATURES, TensorProto.FLOAT,
                                         ["batch", length, len(layers) * d_model])


MATRICES = ("qkv", "proj", "gate", "up", "down")  # a layer's 4-bit matrices, by role


def _levels(level: int | None, mlp_level: int | None,
            matrix_levels: dict[str, int] | None = None) -> dict[str, int | None]:
    """Accuracy level per matrix role: `level`, the MLP's `mlp_level` where given, then
    `matrix_levels`' own (role → level)."""
    levels = {role: level for role in MATRICES}
    if mlp_level is not None:
        levels.update(gate=mlp_level, up=mlp_level, down=mlp_level)
    unknown = set(matrix_levels or {}) - set(MATRICES)
    if unknown:
        raise ValueError(f"no matrix role {sorted(unknown)}: roles are {', '.join(MATRICES)}")
    levels.update(matrix_levels or {})
    return levels


def parse_matrix_levels(text: str | None) -> dict[str, int]:
    """"qkv=4,down=0" → {"qkv": 4, "down": 0}."""
    levels = {}
    for part in filter(None, (text or "").split(",")):
        role, _, level = part.partition("=")
        levels[role.strip()] = int(level)
    _levels(None, None, levels)  # validates the roles
    return levels


def _stack(b: _Builder, per_layer: list[str], output: str) -> None:
    """(B, H, T, D) per layer → `output` (L, B, H, T, D)."""
    axis = b.const(np.array([0], np.int64))
    b.node("Concat", [b.one("Unsqueeze", [t, axis]) for t in per_layer], [output], axis=0)


def _model(b: _Builder, inputs, outputs, opset_from, props: dict[str, str] | None = None):
    from onnx import helper

    graph = helper.make_graph(b.nodes, "fused", inputs, outputs,
                              initializer=list(b.inits.values()))
    opsets = [helper.make_opsetid("", max(op.version for op in opset_from.opset_import
                                          if op.domain in ("", "ai.onnx"))),
              helper.make_opsetid(MS, 1)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="dlm-lsp fused")
    model.ir_version = opset_from.ir_version
    if props:
        helper.set_model_props(model, props)
    return model


def fuse_decoder(old, card, accuracy_level: int | None = None, buffers: bool = False,
                 mlp_accuracy_level: int | None = None,
                 matrix_levels: dict[str, int] | None = None, features=()):
    """The fused decoder (onnx ModelProto) from the exported q4 decoder `old`: the
    contract's inputs, or with `buffers` per-layer key/value buffers instead of `keys` and
    `values` (`past_key_{l}`/`past_value_{l}` (1, H, capacity, D), the first S positions the
    context's, shared with the outputs `present_key_{l}`/`present_value_{l}`: the call
    writes the canvas's keys/values at S.., and copies no cache). `accuracy_level`: the
    4-bit matrices' MatMulNBits accuracy level (None: as exported), `mlp_accuracy_level`
    the MLP's, when it differs, `matrix_levels` single roles' (`MATRICES`). `features`: the
    layers of the `FEATURES` output (none: no such output)."""
    from onnx import TensorProto, helper

    source = _Source(old, card.n_layers)
    b = _Builder(source)
    ids, positions, keys, values, context_mask = modelcard.DECODER_INPUTS
    canvas_mask = modelcard.CANVAS_MASK
    x = _embed(b, ids)
    bias = _attention_bias(b, [context_mask, canvas_mask], ids)
    L = card.n_layers
    past_keys = [f"past_key_{i}" for i in range(L)] if buffers else keys
    past_values = [f"past_value_{i}" for i in range(L)] if buffers else values
    states: dict[int, str] | None = {} if features else None
    hidden, own_keys, own_values = _body(
        b, card, x, positions, past_keys, past_values, _dim(b, context_mask, 1), bias,
        card.canvas_attention == "causal",
        _levels(accuracy_level, mlp_accuracy_level, matrix_levels), True,
        card.max_position, states)
    if features:
        _features(b, states, features, card.n_layers, "decoder")
    if source.head is None:
        raise GraphShapeError("no 8-bit tied head in the decoder")
    head, _ = source.head
    attrs = {a.name: helper.get_attribute_value(a) for a in head.attribute}
    rows = "canvas"
    read_ids = ids
    if buffers:  # the head (a third of a 1-token call's bytes) runs on the rows asked only
        rows = "rows"
        hidden = b.one("Gather", [hidden, modelcard.PREDICT_ROWS], axis=1)
        read_ids = b.one("Gather", [ids, modelcard.PREDICT_ROWS], axis=1)
    logits = b.one("MatMulNBits", [hidden, *(b.copy(n) for n in head.input[1:4])], domain=MS,
                   **attrs)
    banned = b.copy("banned_bias")
    b.node("Add", [logits, banned], [modelcard.LOGITS])
    probs = b.one("Softmax", [modelcard.LOGITS], axis=-1)
    b.node("ArgMax", [modelcard.LOGITS], ["pred_ids"], axis=-1, keepdims=0)
    b.node("ReduceMax", [probs, b.const(np.array([-1], np.int64))], ["pred_prob"], keepdims=0)
    picked = b.one("GatherElements", [probs, b.one("Unsqueeze", [read_ids, b.const(
        np.array([-1], np.int64))])], axis=-1)
    b.node("Squeeze", [picked, b.const(np.array([-1], np.int64))], ["canvas_prob"])
    _stack(b, own_keys, CANVAS_KEYS)
    _stack(b, own_values, CANVAS_VALUES)
    Hkv, D = card.kv_heads, card.head_dim
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    inputs = [helper.make_tensor_value_info(ids, i64, ["batch", "canvas"]),
              helper.make_tensor_value_info(positions, i64, ["batch", "canvas"]),
              helper.make_tensor_value_info(keys, f32, [L, "batch", Hkv, "context", D]),
              helper.make_tensor_value_info(values, f32, [L, "batch", Hkv, "context", D]),
              helper.make_tensor_value_info(context_mask, i64, ["batch", "context"]),
              helper.make_tensor_value_info(canvas_mask, TensorProto.BOOL,
                                            ["batch", "canvas"])]
    presents = []
    if buffers:
        inputs = [i for i in inputs if i.name not in (keys, values)]
        inputs.append(helper.make_tensor_value_info(modelcard.PREDICT_ROWS, i64, ["rows"]))
        for kind in ("key", "value"):
            inputs += [helper.make_tensor_value_info(f"past_{kind}_{i}", f32,
                                                     [1, Hkv, "capacity", D]) for i in range(L)]
            presents += [helper.make_tensor_value_info(f"present_{kind}_{i}", f32,
                                                       [1, Hkv, "capacity", D])
                         for i in range(L)]
    outputs = [helper.make_tensor_value_info("pred_ids", i64, ["batch", rows]),
               helper.make_tensor_value_info("pred_prob", f32, ["batch", rows]),
               helper.make_tensor_value_info("canvas_prob", f32, ["batch", rows]),
               helper.make_tensor_value_info(modelcard.LOGITS, f32,
                                             ["batch", rows, card.vocab_size]),
               helper.make_tensor_value_info(CANVAS_KEYS, f32, [L, "batch", Hkv, "canvas", D]),
               helper.make_tensor_value_info(CANVAS_VALUES, f32,
                                             [L, "batch", Hkv, "canvas", D])] + presents
    if features:
        outputs.append(_feature_output(features, card.n_heads * D, "canvas"))
    return _model(b, inputs, outputs, old, {modelcard.ROWS_PER_CALL: "1"})


def fuse_encoder(old, card, accuracy_level: int | None = None,
                 mlp_accuracy_level: int | None = None, features=()):
    """The fused causal encoder (onnx ModelProto) from the exported q4 encoder `old`;
    `features` as `fuse_decoder`'s (the encoder runs its last block's keys/values only, so
    layers 0..L-1)."""
    from onnx import TensorProto, helper

    if not card.causal:
        raise GraphShapeError("only a causal encoder is fused (a bidirectional one has no past)")
    source = _Source(old, card.n_layers)
    b = _Builder(source)
    ids, positions, mask = modelcard.ENCODER_INPUTS
    past_keys, past_values, past_mask = modelcard.PAST_INPUTS
    x = _embed(b, ids)
    bias = _attention_bias(b, [past_mask, mask], ids)
    states: dict[int, str] | None = {} if features else None
    _, own_keys, own_values = _body(b, card, x, positions, past_keys, past_values,
                                    _dim(b, past_mask, 1), bias, True,
                                    _levels(accuracy_level, mlp_accuracy_level), False,
                                    card.max_position, states)
    if features:
        _features(b, states, features, card.n_layers, "encoder")
    _stack(b, own_keys, modelcard.ENCODER_OUTPUTS[0])
    _stack(b, own_values, modelcard.ENCODER_OUTPUTS[1])
    L, Hkv, D = card.n_layers, card.kv_heads, card.head_dim
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    inputs = [helper.make_tensor_value_info(name, i64, ["batch", "context"])
              for name in modelcard.ENCODER_INPUTS]
    inputs += [helper.make_tensor_value_info(past_keys, f32, [L, "batch", Hkv, "past", D]),
               helper.make_tensor_value_info(past_values, f32, [L, "batch", Hkv, "past", D]),
               helper.make_tensor_value_info(past_mask, i64, ["batch", "past"])]
    outputs = [helper.make_tensor_value_info(name, f32, [L, "batch", Hkv, "context", D])
               for name in modelcard.ENCODER_OUTPUTS]
    if features:
        outputs.append(_feature_output(features, card.n_heads * D, "context"))
    return _model(b, inputs, outputs, old)


def fuse_graphs(model_dir: Path, encoder: str, decoder: str, out_encoder: str,
                out_decoder: str, accuracy_level: int | None = None,
                decoder_mlp_accuracy_level: int | None = None,
                log: Callable[[str], None] = print, buffers: bool = True,
                decoder_matrix_levels: dict[str, int] | None = None, features=()) -> dict:
    """Write the fused pair next to the exported q4 pair in `model_dir` (same weights file,
    unchanged); returns node counts. `accuracy_level` (None: as exported) for both graphs'
    4-bit matrices, `decoder_mlp_accuracy_level` for the decoder's MLP matrices when it
    differs (the decoder's calls are small and its MLP two thirds of the weights; prefill
    and the context's keys/values keep the encoder's level), `decoder_matrix_levels` single
    roles' in the decoder (e.g. {"down": 0}). The decoder takes per-layer
    key/value buffers (`buffers`, what the runtime binds: no cache copied per call), or the
    contract's stacked `keys`/`values`. `features`: the layers of both graphs' `FEATURES`
    output (a drafter's target layers; none: no such output). `out_encoder` the same name
    as `out_decoder` (buffers only): one graph, the decoder, both encodes and decodes
    (`PREDICT_ROWS`); no encoder is written."""
    import onnx

    from dlm_lsp.modelcard import load_card

    one_graph = out_encoder == out_decoder
    if one_graph and not buffers:
        raise ValueError("one graph for encoder and decoder needs the buffered decoder")
    card = load_card(model_dir)
    if one_graph and card.canvas_attention != "causal":
        # a bidirectional canvas would let a piece of context see the tokens after it
        raise ValueError("one graph for encoder and decoder needs a causal canvas")
    report = {}
    jobs = [(encoder, out_encoder, fuse_encoder, {})] if not one_graph else []
    for src, dst, fuse, extra in (
            *jobs,
            (decoder, out_decoder, fuse_decoder,
             {"mlp_accuracy_level": decoder_mlp_accuracy_level, "buffers": buffers,
              "matrix_levels": decoder_matrix_levels})):
        old = onnx.load(str(model_dir / src), load_external_data=False)
        new = fuse(old, card, accuracy_level, features=features, **extra)
        onnx.save(new, str(model_dir / dst))
        report[dst] = {"nodes_before": len(old.graph.node), "nodes_after": len(new.graph.node)}
        log(f"{src} → {dst}: {len(old.graph.node)} → {len(new.graph.node)} nodes")
    return report


def one_graph_encoder(model_dir: Path, decoder: str) -> str:
    """The encoder file to fuse for a model directory: the decoder itself (one graph) when
    its canvas is causal, as a context is; else a separate encoder."""
    from dlm_lsp.modelcard import load_card

    return decoder if load_card(model_dir).canvas_attention == "causal" else "encoder.fused.onnx"


def add_fuse_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", help="a model directory with exported q4 graphs")
    p.add_argument("--encoder", default="encoder.q4.onnx")
    p.add_argument("--decoder", default="decoder.q4.onnx")
    p.add_argument("--out-encoder", default=None,
                   help="the fused encoder's file; the decoder's own name (the default for a "
                   "causal canvas): no encoder, the buffered decoder encodes too (one session, "
                   "one copy of the prepacked weights); else encoder.fused.onnx")
    p.add_argument("--out-decoder", default="decoder.fused.onnx")
    p.add_argument("--accuracy-level", type=int, default=None, choices=[0, 1, 2, 3, 4],
                   help="MatMulNBits accuracy level of the 4-bit matrices (default: as exported)")
    p.add_argument("--decoder-mlp-accuracy-level", type=int, default=None, choices=[0, 1, 2, 3, 4],
                   help="the decoder's gate/up/down matrices' level, when it differs")
    p.add_argument("--decoder-levels", default=None,
                   help="single roles' levels in the decoder, e.g. qkv=4,proj=4,gate=4,up=4,down=0 "
                   "(roles: " + ", ".join(MATRICES) + ")")
    p.add_argument("--features", default="",
                   help="target layers (e.g. 2,21,29; 'card': the card's drafter block's "
                   "target_layers) whose residual streams both graphs also output as "
                   "'features' (B, T, K*d), for a drafter; default: no such output")
    p.add_argument("--ship", action="store_true",
                   help="make the fused pair the card's CPU graphs (graphs.cpu in model.json)")


def ship(model_dir: Path, encoder: str, decoder: str, note: dict | None = None) -> None:
    """Make `encoder`/`decoder` the card's CPU graphs (model.json `graphs.cpu`), recording
    `note` under `export.fused`."""
    path = model_dir / "model.json"
    raw = json.loads(path.read_text())
    raw["graphs"]["cpu"] = {"encoder": encoder, "decoder": decoder, "dtype": "float32"}
    if note is not None:
        old = raw.setdefault("export", {}).get("fused") or {}
        if "note" in old and "note" not in note:  # a hand-written word on where they came from
            note = {**note, "note": old["note"]}
        raw["export"]["fused"] = note
    path.write_text(json.dumps(raw, indent=2, ensure_ascii=False) + "\n")


def feature_layers(value: str, model_dir: Path) -> list[int]:
    """`--features`: a comma-separated layer list, or "card" (the card's drafter's)."""
    if value.strip() == "card":
        from dlm_lsp.modelcard import load_card

        drafter = load_card(model_dir).drafter
        if drafter is None or not drafter.target_layers:
            raise SystemExit(f"{model_dir}/model.json has no drafter with target_layers")
        return list(drafter.target_layers)
    return [int(x) for x in value.split(",") if x.strip()]


def main_from_args(args) -> int:
    model_dir = Path(args.model_dir)
    if args.out_encoder is None:
        args.out_encoder = one_graph_encoder(model_dir, args.out_decoder)
    matrix_levels = parse_matrix_levels(args.decoder_levels)
    features = feature_layers(args.features, model_dir)
    report = fuse_graphs(model_dir, args.encoder, args.decoder, args.out_encoder,
                         args.out_decoder, args.accuracy_level, args.decoder_mlp_accuracy_level,
                         decoder_matrix_levels=matrix_levels or None, features=features)
    if args.ship:
        note = {"from": [args.encoder, args.decoder], "accuracy_level": args.accuracy_level,
                "decoder_mlp_accuracy_level": args.decoder_mlp_accuracy_level,
                "decoder_matrix_levels": matrix_levels or None, "buffers": True,
                "nodes": report}
        if features:
            note["features"] = features
        ship(model_dir, args.out_encoder, args.out_decoder, note)
    print(json.dumps(report))
    return 0


class EncodingDecoder:
    """A one-graph decoder session (buffered, with `PREDICT_ROWS`) seen as an encoder
    session, for tools and tests that run graphs directly: `run(names, encoder feeds)` gives
    the encoder contract's `keys`/`values` (L, B, H, S, D) of the new tokens (and `FEATURES`
    when the graph has them), each row's (its `attention_mask`'s, right-padded) written after
    its visible past by one decoder call that predicts nothing. The server's own path is
    `OnnxDenoiser` (pieces straight into a `KVStore`)."""

    def __init__(self, sess) -> None:
        self.sess = sess
        self.features = FEATURES in {o.name for o in sess.get_outputs()}

    def get_outputs(self):
        return [o for o in self.sess.get_outputs() if o.name == FEATURES]

    def get_inputs(self):
        """The encoder contract's inputs (name, shape, type), as an encoder session's."""
        from types import SimpleNamespace

        buffers = [i for i in self.sess.get_inputs() if i.name.startswith("past_key_")]
        _, H, _, D = buffers[0].shape
        ids = [SimpleNamespace(name=n, shape=["batch", "context"], type="tensor(int64)")
               for n in modelcard.ENCODER_INPUTS]
        kv = [SimpleNamespace(name=n, shape=[len(buffers), "batch", H, "past", D],
                              type=buffers[0].type) for n in modelcard.PAST_INPUTS[:2]]
        mask = SimpleNamespace(name=modelcard.PAST_INPUTS[2], shape=["batch", "past"],
                               type="tensor(int64)")
        return [*ids, *kv, mask]

    def run(self, names, feeds):
        import onnxruntime as ort

        ids, positions, mask = (np.asarray(feeds[n]) for n in modelcard.ENCODER_INPUTS)
        past_keys, past_values, past_mask = (np.asarray(feeds[n]) for n in modelcard.PAST_INPUTS)
        L, B, H, _, D = past_keys.shape
        out = {"keys": np.zeros((L, B, H, ids.shape[1], D), np.float32)}
        out["values"] = np.zeros_like(out["keys"])
        rows_features = []
        for row in range(B):
            n = int(mask[row].sum())
            seen = np.flatnonzero(past_mask[row])
            P = seen.size
            buffers = {kind: np.zeros((L, 1, H, P + n + 1, D), np.float32)
                       for kind in ("key", "value")}
            buffers["key"][:, 0, :, :P] = past_keys[:, row][:, :, seen]
            buffers["value"][:, 0, :, :P] = past_values[:, row][:, :, seen]
            binding = self.sess.io_binding()
            for name, value in ((modelcard.DECODER_INPUTS[0], ids[row : row + 1, :n]),
                                (modelcard.DECODER_INPUTS[1], positions[row : row + 1, :n]),
                                (modelcard.DECODER_INPUTS[4], np.ones((1, P), np.int64)),
                                (modelcard.CANVAS_MASK, np.ones((1, n), bool)),
                                (modelcard.PREDICT_ROWS, np.zeros(0, np.int64))):
                binding.bind_cpu_input(name, np.ascontiguousarray(value, dtype=value.dtype))
            if self.features:
                binding.bind_output(FEATURES, "cpu")
            for layer in range(L):
                for kind, buffer in buffers.items():
                    value = ort.OrtValue.ortvalue_from_numpy(buffer[layer])
                    binding.bind_ortvalue_input(f"past_{kind}_{layer}", value)
                    binding.bind_ortvalue_output(f"present_{kind}_{layer}", value)
            self.sess.run_with_iobinding(binding)
            out["keys"][:, row, :, :n] = buffers["key"][:, 0, :, P : P + n]
            out["values"][:, row, :, :n] = buffers["value"][:, 0, :, P : P + n]
            if self.features:
                rows_features.append(binding.get_outputs()[0].numpy())
        if self.features:
            width = rows_features[0].shape[-1]
            out[FEATURES] = np.zeros((B, ids.shape[1], width), np.float32)
            for row, got in enumerate(rows_features):
                out[FEATURES][row, : got.shape[1]] = got[0]
        return [out[name] for name in (names or ["keys", "values"])]


def encoder_session(model_dir: Path, files, threads: int = 1):
    """The encoder of a card's graph variant `files` (GraphFiles) as a session to run
    directly: its encoder graph, or the one graph's decoder seen as one (`EncodingDecoder`)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    name = files.decoder if files.one_graph else files.encoder
    sess = ort.InferenceSession(str(Path(model_dir) / name), options,
                                providers=["CPUExecutionProvider"])
    return EncodingDecoder(sess) if files.one_graph else sess
