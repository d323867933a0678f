"""The trained DFlash drafter (model_export/drafter.py) as its own ONNX graph: `export-drafter`.

One call drafts one block from the drafter's cached context::

    features[1,N,K·d]              the target's FEATURES of the N context positions not yet in
    feature_position_ids[1,N]      the drafter's cache (N may be 0), and their positions
    past_drafter_keys[n,1,H,P,D]   the cache: every earlier context position's keys/values
    past_drafter_values[n,1,H,P,D]   in each drafter layer (P may be 0)
    anchor_ids[1,1]                the block's anchor (the last committed token) ...
    anchor_position_ids[1,1]       ... and its position; the block is anchor+0..B-1
      → draft_ids[1,B-1]           the guesses (argmax, banned tokens never) ...
        draft_prob[1,B-1]          ... and their probabilities
        drafter_keys[n,1,H,N,D]    the N new positions' keys/values, to append to the cache
        drafter_values[n,1,H,N,D]

A context position's key/value in a drafter layer depends on that position's features only
(`ContextFusion`, the layer's key/value projection, RoPE at its position), so caching them is
exact: a caller extends the cache by the accepted positions of each check, as the target's.
The block's queries see every cached and new context position and the whole block,
bidirectionally (the caller hands over context before the anchor only).

The embedding (anchor row), the final norm and the tied head are the target's: the graph
references the same tensors of the model directory's weights file that the target's decoder
reads (`embed_q8_0` and its scales through the same external-data entries, the 8-bit head
`MatMulNBits`, the final norm weight, the banned-token bias), so the weights file does not
change by a byte and the directory grows by the drafter's own weights, stored in the graph as
float16 (cast to float32 when the session loads). Attention is plain MatMul/Softmax (8 queries:
GroupQueryAttention's causal kernel has no bidirectional block over a past); the norms and
the rotary embedding are ONNX Runtime's fused kernels, as in the target's graphs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from dlm_lsp import modelcard

from .fused import MS, GraphShapeError, _Builder

DRAFTER_GRAPH = "drafter.onnx"
FEATURES, FEATURE_POSITIONS, PAST_KEYS, PAST_VALUES, ANCHOR_IDS, ANCHOR_POSITIONS = \
    modelcard.DRAFTER_INPUTS
DRAFT_IDS, DRAFT_PROB, DRAFTER_KEYS, DRAFTER_VALUES = modelcard.DRAFTER_OUTPUTS
KIND = ("DFlash block drafter (Chen, Liang, Liu 2026, arXiv 2602.06036): reads the target's "
        "residual streams of target_layers, guesses block_size-1 tokens after the anchor in "
        "one pass; the target's embedding, final norm and head, shared")
LOSSLESS = "the target checks every draft in one causal call; the text is its greedy text"


class _TargetTensors:
    """The target decoder's tensors the drafter shares, found by structure: the 8-bit head
    (the one `MatMulNBits` of 8 bits), the final norm before it, the Q8_0 embedding table and
    its row scales, the banned-token bias added to the logits."""

    def __init__(self, decoder) -> None:
        graph = decoder.graph
        self.inits = {init.name: init for init in graph.initializer}
        self.producer = {out: node for node in graph.node for out in node.output}
        heads = [n for n in graph.node if n.op_type == "MatMulNBits"
                 and any(a.name == "bits" and a.i == 8 for a in n.attribute)]
        if len(heads) != 1:
            raise GraphShapeError(f"{len(heads)} 8-bit matrices: not a fused q4 decoder")
        self.head = heads[0]
        norm = self.producer.get(self.head.input[0])
        if norm is not None and norm.op_type == "Gather":  # the rows asked (PREDICT_ROWS)
            norm = self.producer.get(norm.input[0])
        if norm is None or norm.op_type != "SkipSimplifiedLayerNormalization":
            raise GraphShapeError("the head does not read a final RMSNorm")
        self.norm_weight = norm.input[2]
        self.eps = next(a.f for a in norm.attribute if a.name == "epsilon")
        added = [n for n in graph.node if n.op_type == "Add" and n.output[0] == modelcard.LOGITS]
        self.banned = next((name for n in added for name in n.input
                            if name != self.head.output[0]), None)
        for name in ("embed_q8_0", "embed_q8_0_row_scale"):
            if name not in self.inits and name not in self.producer:
                raise GraphShapeError(f"no {name} in the decoder (a Q8_0 embedding)")


def _weight(b: _Builder, array: np.ndarray, name: str) -> str:
    """A drafter weight stored as float16 in the graph, read as float32 (ONNX Runtime folds
    the Cast when it loads the session)."""
    from onnx import numpy_helper

    stored = f"drafter.{name}"
    b.inits[stored] = numpy_helper.from_array(np.asarray(array, np.float16), stored)
    return b.one("Cast", [stored], to=1, stem=f"{name}_f32")


def drafter_graph(drafter, decoder, card, max_position: int | None = None,
                  head_accuracy_level: int | None = None):
    """The drafter's ONNX graph (ModelProto) for `drafter` (a `Drafter`, float weights) over
    the target's fused decoder `decoder` (a ModelProto loaded without external data, from the
    same model directory): its shared tensors keep their external-data entries.
    `head_accuracy_level`: the head's MatMulNBits accuracy level (None: the decoder's, int8
    activations in the shipped one; 0, float32, lets a test compare with torch exactly)."""
    from onnx import TensorProto, helper

    from .model import Rotary

    cfg = drafter.cfg
    source = _TargetTensors(decoder)
    b = _Builder(source)
    d, H, Hkv, D = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    group, L, n_layers = H // Hkv, cfg.block_size, cfg.n_layers
    K = len(cfg.target_layers)
    state = {k: v.detach().float().numpy() for k, v in drafter.state_dict().items()}
    i64 = lambda *v: b.const(np.array(v, np.int64))  # noqa: E731

    # rotary caches (max_position, D/2) from the drafter's own frequencies (torch's, exactly)
    inv_freq = Rotary(D, cfg.rope_base).inv_freq.numpy()
    steps = b.one("Range", [b.const(np.array(0.0, np.float32)),
                            b.const(np.array(float(max_position or card.max_position),
                                             np.float32)),
                            b.const(np.array(1.0, np.float32))])
    angles = b.one("Mul", [b.one("Unsqueeze", [steps, i64(1)]), b.const(inv_freq)])
    cos, sin = b.one("Cos", [angles]), b.one("Sin", [angles])

    def rope(x: str, positions: str) -> str:  # (1, T, heads·D) at positions (1, T)
        return b.one("RotaryEmbedding", [x, positions, cos, sin], domain=MS)

    def heads(x: str, count: int) -> str:  # (1, T, count·D) → (1, count, T, D)
        return b.one("Transpose", [b.one("Reshape", [x, i64(0, 0, count, D)])],
                     perm=[0, 2, 1, 3])

    def norm(x: str, weight: str, eps: float) -> str:
        return b.one("SimplifiedLayerNormalization", [x, weight], axis=-1, epsilon=eps)

    def matmul(x: str, name: str) -> str:  # x · Wᵀ of the nn.Linear `name`
        return b.one("MatMul", [x, _weight(b, state[name].T, name)])

    eps = cfg.norm_eps
    # the new context positions: fused, then each layer's keys (rotated) and values
    context = norm(matmul(FEATURES, "fusion.fc.weight"),
                   _weight(b, state["fusion.norm.weight"], "fusion.norm.weight"), eps)
    qkv_weights, new_keys, new_values = [], [], []
    for index in range(n_layers):
        name = f"layers.{index}.attn.qkv.weight"
        weight = _weight(b, state[name].T, name)  # (d, (H+2Hkv)·D)
        qkv_weights.append(weight)
        kv = b.one("MatMul", [context, b.one("Slice", [weight, i64(H * D), i64((H + 2 * Hkv) * D),
                                                       i64(1)])])
        k, v = b.node("Split", [kv, i64(Hkv * D, Hkv * D)], 2, axis=-1)
        new_keys.append(heads(rope(k, FEATURE_POSITIONS), Hkv))
        new_values.append(heads(v, Hkv))
    for per_layer, output in ((new_keys, DRAFTER_KEYS), (new_values, DRAFTER_VALUES)):
        b.node("Concat", [b.one("Unsqueeze", [t, i64(0)]) for t in per_layer], [output], axis=0)

    # the block [anchor, mask x L-1] at anchor + 0..L-1
    table, row_scale = b.copy("embed_q8_0"), b.copy("embed_q8_0_row_scale")
    q8 = b.one("Cast", [b.one("Gather", [table, ANCHOR_IDS])], to=1)
    anchor = b.one("Reshape", [b.one("Mul", [b.one("Sub", [q8, b.const(np.array(
        128.0, np.float32))]), b.one("Gather", [row_scale, ANCHOR_IDS])]), i64(1, 1, d)])
    masks = b.one("Expand", [b.one("Reshape", [_weight(b, state["mask_embedding"],
                                                       "mask_embedding"), i64(1, 1, d)]),
                             i64(1, L - 1, d)])
    x = b.one("Concat", [anchor, masks], axis=1)  # (1, L, d)
    positions = b.one("Add", [ANCHOR_POSITIONS, i64(*range(L))])  # (1, L)
    scale = b.const(np.array(D ** -0.5, np.float32))
    pending = None
    for index in range(n_layers):
        prefix = f"layers.{index}"
        attn_norm = _weight(b, state[f"{prefix}.attn_norm.weight"], f"{prefix}.attn_norm.weight")
        if pending is None:
            normed = norm(x, attn_norm, eps)
        else:
            normed, _, _, x = b.node("SkipSimplifiedLayerNormalization",
                                     [pending, x, attn_norm], 4, domain=MS, epsilon=eps)
        qkv = b.one("MatMul", [normed, qkv_weights[index]])
        q, k, v = b.node("Split", [qkv, i64(H * D, Hkv * D, Hkv * D)], 3, axis=-1)
        # grouped queries: the `group` heads sharing key/value head j attend as one head of
        # group·L queries (Attention.group_queries), so keys/values are never repeated
        q = b.one("Reshape", [heads(rope(q, positions), H), i64(1, Hkv, group * L, D)])
        layer = b.const(np.array(index, np.int64))  # a scalar: Gather drops the axis
        keys = b.one("Concat", [b.one("Gather", [PAST_KEYS, layer], axis=0), new_keys[index],
                                heads(rope(k, positions), Hkv)], axis=2)  # (1, Hkv, P+N+L, D)
        values = b.one("Concat", [b.one("Gather", [PAST_VALUES, layer], axis=0),
                                  new_values[index], heads(v, Hkv)], axis=2)
        scores = b.one("MatMul", [b.one("Mul", [q, scale]),
                                  b.one("Transpose", [keys], perm=[0, 1, 3, 2])])
        attended = b.one("MatMul", [b.one("Softmax", [scores], axis=-1), values])
        attended = b.one("Reshape", [b.one("Transpose", [b.one("Reshape", [
            attended, i64(1, H, L, D)])], perm=[0, 2, 1, 3]), i64(1, L, H * D)])
        projected = matmul(attended, f"{prefix}.attn.proj.weight")
        mlp_norm = _weight(b, state[f"{prefix}.mlp_norm.weight"], f"{prefix}.mlp_norm.weight")
        normed, _, _, x = b.node("SkipSimplifiedLayerNormalization", [projected, x, mlp_norm],
                                 4, domain=MS, epsilon=eps)
        gated = matmul(normed, f"{prefix}.mlp.gate.weight")
        hidden = b.one("Mul", [b.one("Mul", [gated, b.one("Sigmoid", [gated])]),
                               matmul(normed, f"{prefix}.mlp.up.weight")])
        pending = matmul(hidden, f"{prefix}.mlp.down.weight")
    x = b.one("Add", [pending, x])
    guessed = b.one("Slice", [x, i64(1), i64(L), i64(1)])  # (1, L-1, d): positions 1..L-1
    # the target's final norm and tied 8-bit head, as its decoder runs them
    final = norm(guessed, b.copy(source.norm_weight), source.eps)
    attrs = {a.name: helper.get_attribute_value(a) for a in source.head.attribute}
    if head_accuracy_level is not None:
        attrs["accuracy_level"] = head_accuracy_level
    logits = b.one("MatMulNBits", [final, *(b.copy(n) for n in source.head.input[1:4])],
                   domain=MS, **attrs)
    if source.banned is not None:
        logits = b.one("Add", [logits, b.copy(source.banned)])
    b.node("ArgMax", [logits], [DRAFT_IDS], axis=-1, keepdims=0)
    b.node("ReduceMax", [b.one("Softmax", [logits], axis=-1), i64(-1)], [DRAFT_PROB],
           keepdims=0)

    f32, i64t = TensorProto.FLOAT, TensorProto.INT64
    cache = [n_layers, 1, Hkv, "past", D]
    inputs = [helper.make_tensor_value_info(FEATURES, f32, [1, "new", K * d]),
              helper.make_tensor_value_info(FEATURE_POSITIONS, i64t, [1, "new"]),
              helper.make_tensor_value_info(PAST_KEYS, f32, cache),
              helper.make_tensor_value_info(PAST_VALUES, f32, cache),
              helper.make_tensor_value_info(ANCHOR_IDS, i64t, [1, 1]),
              helper.make_tensor_value_info(ANCHOR_POSITIONS, i64t, [1, 1])]
    new = [n_layers, 1, Hkv, "new", D]
    outputs = [helper.make_tensor_value_info(DRAFT_IDS, i64t, [1, L - 1]),
               helper.make_tensor_value_info(DRAFT_PROB, f32, [1, L - 1]),
               helper.make_tensor_value_info(DRAFTER_KEYS, f32, new),
               helper.make_tensor_value_info(DRAFTER_VALUES, f32, new)]
    graph = helper.make_graph(b.nodes, "drafter", inputs, outputs,
                              initializer=list(b.inits.values()))
    opset = max(op.version for op in decoder.opset_import if op.domain in ("", "ai.onnx"))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                    helper.make_opsetid(MS, 1)],
                              producer_name="dlm-lsp drafter")
    model.ir_version = decoder.ir_version
    helper.set_model_props(model, {"dlm.target_layers": ",".join(map(str, cfg.target_layers)),
                                   "dlm.block_size": str(L)})
    return model


def load_drafter(checkpoint: Path):
    """(Drafter in float32, eval, the checkpoint's dict) from a `train-drafter` checkpoint."""
    import torch

    from .drafter import Drafter, DrafterConfig

    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    drafter = Drafter(DrafterConfig.from_dict(state["config"]))
    drafter.load_state_dict(state["drafter"])
    return drafter.float().eval(), state


def curve_point(checkpoint: Path, state: dict, curve: Path | None = None) -> dict | None:
    """The validation point `train-drafter` recorded for this checkpoint (curve.jsonl beside
    it, the step's own point), if any."""
    curve = curve or checkpoint.with_name("curve.jsonl")
    if not curve.is_file():
        return None
    points = [json.loads(line) for line in curve.read_text().splitlines() if line.strip()]
    points = [p for p in points if p.get("step") == state.get("step")]
    return points[-1] if points else None


def drafter_block(drafter, state: dict, graph: str, point: dict | None,
                  old: dict | None) -> dict:
    """The card's `drafter` block for an exported feature drafter; the prompt-lookup block it
    replaces (and its measured numbers) is kept under `prompt_lookup`."""
    cfg = drafter.cfg
    block = {"kind": KIND, "graph": graph, "target_layers": list(cfg.target_layers),
             "block_size": cfg.block_size, "n_layers": cfg.n_layers,
             "params": drafter.num_params(), "trained": True,
             "training_tokens": int(state.get("tokens_seen", 0)),
             "training_minutes": round(float(state.get("train_seconds", 0.0)) / 60, 1),
             "training_steps": int(state.get("step", 0)),
             "labels": state.get("labels", "greedy"),
             "lossless": LOSSLESS}
    if point is not None:
        block["tau"] = {key: point[key] for key in point
                        if key.startswith("tau_") or key in ("accept_rate_drafter", "cursors",
                                                             "new_tokens")}
        block["tau"]["measured_by"] = ("train-drafter's validation replay (torch, bf16 target) "
                                       f"at step {point['step']}, {point.get('time', '')}")
    if old and not old.get("graph"):
        block["prompt_lookup"] = {k: v for k, v in old.items() if k != "lossless"}
    elif old and "prompt_lookup" in old:  # a drafter exported again
        block["prompt_lookup"] = old["prompt_lookup"]
    return block


def export_drafter(checkpoint: Path, model_dir: Path, graph: str = DRAFTER_GRAPH,
                   curve: Path | None = None, write_card: bool = True,
                   head_accuracy_level: int | None = None) -> dict:
    """Write `graph` into `model_dir` (beside the target's fused graphs, reading their weights
    file) and, with `write_card`, the card's drafter block. Returns what it wrote."""
    import onnx

    from dlm_lsp.modelcard import load_card

    card = load_card(model_dir)
    decoder = onnx.load(str(card.path(card.graphs["cpu"].decoder)), load_external_data=False)
    drafter, state = load_drafter(checkpoint)
    if drafter.cfg.d_model != card.n_heads * card.head_dim:
        raise GraphShapeError("the drafter is not shaped for this target")
    model = drafter_graph(drafter, decoder, card, head_accuracy_level=head_accuracy_level)
    path = model_dir / graph
    onnx.save(model, str(path))
    report = {"graph": graph, "bytes": path.stat().st_size, "params": drafter.num_params(),
              "nodes": len(model.graph.node), "step": state.get("step")}
    if write_card:
        card_path = model_dir / "model.json"
        raw = json.loads(card_path.read_text())
        point = curve_point(checkpoint, state, curve)
        raw["drafter"] = drafter_block(drafter, state, graph, point, raw.get("drafter"))
        card_path.write_text(json.dumps(raw, indent=2, ensure_ascii=False) + "\n")
        report["tau_recorded"] = point is not None
    return report


def drafter_session(model_dir: Path, graph: str = DRAFTER_GRAPH, threads: int = 1):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(model_dir / graph), options,
                                providers=["CPUExecutionProvider"])


def time_one_call(session, n_new: int = 3, cached: int = 512, repeats: int = 20,
                  seed: int = 0) -> dict:
    """Milliseconds of one drafter call: `n_new` new features on `cached` cached positions."""
    inputs = {i.name: i for i in session.get_inputs()}
    Kd = inputs[FEATURES].shape[2]
    n_layers, _, Hkv, _, D = inputs[PAST_KEYS].shape
    rng = np.random.default_rng(seed)
    cache = rng.standard_normal((n_layers, 1, Hkv, cached, D)).astype(np.float32)
    feeds = {FEATURES: rng.standard_normal((1, n_new, Kd)).astype(np.float32),
             FEATURE_POSITIONS: np.arange(cached, cached + n_new)[None],
             PAST_KEYS: cache, PAST_VALUES: cache,
             ANCHOR_IDS: np.array([[100]]), ANCHOR_POSITIONS: np.array([[cached + n_new]])}
    session.run(None, feeds)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        session.run(None, feeds)
        times.append((time.perf_counter() - started) * 1000)
    return {"ms_median": round(float(np.median(times)), 2), "ms_min": round(min(times), 2),
            "new": n_new, "cached": cached, "repeats": repeats}


def feature_drafter(model_dir: Path, graph: str = DRAFTER_GRAPH, threads: int = 1,
                    min_confidence: float = 0.0):
    """A `dlm_lsp.draft.FeatureDrafter` over the directory's drafter graph."""
    from dlm_lsp.draft import FeatureDrafter
    from dlm_lsp.modelcard import load_card

    card = load_card(model_dir)
    return FeatureDrafter(drafter_session(model_dir, graph, threads), card.drafter.n_layers,
                          card.kv_heads, card.head_dim, min_confidence)


def onnx_drafter_proposer(drafter):
    """A proposer (model_export.speculative) drafting with a `FeatureDrafter` on the
    session's target features, as `drafter_proposer` does with the torch `Drafter`: the block
    [frontier, mask...] against every position before the frontier. Its cache follows the
    session: a fresh one for each loop (`session.extra`), cut back when the session is."""

    def propose(session, history, length):
        import torch

        if "onnx_drafter" not in session.extra:
            drafter.reset()
            session.extra["onnx_drafter"] = True
        n = session.length
        if drafter.length > n:
            drafter.truncate(n)
        new = session.states[0, drafter.length : n].to(torch.float32).cpu().numpy()
        draft = drafter.draft(new, history[-1], length)
        session.extra["drafter_first"] = drafter.last_prob[0]
        return draft

    return propose


def compare_tau(checkpoint: Path, model_dir: Path, references: Path, target: Path,
                graph: str = DRAFTER_GRAPH) -> dict:
    """Validation tau of the drafter through torch and through its ONNX graph, obtained the
    same way: `replay` of train-drafter's greedy references (its cached
    `eval_references.pt`: the cursors, the bf16 target's greedy continuations and its
    features) with `drafter_proposer` (torch, the checkpoint, as `--eval-only` scores it)
    and `onnx_drafter_proposer` (the graph); alone and after prompt lookup. Where the
    directory's encoder outputs `FEATURES`, the graph is also scored on the served target's
    own features (`_served`: the q4 encoder's, one call per cursor over its whole text)
    against the same continuations."""
    import torch

    from dlm_lsp.draft import PromptLookup

    from .speculative import (GreedyReference, TargetSession, drafter_proposer, lookup_then,
                              replay, tokens_per_call)
    from .train_drafter import load_target

    torch.set_num_threads(1)
    target_model = load_target(target)
    drafter, _ = load_drafter(checkpoint)
    saved = torch.load(references, map_location="cpu", weights_only=False)
    layers = saved["key"]["layers"]
    if list(layers) != list(drafter.cfg.target_layers):
        raise ValueError(f"the references hold layers {layers}, the drafter reads "
                         f"{drafter.cfg.target_layers}")
    refs = []
    for prompt, continuation, states in saved["references"]:
        session = TargetSession(target_model, layers)
        session.states, session.length = states, states.shape[1]
        refs.append(GreedyReference(prompt, continuation, session))
    lookup = PromptLookup()
    draft_length = drafter.cfg.block_size - 1
    proposers = {"torch": drafter_proposer(drafter),
                 "onnx": onnx_drafter_proposer(feature_drafter(model_dir, graph))}
    out: dict = {"cursors": len(refs), "new_tokens": len(refs[0].continuation)}
    runs = [(name, propose, refs) for name, propose in proposers.items()]
    served = _served_references(model_dir, refs)
    if served is not None:
        runs.append(("onnx_served", proposers["onnx"], served))
    for name, propose, references in runs:
        for label, proposer in (("drafter", propose),
                                ("lookup_then_drafter", lookup_then(lookup, propose))):
            started = time.time()
            results = [replay(r, proposer, draft_length) for r in references]
            out[f"tau_{label}_{name}"] = round(tokens_per_call(results), 3)
            out[f"accepted_{label}_{name}"] = sum(d.accepted for d in results)
            out[f"seconds_{label}_{name}"] = round(time.time() - started, 1)
    return out


def _served_references(model_dir: Path, refs: list):
    """`refs` with their states replaced by the directory's encoder's `FEATURES` of the same
    text (None when its encoder has no such output)."""
    import torch

    from dlm_lsp.modelcard import load_card

    from .speculative import GreedyReference, TargetSession

    from .fused import encoder_session

    card = load_card(model_dir)
    encoder = encoder_session(model_dir, card.graphs["cpu"])
    if FEATURES not in [o.name for o in encoder.get_outputs()]:
        return None
    L, H, D = card.n_layers, card.kv_heads, card.head_dim
    empty = np.zeros((L, 1, H, 0, D), np.float32)
    served = []
    for ref in refs:
        text = (ref.prompt + ref.continuation)[: ref.session.states.shape[1]]
        (features,) = encoder.run([FEATURES], {
            "input_ids": np.array([text]), "position_ids": np.arange(len(text))[None],
            "attention_mask": np.ones((1, len(text)), np.int64), "past_keys": empty,
            "past_values": empty, "past_mask": np.zeros((1, 0), np.int64)})
        session = TargetSession(ref.session.target, ref.session.layers)
        session.states, session.length = torch.from_numpy(features), len(text)
        served.append(GreedyReference(ref.prompt, ref.continuation, session))
    return served


def add_export_drafter_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a train-drafter checkpoint (runs/drafter/last.pt)")
    p.add_argument("model_dir", help="the target's model directory (its fused graphs)")
    p.add_argument("--graph", default=DRAFTER_GRAPH, help="the drafter graph's file name")
    p.add_argument("--curve", default=None,
                   help="the run's curve.jsonl (default: beside the checkpoint)")
    p.add_argument("--no-card", action="store_true", help="write the graph only")
    p.add_argument("--time", action="store_true",
                   help="time one call (3 new features on 512 cached positions, 1 thread)")
    p.add_argument("--tau", default=None, metavar="REFERENCES",
                   help="also score tau through torch and through the graph on train-drafter's "
                   "greedy references (runs/drafter/eval_references.pt), the same replay")
    p.add_argument("--target", default="runs/smollm2/base.pt",
                   help="the imported target, for --tau (the torch drafter's head)")


def main_from_args(args) -> int:
    model_dir = Path(args.model_dir)
    report = export_drafter(Path(args.checkpoint), model_dir, args.graph,
                            Path(args.curve) if args.curve else None, not args.no_card)
    if args.time:
        report["one_call"] = time_one_call(drafter_session(model_dir, args.graph))
    if args.tau:
        report["tau"] = compare_tau(Path(args.checkpoint), model_dir, Path(args.tau),
                                    Path(args.target), args.graph)
        if not args.no_card:  # the card says what the shipped graph itself scores
            card_path = model_dir / "model.json"
            raw = json.loads(card_path.read_text())
            raw["drafter"]["tau_through_onnx"] = {
                **{k: v for k, v in report["tau"].items() if k.startswith("tau_")},
                "measured_by": "export-drafter --tau: the same replay, torch drafter vs this "
                               "graph (_served: on the q4 encoder's own features), "
                               + time.strftime("%Y-%m-%d", time.gmtime())}
            card_path.write_text(json.dumps(raw, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(report))
    return 0


__all__ = ["DRAFTER_GRAPH", "add_export_drafter_arguments", "compare_tau", "drafter_block",
           "drafter_graph", "drafter_session", "export_drafter", "feature_drafter",
           "load_drafter", "onnx_drafter_proposer", "time_one_call"]
