"""The fused graphs (model_export/fused.py) compute what the exported q4 graphs compute, on the
same stored weights: a tiny model shaped as the shipped one, a denoiser's bidirectional canvas,
and the shipped model itself; the runtime's row-by-row batches and `append_canvas`."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from dlm_lsp.layout import build_layout
from dlm_lsp.modelcard import GraphFiles, default_model_dir, load_card
from dlm_lsp.runtime import OnnxDenoiser
from model_export.fused import EncodingDecoder, GraphShapeError, fuse_decoder, fuse_encoder
from tests.causal_model import build_exported_model, run_decoder

OUTPUTS = ["pred_ids", "pred_prob", "canvas_prob", "logits"]


SHIPPED_Q4 = Path(__file__).parent.parent / "data" / "shipped_q4"  # outside the package


def session(path, model=None, weights_dir=None):
    """A session of the graph at `path`, or of `model` (in memory) reading its external data
    beside `path`, or of `path` reading it from `weights_dir`."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    if model is None and weights_dir is None:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    if model is None:
        model = onnx.load(str(path), load_external_data=False)
    options.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                     str(weights_dir or path.parent))
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def empty_past(batch, card):
    empty = np.zeros((card.n_layers, batch, card.kv_heads, 0, card.head_dim), np.float32)
    return {"past_keys": empty, "past_values": empty, "past_mask": np.zeros((batch, 0), np.int64)}


def close(a, b, tolerance):
    finite = np.isfinite(a)
    assert (finite == np.isfinite(b)).all()
    assert np.abs(a[finite] - b[finite]).max() < tolerance


def compare(card, old_encoder, old_decoder, new_encoder, new_decoder, tolerance=1e-3, seed=0):
    """The two pairs on the same random contexts and canvases: batched padded encodes, an
    extension on a past, decoder calls with the anchor hidden, several canvas lengths."""
    rng = np.random.default_rng(seed)
    V, S = card.vocab_size, 37
    ids = rng.integers(4, V, (2, S))
    mask = np.ones((2, S), np.int64)
    mask[1, 25:] = 0
    positions = np.arange(S)[None].repeat(2, 0) * mask
    feeds = {"input_ids": ids, "position_ids": positions, "attention_mask": mask,
             **empty_past(2, card)}
    old_kv, new_kv = old_encoder.run(None, feeds), new_encoder.run(None, feeds)
    for a, b in zip(old_kv, new_kv):
        close(a[:, 0], b[:, 0], tolerance)
        close(a[:, 1, :, :25], b[:, 1, :, :25], tolerance)
    keys, values = (a[:, :1] for a in old_kv)
    extend = {"input_ids": ids[:1, 30:], "position_ids": positions[:1, 30:],
              "attention_mask": mask[:1, 30:],
              "past_keys": np.ascontiguousarray(keys[:, :, :, :30]),
              "past_values": np.ascontiguousarray(values[:, :, :, :30]),
              "past_mask": np.ones((1, 30), np.int64)}
    for a, b, whole in zip(old_encoder.run(None, extend), new_encoder.run(None, extend),
                           (keys, values)):
        close(a, b, tolerance)
        close(b, whole[:, :, :, 30:], tolerance)  # encoding in pieces = encoding at once
    context_mask = np.ones((1, S), np.int64)
    context_mask[0, -1] = 0  # the shifted layout's anchor, re-read as the canvas's first input
    for C in (1, 5, 16):
        canvas = rng.integers(4, V, (1, C))
        canvas[0, 0] = ids[0, -1]
        feeds = {"canvas_ids": canvas, "canvas_position_ids": np.arange(S - 1, S - 1 + C)[None],
                 "keys": keys, "values": values, "context_mask": context_mask,
                 "canvas_mask": np.ones((1, C), bool)}
        old, new = run_decoder(old_decoder, OUTPUTS, feeds), run_decoder(new_decoder, OUTPUTS,
                                                                         feeds)
        assert (old[0] == new[0]).all()
        for a, b in zip(old[1:], new[1:]):
            close(a, b, tolerance)


@pytest.fixture(scope="module")
def ar_dir(tmp_path_factory):
    """Shaped as the shipped model: shifted, a causal canvas, grouped key/value heads, the
    graphs block-quantized and fused."""
    return build_exported_model(tmp_path_factory.mktemp("fused") / "ar", sharpness=4.0,
                                shift=True, canvas_attention="causal", n_kv_heads=1,
                                reads_suffix=False, fused=True)


def test_fused_graphs_equal_the_exported_q4_graphs(ar_dir):
    card = load_card(ar_dir)
    assert card.graphs["cpu"].decoder == card.graphs["cpu"].encoder == "decoder.fused.onnx"
    assert not (ar_dir / "encoder.fused.onnx").exists()  # one graph encodes and decodes
    decoder = session(ar_dir / "decoder.fused.onnx")
    compare(card, session(ar_dir / "encoder.onnx"), session(ar_dir / "decoder.onnx"),
            EncodingDecoder(decoder), decoder)


def test_the_fused_encoder_equals_the_exported_q4_encoder(ar_dir):
    """The fused encoder graph (a stacked decoder's companion) as the q4 one."""
    card = load_card(ar_dir)
    old_e = onnx.load(str(ar_dir / "encoder.onnx"), load_external_data=False)
    old_d = onnx.load(str(ar_dir / "decoder.onnx"), load_external_data=False)
    compare(card, session(ar_dir / "encoder.onnx"), session(ar_dir / "decoder.onnx"),
            session(ar_dir / "encoder.onnx", fuse_encoder(old_e, card)),
            session(ar_dir / "decoder.onnx", fuse_decoder(old_d, card)))


def test_fused_graphs_read_the_weights_file_as_it_is(ar_dir):
    """Every weight the fused graphs use is one the q4 graphs use, at the same place in the
    same file: the builder rewrites no tensor."""
    def external(path):
        model = onnx.load(str(path), load_external_data=False)
        return {init.name: tuple((e.key, e.value) for e in init.external_data)
                for init in model.graph.initializer if init.data_location == 1}

    old = {**external(ar_dir / "encoder.onnx"), **external(ar_dir / "decoder.onnx")}
    new = external(ar_dir / "decoder.fused.onnx")
    assert new and all(old.get(name) == where for name, where in new.items())


def test_fused_graphs_have_the_fused_shape(ar_dir):
    model = onnx.load(str(ar_dir / "decoder.fused.onnx"), load_external_data=False)
    ops = Counter(node.op_type for node in model.graph.node)
    layers = load_card(ar_dir).n_layers
    assert ops["GroupQueryAttention"] == layers and ops["RotaryEmbedding"] == 2 * layers
    assert ops["SkipSimplifiedLayerNormalization"] == 2 * layers
    assert ops["Transpose"] == 2 * layers  # only the canvas keys/values output's
    assert ops["Softmax"] == 1  # the output's; attention's is inside its kernel


def test_a_denoisers_bidirectional_canvas_fuses_too(tmp_path):
    directory = build_exported_model(tmp_path / "den", sharpness=4.0, quantized=True)
    card = load_card(directory)
    old_e = onnx.load(str(directory / "encoder.onnx"), load_external_data=False)
    old_d = onnx.load(str(directory / "decoder.onnx"), load_external_data=False)
    compare(card, session(directory / "encoder.onnx"), session(directory / "decoder.onnx"),
            session(directory / "encoder.onnx", fuse_encoder(old_e, card)),
            session(directory / "decoder.onnx", fuse_decoder(old_d, card)))
    # ... but as a pair: its decoder cannot encode (a piece of context would see what follows)
    from model_export.fused import fuse_graphs, one_graph_encoder

    assert one_graph_encoder(directory, "decoder.fused.onnx") == "encoder.fused.onnx"
    with pytest.raises(ValueError, match="causal canvas"):
        fuse_graphs(directory, "encoder.onnx", "decoder.onnx", "decoder.fused.onnx",
                    "decoder.fused.onnx", log=lambda _: None)


def test_an_unquantized_graph_is_refused(tmp_path):
    directory = build_exported_model(tmp_path / "fp32", sharpness=4.0)
    card = load_card(directory)
    with pytest.raises(GraphShapeError):
        fuse_decoder(onnx.load(str(directory / "decoder.onnx"), load_external_data=False), card)


def test_the_runtime_runs_a_fused_batch_row_by_row(ar_dir):
    """GroupQueryAttention takes several new tokens on a past at batch 1 only: a batch with
    padded contexts and canvases gets each row's own call, equal to the q4 graphs' one call."""
    card = load_card(ar_dir)
    fused = OnnxDenoiser(card, "cpu", 1)
    q4 = replace(card, graphs={"cpu": GraphFiles(encoder="encoder.onnx", decoder="decoder.onnx")})
    plain = OnnxDenoiser(q4, "cpu", 1)
    assert fused._one_row and not plain._one_row
    rng = np.random.default_rng(3)
    layouts = [build_layout([list(rng.integers(4, card.vocab_size, n)), []], [c],
                            card.special_tokens.file, shift=True)
               for n, c in ((20, 6), (9, 3), (14, 1))]
    states = [runtime.encode_batch(layouts) for runtime in (fused, plain)]
    C = 6
    ids = np.zeros((3, C), np.int64)
    positions = np.zeros((3, C), np.int64)
    canvas_mask = np.zeros((3, C), bool)
    for row, layout in enumerate(layouts):
        n = layout.canvas_lengths[0]
        got_ids, got_positions = layout.decoder_inputs(
            rng.integers(4, card.vocab_size, n), np.array(layout.canvas_positions[0]))
        ids[row, :n], positions[row, :n], canvas_mask[row, :n] = got_ids, got_positions, True
    new = fused.denoise_step_batch(states[0], ids, positions, canvas_mask, need_logits=True)
    old = plain.denoise_step_batch(states[1], ids, positions, canvas_mask, need_logits=True)
    assert (new[0][canvas_mask] == old[0][canvas_mask]).all()
    for a, b in zip(new[1:], old[1:]):
        close(a[canvas_mask], b[canvas_mask], 1e-3)


def test_append_canvas_equals_sending_the_canvas_again(ar_dir):
    """A step that sends only the uncommitted inputs, on a state extended by the committed
    ones (`append_canvas`), predicts what the step that re-sends them all predicts."""
    card = load_card(ar_dir)
    runtime = OnnxDenoiser(card, "cpu", 1)
    assert runtime.appends
    rng = np.random.default_rng(5)
    layout = build_layout([list(rng.integers(4, card.vocab_size, 25)), []], [8],
                          card.special_tokens.file, shift=True)
    state = runtime.encode(layout)
    canvas = rng.integers(4, card.vocab_size, 8)
    ids, positions = layout.decoder_inputs(canvas, np.array(layout.canvas_positions[0]))
    whole = runtime.denoise_step(state, ids[None], positions[None], need_logits=True)
    first = runtime.denoise_step(state, ids[None, :5], positions[None, :5], keep_canvas=True)
    longer = runtime.append_canvas(state, first[-1], 3)
    assert longer.length == state.length + 3 and state.length == len(layout.context_ids)
    rest = runtime.denoise_step(longer, ids[None, 3:], positions[None, 3:], need_logits=True)
    assert (rest[0] == whole[0][:, 3:]).all()
    close(rest[3], whole[3][:, 3:], 1e-3)
    close(first[1], whole[1][:, :5], 1e-4)


def test_the_shipped_fused_graphs_equal_its_q4_graphs():
    """The shipped model's fused decoder, rebuilt at the q4 graph's own accuracy level, gives
    the q4 graph's argmax on real code and close logits; the shipped fused files are the
    builder's output at the level the card records."""
    directory = default_model_dir()
    card = load_card(directory)
    if card.graphs["cpu"].decoder != "decoder.fused.onnx":
        pytest.skip("the shipped model's CPU graphs are not the fused pair")
    old_e = onnx.load(str(SHIPPED_Q4 / "encoder.q4.onnx"), load_external_data=False)
    old_d = onnx.load(str(SHIPPED_Q4 / "decoder.q4.onnx"), load_external_data=False)
    shipped = directory / "weights.bin"
    compare(card, session(None, old_e, directory), session(None, old_d, directory),
            session(shipped, fuse_encoder(old_e, card)), session(shipped, fuse_decoder(old_d, card)),
            tolerance=5e-2)  # logits ~20: the head rounds its input to int8 (accuracy level 4)
    note = card.extra.get("export", {}).get("fused", {})
    shipped = onnx.load(str(directory / "decoder.fused.onnx"), load_external_data=False)
    rebuilt = fuse_decoder(old_d, card, note.get("accuracy_level"),
                           mlp_accuracy_level=note.get("decoder_mlp_accuracy_level"),
                           buffers=note.get("buffers", False),
                           matrix_levels=note.get("decoder_matrix_levels"),
                           features=note.get("features", ()))
    assert shipped.graph.node == rebuilt.graph.node


@pytest.mark.slow
def test_a_q4_export_of_a_causal_model_ships_the_fused_graphs(tiny_checkpoint, tiny_corpus,
                                                              tiny_tokenizer, tmp_path):
    import argparse

    from model_export.export import add_export_arguments, export_model_dir

    parser = argparse.ArgumentParser()
    add_export_arguments(parser)
    out = tmp_path / "model"
    report = export_model_dir(parser.parse_args([
        "--checkpoint", str(tiny_checkpoint), "--tokenizer", str(tiny_tokenizer), "--corpus",
        str(tiny_corpus), "--out", str(out), "--em-examples", "0", "--threads", "1",
        "--cpu-variant", "q4", "--no-fp16", "--repeats", "1"]))
    card = load_card(out)
    assert card.graphs["cpu"].decoder == "decoder.fused.onnx"
    assert card.extra["export"]["fused"] == report["fused"]
    decoder = session(out / "decoder.fused.onnx")
    # a denoiser's bidirectional canvas cannot encode a context: the fused pair; a causal
    # canvas (the shipped model's) is one graph
    one_graph = card.canvas_attention == "causal"
    assert card.graphs["cpu"].one_graph == one_graph
    encoder = EncodingDecoder(decoder) if one_graph else session(out / "encoder.fused.onnx")
    compare(card, session(out / "encoder.q4.onnx"), session(out / "decoder.q4.onnx"),
            encoder, decoder)


def test_a_buffer_decoder_writes_the_canvas_into_the_context_buffers(ar_dir):
    """`fuse_decoder(..., buffers=True)`: per-layer key/value buffers bound as both past and
    present (nothing copied per call) give the contract decoder's outputs, and the call leaves
    the canvas's own keys/values in the buffers after the context's."""
    card = load_card(ar_dir)
    old_d = onnx.load(str(ar_dir / "decoder.onnx"), load_external_data=False)
    plain = session(ar_dir / "decoder.onnx", fuse_decoder(old_d, card, buffers=False))
    buffered = session(ar_dir / "decoder.fused.onnx")  # what fuse_graphs writes
    encoder = EncodingDecoder(buffered)
    rng = np.random.default_rng(2)
    S, C, extra = 19, 5, 8
    ids = rng.integers(4, card.vocab_size, (1, S))
    keys, values = encoder.run(None, {"input_ids": ids, "position_ids": np.arange(S)[None],
                                      "attention_mask": np.ones((1, S), np.int64),
                                      **empty_past(1, card)})
    shape = (card.n_layers, 1, card.kv_heads, S + extra, card.head_dim)
    key_buffer, value_buffer = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    key_buffer[:, :, :, :S], value_buffer[:, :, :, :S] = keys, values
    feeds = {"canvas_ids": rng.integers(4, card.vocab_size, (1, C)),
             "canvas_position_ids": np.arange(S - 1, S - 1 + C)[None],
             "context_mask": np.ones((1, S), np.int64), "canvas_mask": np.ones((1, C), bool)}
    binding = buffered.io_binding()
    binding.bind_cpu_input("predict_rows", np.arange(C, dtype=np.int64))
    for name, value in feeds.items():
        binding.bind_cpu_input(name, value)
    for name in OUTPUTS[:2]:
        binding.bind_output(name, "cpu")
    for layer in range(card.n_layers):
        for kind, buffer in (("key", key_buffer), ("value", value_buffer)):
            value = ort.OrtValue.ortvalue_from_numpy(buffer[layer])  # a view: shared memory
            binding.bind_ortvalue_input(f"past_{kind}_{layer}", value)
            binding.bind_ortvalue_output(f"present_{kind}_{layer}", value)
    buffered.run_with_iobinding(binding)
    got = binding.copy_outputs_to_cpu()
    want = plain.run(OUTPUTS[:2] + ["canvas_keys", "canvas_values"],
                     {**feeds, "keys": keys, "values": values})
    assert (got[0] == want[0]).all()
    close(got[1], want[1], 1e-5)
    close(key_buffer[:, :, :, S : S + C], want[2], 1e-5)
    close(value_buffer[:, :, :, S : S + C], want[3], 1e-5)
    assert (key_buffer[:, :, :, :S] == keys).all()


def test_buffered_states_never_see_each_others_writes(ar_dir):
    """A buffered decoder writes each call's keys/values into its state's store, after the
    state: appends, calls from a state that is no longer its store's head (the state a
    request started from, after the request appended to it), and an append whose call was
    overwritten by a later call all give what the stacked-keys decoder gives."""
    card = load_card(ar_dir)
    runtime = OnnxDenoiser(card, "cpu", 1)
    assert runtime.buffered
    old_d = onnx.load(str(ar_dir / "decoder.onnx"), load_external_data=False)
    plain = session(ar_dir / "decoder.onnx", fuse_decoder(old_d, card, buffers=False))
    rng = np.random.default_rng(8)
    layout = build_layout([list(rng.integers(4, card.vocab_size, 21)), []], [10],
                          card.special_tokens.file, shift=True)
    start = runtime.encode(layout)
    ids, positions = layout.decoder_inputs(rng.integers(4, card.vocab_size, 10),
                                           np.array(layout.canvas_positions[0]))

    def reference(first, count):
        """The stacked decoder's outputs for inputs first..first+count, re-sending all."""
        feeds = {"canvas_ids": ids[None, : first + count],
                 "canvas_position_ids": positions[None, : first + count],
                 "keys": start.keys, "values": start.values,
                 "context_mask": start.context_mask,
                 "canvas_mask": np.ones((1, first + count), bool)}
        got = plain.run(["pred_ids", "pred_prob"], feeds)
        return got[0][:, first:], got[1][:, first:]

    def check(state, first, count):
        got = runtime.denoise_step(state, ids[None, first : first + count],
                                   positions[None, first : first + count], keep_canvas=True)
        want = reference(first, count)
        assert (got[0] == want[0]).all()
        close(got[1], want[1], 1e-4)
        return got[-1]

    canvas = check(start, 0, 4)
    one = runtime.append_canvas(start, canvas, 2)  # no copy: the call wrote them
    assert one.store is not None and one.writable and one.length == start.length + 2
    canvas = check(one, 2, 3)
    two = runtime.append_canvas(one, canvas, 3)
    assert two.store is one.store and not one.writable
    check(two, 5, 5)
    # the start again: its copy is no longer its store's head, so the call gets a new copy
    canvas = check(start, 0, 3)
    other = rng.integers(4, card.vocab_size, (1, 6))  # a later call on the same state
    runtime.denoise_step(start, other, positions[None, :6])  # writes over those inputs
    again = runtime.append_canvas(start, canvas, 3)  # ... so the append writes its own copy
    check(again, 3, 7)
    check(two, 5, 4)  # the first chain's state is as it was
    check(one, 2, 8)


def test_the_fused_graphs_output_the_target_features_a_drafter_reads(ar_dir):
    """`features=`: the residual streams after the asked blocks (Denoiser.layer_states: 0 the
    embedding, l after block l), concatenated in the order asked, for every input token: the
    context's in the encoder (whole or extending a past), the canvas's in the decoder (the
    contract's and the buffer variant), equal to torch's on the same causal text."""
    import torch

    from model_export.model import block_mask
    from tests.causal_model import torch_model

    card = load_card(ar_dir)
    model = torch_model(ar_dir)
    L = card.n_layers
    old_e = onnx.load(str(ar_dir / "encoder.onnx"), load_external_data=False)
    old_d = onnx.load(str(ar_dir / "decoder.onnx"), load_external_data=False)
    encoder = session(ar_dir / "encoder.onnx", fuse_encoder(old_e, card, features=[1, 0]))
    rng = np.random.default_rng(7)
    S, C = 21, 5
    ids = rng.integers(4, card.vocab_size, (1, S + C))
    with torch.no_grad():
        x = torch.from_numpy(ids)
        real = torch.ones_like(x, dtype=torch.bool)
        states = model.layer_states(x, torch.arange(S + C)[None],
                                    block_mask(real, torch.zeros_like(real), causal=True),
                                    [1, 0, L])
    want = torch.cat(states, -1).numpy()  # (1, S+C, 3d)
    d = want.shape[-1] // 3
    feeds = {"input_ids": ids[:, :S], "position_ids": np.arange(S)[None],
             "attention_mask": np.ones((1, S), np.int64), **empty_past(1, card)}
    keys, values, features = encoder.run(["keys", "values", "features"], feeds)
    assert features.shape == (1, S, 2 * d)
    close(features, want[:, :S, : 2 * d], 1e-3)
    extend = {"input_ids": ids[:, 15:S], "position_ids": np.arange(15, S)[None],
              "attention_mask": np.ones((1, S - 15), np.int64),
              "past_keys": np.ascontiguousarray(keys[:, :, :, :15]),
              "past_values": np.ascontiguousarray(values[:, :, :, :15]),
              "past_mask": np.ones((1, 15), np.int64)}
    (tail,) = encoder.run(["features"], extend)
    close(tail, want[:, 15:S, : 2 * d], 1e-3)
    feeds = {"canvas_ids": ids[:, S:], "canvas_position_ids": np.arange(S, S + C)[None],
             "keys": keys, "values": values, "context_mask": np.ones((1, S), np.int64),
             "canvas_mask": np.ones((1, C), bool)}
    decoder = session(ar_dir / "decoder.onnx", fuse_decoder(old_d, card, features=[1, 0, L]))
    pred, features = decoder.run(["pred_ids", "features"], feeds)
    assert features.shape == (1, C, 3 * d)
    close(features, want[:, S:], 1e-3)
    plain_pred, = run_decoder(session(ar_dir / "decoder.fused.onnx"), ["pred_ids"], feeds)
    assert (pred == plain_pred).all()
    buffered = session(ar_dir / "decoder.onnx",
                       fuse_decoder(old_d, card, buffers=True, features=[1, 0, L]))
    binding = buffered.io_binding()
    for name in ("canvas_ids", "canvas_position_ids", "context_mask", "canvas_mask"):
        binding.bind_cpu_input(name, feeds[name])
    binding.bind_cpu_input("predict_rows", np.arange(C, dtype=np.int64))
    shape = (L, 1, card.kv_heads, S + C, card.head_dim)
    buffers = {"key": np.zeros(shape, np.float32), "value": np.zeros(shape, np.float32)}
    buffers["key"][:, :, :, :S], buffers["value"][:, :, :, :S] = keys, values
    for layer in range(L):
        for kind, buffer in buffers.items():
            value = ort.OrtValue.ortvalue_from_numpy(buffer[layer])
            binding.bind_ortvalue_input(f"past_{kind}_{layer}", value)
            binding.bind_ortvalue_output(f"present_{kind}_{layer}", value)
    binding.bind_output("features", "cpu")
    buffered.run_with_iobinding(binding)
    close(binding.copy_outputs_to_cpu()[-1], want[:, S:], 1e-3)  # bound last
    with pytest.raises(GraphShapeError):  # the encoder runs its last block's keys/values only
        fuse_encoder(old_e, card, features=[L])
    no_features = fuse_decoder(old_d, card)
    assert "features" not in [o.name for o in no_features.graph.output]


def test_a_long_context_encoded_in_pieces_equals_one_encoder_call(ar_dir):
    """A causal context longer than ENCODE_PIECE is encoded piece by piece, each on the keys/
    values of those before it (whole, and extending a cached head): the keys, values and
    features of one call over all of it."""
    from dlm_lsp.runtime.onnx import ENCODE_PIECE

    card = load_card(ar_dir)
    runtime = OnnxDenoiser(card, "cpu", 1)
    rng = np.random.default_rng(11)
    tokens = list(rng.integers(4, card.vocab_size, 2 * ENCODE_PIECE + 37))
    layout = build_layout([tokens, []], [4], card.special_tokens.file, shift=True)
    assert len(layout.context_ids) > 2 * ENCODE_PIECE
    assert runtime.encoder is None  # one graph: the decoder encodes
    n = len(layout.context_ids)
    one_call = EncodingDecoder(session(ar_dir / "decoder.fused.onnx")).run(None, {
        "input_ids": np.asarray([layout.context_ids]),
        "position_ids": np.asarray([layout.context_positions]),
        "attention_mask": np.ones((1, n), np.int64), **empty_past(1, card)})
    whole = runtime.encode_batch([layout])
    close(whole.keys, one_call[0], 1e-4)
    close(whole.values, one_call[1], 1e-4)
    pieces = runtime.encode(layout)
    head = runtime.encode(build_layout([tokens[:50], []], [4], card.special_tokens.file,
                                       shift=True))
    extended = runtime.extend(head, 50, layout)  # the head's last token was its anchor
    for state in (pieces, extended):
        assert state.length == whole.length
        assert (state.context_mask == whole.context_mask).all()
        close(state.keys, whole.keys, 1e-4)
        close(state.values, whole.values, 1e-4)
