"""The model that ships in the package loads with the runtime's card and runs in ONNX Runtime."""

import numpy as np
import onnxruntime as ort

from dlm_lsp.layout import build_layout
from dlm_lsp.modelcard import default_model_dir, load_card
from model_export.export import canvas_mask, empty_past


def test_shipped_card_and_graphs():
    card = load_card(default_model_dir())
    assert card.canvas_buckets == (16, 32, 64, 128)
    assert card.max_context >= 512 and card.max_position >= card.max_context + 128
    s = card.special_tokens
    assert (s.pad, s.mask, s.end_of_span, s.file) == (0, 1, 2, 3)
    training = card.extra["training"]
    assert training["steps"] > 0 and training["tokens_seen"] > 0 and training["hardware"]
    assert card.graphs["cuda"].dtype == "float16"
    total = sum(p.stat().st_size for p in card.directory.iterdir() if p.is_file())
    assert total < 60e6

    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(card.path(card.tokenizer)))
    prefix = tokenizer.encode("def add(a, b):\n    ", add_special_tokens=False).ids
    suffix = tokenizer.encode("\n\nprint(add(1, 2))\n", add_special_tokens=False).ids
    layout = build_layout([prefix, suffix], [16], s.file)
    files = card.graphs["cpu"]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    encoder = ort.InferenceSession(str(card.path(files.encoder)), options,
                                   providers=["CPUExecutionProvider"])
    decoder = ort.InferenceSession(str(card.path(files.decoder)), options,
                                   providers=["CPUExecutionProvider"])
    ctx = np.array([layout.context_ids], np.int64)
    keys, values = encoder.run(None, {"input_ids": ctx,
                                      "position_ids": np.array([layout.context_positions]),
                                      "attention_mask": np.ones_like(ctx),
                                      **empty_past(encoder, 1)})
    assert keys.shape == (card.n_layers, 1, card.n_heads, ctx.shape[1], card.head_dim)
    canvas = np.full((1, 16), s.mask, np.int64)
    pred_ids, pred_prob, canvas_prob = decoder.run(
        ["pred_ids", "pred_prob", "canvas_prob"],
        {"canvas_ids": canvas, "canvas_position_ids": np.array(layout.canvas_positions),
         "keys": keys, "values": values, "context_mask": np.ones_like(ctx),
         **canvas_mask(decoder, 1, 16)})
    assert pred_ids.shape == (1, 16) and pred_prob.dtype == np.float32
    assert not np.isin(pred_ids, [s.mask, s.pad, s.file]).any()
    assert ((pred_prob > 0) & (pred_prob <= 1)).all()
