"""The model that ships in the package: the imported SmolLM2-135M, block-quantized, loads with
the runtime's card, fits the budget, and completes real code in ONNX Runtime."""

import numpy as np
import onnx
import onnxruntime as ort
from tokenizers import Tokenizer

from dlm_lsp.layout import build_layout
from dlm_lsp.modelcard import default_model_dir, load_card
from model_export.export import canvas_mask, empty_past
from model_export.fused import encoder_session
from tests.causal_model import run_decoder


def test_shipped_card_and_files():
    card = load_card(default_model_dir())
    assert card.name.startswith("smollm2") and card.vocab_size == 49152
    assert (card.n_layers, card.n_heads, card.kv_heads, card.head_dim) == (30, 9, 3, 64)
    assert card.canvas_attention == "causal" and card.shift and not card.reads_suffix
    # an AR model decodes left to right, each call also checking a drafted block
    assert card.causal and card.sampler.strategy == "speculative"
    drafter = card.drafter
    if drafter.graph is None:  # prompt lookup: the card claims no trained drafter
        assert drafter.trained is False and drafter.training_tokens == 0
    else:  # a trained feature drafter, reading features the shipped graphs output
        assert drafter.trained and drafter.training_tokens > 0 and drafter.params * 2 <= 15e6
        for name in (card.graphs["cpu"].encoder, card.graphs["cpu"].decoder):
            graph = onnx.load(str(card.path(name)), load_external_data=False)
            assert graph.graph.output[-1].name == "features"
    assert "autoregressive" in card.extra["architecture"]["type"]
    assert "masked diffusion" not in card.extra["training"]["objective"]
    base = card.extra["base_model"]
    assert base["license"] == "apache-2.0" and len(base["sha256"]) == 64
    assert "Apache License" in card.path("LICENSE").read_text()
    assert base["sha256"] in card.path("NOTICE").read_text()
    tokenizer = Tokenizer.from_file(str(card.path(card.tokenizer)))
    s = card.special_tokens
    names = {s.pad: "<|pad|>", s.mask: "<|mask|>", s.end_of_span: "<|endofspan|>",
             s.file: "<|file|>"}
    assert {i: tokenizer.id_to_token(i) for i in names} == names
    total = sum(p.stat().st_size for p in card.directory.iterdir() if p.is_file())
    assert total <= (100e6 if drafter.graph is None else 115e6)  # the budget with one


def test_shipped_graphs_continue_real_code():
    card = load_card(default_model_dir())
    s = card.special_tokens
    tokenizer = Tokenizer.from_file(str(card.path(card.tokenizer)))
    text = "import os\n\n\ndef read_text(path):\n    with open(path) as f:\n        return f.read()"
    ids = tokenizer.encode(text, add_special_tokens=False).ids
    prefix, truth = ids[:-4], ids[-4:]
    layout = build_layout([prefix, []], [4], s.file, shift=True)
    files = card.graphs["cpu"]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    encoder = encoder_session(card.directory, files)  # one graph: the decoder encodes
    decoder = ort.InferenceSession(str(card.path(files.decoder)), options,
                                   providers=["CPUExecutionProvider"])
    ctx = np.array([layout.context_ids], np.int64)
    keys, values = encoder.run(["keys", "values"], {"input_ids": ctx,
                                      "position_ids": np.array([layout.context_positions]),
                                      "attention_mask": np.ones_like(ctx),
                                      **empty_past(encoder, 1)})
    assert keys.shape == (card.n_layers, 1, card.kv_heads, ctx.shape[1], card.head_dim)
    positions = np.array(layout.canvas_positions[0])
    inputs, input_positions = layout.decoder_inputs(np.array(truth), positions)
    pred_ids, pred_prob = run_decoder(
        decoder, ["pred_ids", "pred_prob"],
        {"canvas_ids": inputs[None], "canvas_position_ids": input_positions[None],
         "keys": keys, "values": values, "context_mask": np.array([layout.decoder_mask()]),
         **canvas_mask(decoder, 1, 4)})
    assert pred_ids.shape == (1, 4) and pred_prob.dtype == np.float32
    assert not np.isin(pred_ids, list(s.never_predicted)).any()
    # teacher-forced, the pretrained model gets this plain code right token for token (the
    # last token may run on: " f.read()" could go on to ".split()")
    assert pred_ids[0, :3].tolist() == truth[:3]
