"""The batched sampler through the real ONNX runtime equals one request at a time: the shipped
model (format 1: the runtime pads nothing, runs canvases row by row) and a format-2 model
(padded canvases in one decoder call)."""

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
    tok, file_id = engine.tokenizer, engine.card.special_tokens.file
    return [build_layout([tok.encode(p).ids, tok.encode(s).ids], [n], file_id)
            for p, s, n in TEXTS]


def check_batch_equals_alone(engine, settings):
    lays = layouts(engine)
    alone = [denoise(engine.denoiser, lay, engine.card.special_tokens, s)
             for lay, s in zip(lays, settings)]
    batch = denoise_batch(engine.denoiser, lays, engine.card.special_tokens, settings)
    assert batch == alone
    return alone


def test_shipped_model_batch_equals_one_by_one():
    engine = Engine(denoiser=None)
    assert hasattr(engine.denoiser, "denoise_step_batch")
    base = engine.sampler_settings()
    settings = [base, SamplerSettings(threshold=0.5, max_steps=3), base,
                SamplerSettings(strategy="left_to_right", max_steps=8)]
    alone = check_batch_equals_alone(engine, settings)
    assert len({r.steps for r in alone}) > 1  # requests finished at different steps


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
    for session in (denoiser.encoder, denoiser.decoder):
        options = session.get_session_options()
        assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
