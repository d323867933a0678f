"""Token healing (golden cases on the shipped model's byte-level BPE, SmolLM2's) and the
shifted layout of an AR model."""

import numpy as np
import pytest
from tokenizers import Tokenizer

from dlm_lsp.heal import Heal, Healer, unheal
from dlm_lsp.layout import build_layout, decoder_masks
from dlm_lsp.modelcard import SpecialTokens, default_model_dir
from dlm_lsp.sampler import SamplerSettings, denoise

SPECIALS = SpecialTokens(pad=0, mask=1, end_of_span=2, file=3)


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.from_file(str(default_model_dir() / "tokenizer.json"))


@pytest.fixture(scope="module")
def healer(tokenizer):
    return Healer(tokenizer)


def healed(tokenizer, healer, prefix):
    ids = tokenizer.encode(prefix, add_special_tokens=False).ids
    kept, heal = healer.heal(ids)
    return tokenizer.decode(kept), heal


@pytest.mark.parametrize("prefix, removed, continuation", [
    # after a newline: the BPE merges it with the next line's indentation
    ("    def area(self):\n", "\n", "\n        return"),
    # after indentation: the newline and the indentation are one token, which runs on
    ("    def area(self):\n        ", "\n        ", "\n            return"),
    # mid-identifier
    ("        return math.pi * self.rad", "rad", "radius"),
    ("        return self", " self", " self.radius"),
    # after an opening bracket
    ('        print(', "(", '("'),
    # inside a string, just after its opening quote
    ('        return "', ' "', ' "circle'),
])
def test_the_context_is_backed_off_and_the_canvas_must_re_produce_it(
        tokenizer, healer, prefix, removed, continuation):
    kept, heal = healed(tokenizer, healer, prefix)
    assert heal is not None and kept + heal.text == prefix
    assert heal.text.endswith(removed) or removed.endswith(heal.text)
    texts = [tokenizer.decode([int(i)]) for i in heal.allowed]
    assert all(text.startswith(heal.text) or heal.text.startswith(text) for text in texts)
    assert heal.text in texts  # the token that was there is always allowed
    # the token the real continuation starts with is allowed
    ids = tokenizer.encode(kept + continuation, add_special_tokens=False).ids
    first = ids[len(tokenizer.encode(kept, add_special_tokens=False).ids)]
    assert first in set(heal.allowed.tolist())


def test_a_token_nothing_runs_on_from_is_left_alone(healer):
    assert healer.heal([]) == ([], None)
    assert healer.heal([0]) == ([0], None)  # a special token
    assert healer.heal([1, 2]) == ([1, 2], None)


def test_the_rest_of_a_healed_text_may_come_from_the_next_tokens(tokenizer, healer):
    # 8 spaces and `return` are 7 spaces and ` return` to this BPE
    kept, heal = healed(tokenizer, healer, "    def area(self):\n        ")
    assert heal.text == "\n        "
    seven = tokenizer.encode("\n       ", add_special_tokens=False).ids
    assert len(seven) == 1 and seven[0] in set(heal.allowed.tolist())
    after = heal.allowed_after(seven)
    assert tokenizer.encode(" return", add_special_tokens=False).ids[0] in set(after.tolist())
    assert heal.allowed_after(tokenizer.encode("\n        ", add_special_tokens=False).ids) \
        is None


def test_unheal_cuts_the_removed_text_or_refuses(healer):
    heal = Heal("\n", healer)
    assert unheal("\n    return x", heal) == "    return x"
    assert unheal("return x", heal) is None
    assert unheal("return x", None) == "return x"


class ScriptedLogits:
    """A runtime with logits: prefers token 9 everywhere, records the decoder's inputs."""

    returns_logits = True

    def __init__(self, vocab=12):
        self.vocab = vocab
        self.inputs = []

    def encode(self, layout):
        return layout

    def denoise_step(self, state, canvas_ids, canvas_positions, need_logits=False):
        self.inputs.append((canvas_ids[0].copy(), canvas_positions[0].copy()))
        C = canvas_ids.shape[1]
        logits = np.zeros((1, C, self.vocab), np.float32)
        logits[..., 9] = 5.0
        logits[..., 7] = 4.0
        logits[..., 2] = -9.0
        ids = logits.argmax(-1)
        probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
        out = (ids, probs.max(-1).astype(np.float32), np.ones((1, C), np.float32))
        return out + (logits,) if need_logits else out


def test_the_healed_position_takes_the_best_allowed_token():
    runtime = ScriptedLogits()
    layout = build_layout([[10, 11], []], [3], SPECIALS.file)
    settings = SamplerSettings(strategy="left_to_right", max_steps=3)
    result = denoise(runtime, layout, SPECIALS, settings, heals=[OnlyFirst([6, 7])])
    assert result.canvases == [[7, 9, 9]]


class OnlyFirst:
    """A hole start that allows `ids` at the first position only."""

    def __init__(self, ids):
        self.ids = np.array(ids)

    def allowed_after(self, committed):
        return None if committed else self.ids


def test_a_closed_scope_ends_the_hole_at_once():
    runtime = ScriptedLogits()
    layout = build_layout([[10, 11], []], [6], SPECIALS.file, shift=True)
    settings = SamplerSettings(strategy="left_to_right", max_steps=6, causal_canvas=True)
    result = denoise(runtime, layout, SPECIALS, settings, closed=lambda hole, ids: len(ids) >= 2)
    assert result.canvases == [[9, 9]] and result.steps == 2


def test_a_shifted_layout_feeds_each_hole_the_token_before_it():
    layout = build_layout([[10, 11], [12], []], [3, 2], SPECIALS.file, shift=True)
    assert layout.anchors == (2, 3)  # context indices of 11 and 12
    assert layout.decoder_mask() == [1, 1, 0, 0]
    canvas = np.array([20, 21, 22, 23, 24])
    positions = np.array([p for hole in layout.canvas_positions for p in hole])
    ids, shifted = layout.decoder_inputs(canvas, positions)
    assert ids.tolist() == [11, 20, 21, 12, 23]
    assert shifted.tolist() == (positions - 1).tolist()
    assert decoder_masks([layout], 6).tolist() == [[1, 1, 0, 0, 0, 0]]
    # a hole right after another reads the other's last canvas token
    back_to_back = build_layout([[10], [], []], [2, 2], SPECIALS.file, shift=True)
    assert back_to_back.anchors == (1, -1)
    ids, _ = back_to_back.decoder_inputs(np.array([20, 21, 22, 23]), np.arange(2, 6))
    assert ids.tolist() == [10, 20, 21, 22]
    # an empty prefix: the file token is the anchor
    empty = build_layout([[], [5]], [2], SPECIALS.file, shift=True)
    assert empty.anchors == (0,) and empty.decoder_mask() == [0, 1]


def test_left_to_right_over_a_shifted_canvas_reads_committed_tokens_in_order():
    runtime = ScriptedLogits()
    layout = build_layout([[10, 11], []], [3], SPECIALS.file, shift=True)
    denoise(runtime, layout, SPECIALS, SamplerSettings(strategy="left_to_right", max_steps=3))
    firsts = [ids[:2].tolist() for ids, _ in runtime.inputs]
    assert firsts[0] == [11, SPECIALS.mask] and firsts[1] == [11, 9]


def test_a_causal_canvas_left_to_right_sends_only_the_canvas_up_to_the_first_mask():
    runtime = ScriptedLogits()
    layout = build_layout([[10, 11], []], [4], SPECIALS.file, shift=True)
    settings = SamplerSettings(strategy="left_to_right", max_steps=4, causal_canvas=True)
    result = denoise(runtime, layout, SPECIALS, settings)
    assert [len(ids) for ids, _ in runtime.inputs] == [1, 2, 3, 4]
    assert runtime.inputs[2][0].tolist() == [11, 9, 9]
    assert result.canvases == [[9, 9, 9, 9]]


def test_a_layout_from_the_wire_is_anchored_by_positions():
    from dlm_lsp.layout import Layout, anchored

    built = build_layout([[10, 11], [12], []], [3, 2], SPECIALS.file, shift=True)
    plain = Layout(built.context_ids, built.context_positions, built.canvas_positions)
    assert anchored(plain) == built
    back_to_back = build_layout([[10], [], []], [2, 2], SPECIALS.file, shift=True)
    assert anchored(Layout(back_to_back.context_ids, back_to_back.context_positions,
                           back_to_back.canvas_positions)) == back_to_back
    with pytest.raises(ValueError):
        anchored(Layout([3, 10], [0, 1], [[5, 6]]))


def test_a_model_that_reads_no_suffix_gets_none(tmp_path):
    """Not even the rest of the cursor's line, which the planner keeps as the suffix."""
    pytest.importorskip("torch")
    from dlm_lsp.engine import Engine
    from dlm_lsp.settings import Settings
    from tests.causal_model import build_exported_model

    directory = build_exported_model(tmp_path / "ar", shift=True, canvas_attention="causal",
                                     reads_suffix=False)
    engine = Engine(directory, Settings(context_cache=False))
    seen = []
    real = engine.denoiser.encode

    def encode(layout):
        seen.append(list(layout.context_ids))
        return real(layout)

    engine.denoiser.encode = encode
    text = "x = compute(a, b)\nprint(x)\n"
    engine.complete_text(text, text.index("compute"), "python")
    prefix = engine.tokenizer.encode("x = ", add_special_tokens=False).ids
    assert seen and len(seen[0]) <= 1 + len(prefix)
