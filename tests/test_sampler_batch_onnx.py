"""The batched sampler through the real ONNX runtime equals one request at a time: the shipped
model (shifted, a causal canvas) and a format-2 denoiser (padded canvases in one decoder
call)."""

import pytest

from dlm_lsp.engine import Engine
from dlm_lsp.layout import build_layout
from dlm_lsp.modelcard import load_card
from dlm_lsp.runtime import OnnxDenoiser
from dlm_lsp.sampler import SamplerSettings, denoise, denoise_batch

TEXTS = [
    ("def add(a, b):\n    return ", "\n", 16),
    ("import os\nfor name in os.listdir('.'):\n    ", "\n", 32),
    ("class A:\n    def __init__(self):\n        self.", "\n\nx = 1\n", 64),
    ("x = [1, 2, 3]\ny = ", "\nprint(y)\n", 8),
]


def layouts(engine):
    tok, card = engine.tokenizer, engine.card
    file_id = card.special_tokens.file

    def ids(text):
        return tok.encode(text, add_special_tokens=False).ids

    return [build_layout([ids(p), ids(s) if card.reads_suffix else []], [n], file_id,
                         shift=card.shift) for p, s, n in TEXTS]


def check_batch_equals_alone(engine, settings):
    lays = layouts(engine)
    alone = [denoise(engine.denoiser, lay, engine.card.special_tokens, s)
             for lay, s in zip(lays, settings)]
    batch = denoise_batch(engine.denoiser, lays, engine.card.special_tokens, settings)
    assert batch == alone
    return alone


def mixed_settings(engine):
    base = engine.sampler_settings()
    causal = base.causal_canvas
    return [base, SamplerSettings(threshold=0.5, max_steps=3, causal_canvas=causal), base,
            SamplerSettings(strategy="left_to_right", max_steps=8, causal_canvas=causal)]


def test_ar_shaped_model_batch_equals_one_by_one(tmp_path):
    """Shaped as the shipped model is (shifted, a causal canvas, grouped key/value heads),
    in float32: a batch is exactly its requests one by one."""
    pytest.importorskip("torch")
    from tests.causal_model import build_exported_model

    directory = build_exported_model(tmp_path / "ar", sharpness=4.0, shift=True,
                                     canvas_attention="causal", reads_suffix=False)
    engine = Engine(directory, denoiser=OnnxDenoiser(load_card(directory), "cpu", 1))
    alone = check_batch_equals_alone(engine, mixed_settings(engine))
    assert len({r.steps for r in alone}) > 1  # requests finished at different steps


def test_shipped_model_batch_agrees_with_one_by_one():
    """The shipped model's 4-bit products compute with int8 activations, whose kernel (and
    so its float rounding) depends on how many rows a call has: a batch may flip a near-tie
    that one request alone does not. Most tokens must agree; exact equality is the float32
    model's (above)."""
    engine = Engine(denoiser=None)
    assert hasattr(engine.denoiser, "denoise_step_batch")
    lays, settings = layouts(engine), mixed_settings(engine)
    alone = [denoise(engine.denoiser, lay, engine.card.special_tokens, s)
             for lay, s in zip(lays, settings)]
    batch = denoise_batch(engine.denoiser, lays, engine.card.special_tokens, settings)
    same = total = 0
    for a, b in zip(alone, batch):
        for x, y in zip(a.canvases, b.canvases):
            same += sum(p == q for p, q in zip(x, y))
            total += max(len(x), len(y))
    assert total and same / total >= 0.8, (same, total)


def test_format2_model_batch_equals_one_by_one(tmp_path):
    pytest.importorskip("torch")
    from tests.causal_model import build_exported_model

    directory = build_exported_model(tmp_path / "causal")
    card = load_card(directory)
    engine = Engine(directory, denoiser=OnnxDenoiser(card, "cpu", 1))
    assert engine.denoiser._pads_canvas  # the padded path, not row by row
    settings = [SamplerSettings(threshold=t, max_steps=m) for t, m in
                ((0.9, 4), (0.3, 2), (0.99, 8), (0.6, 16))]
    check_batch_equals_alone(engine, settings)


def test_sessions_do_not_spin():
    """Idle ONNX Runtime threads sleep: a spinning pool of one session slows the other's
    calls on a machine with few cores (a cached keystroke 2-3x slower on a busy 2-core box)."""
    denoiser = Engine(denoiser=None).denoiser
    for session in denoiser._sessions():  # one: the decoder also encodes
        options = session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
