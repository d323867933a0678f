"""The context cache: bounded per-document states, and a typing session that answers the same
with and without it through a real exported causal model (tiny, random weights)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from dlm_lsp.context_cache import ContextCache, EncodedContext, shared_head
from dlm_lsp.engine import Engine
from dlm_lsp.sampler import Cancelled
from dlm_lsp.settings import Settings

from tests.causal_model import build_exported_model  # noqa: E402

pytest.importorskip("onnx")

DOCUMENT = (
    "import os\n\n\ndef walk(root):\n    for name in sorted(os.listdir(root)):\n"
    "        path = os.path.join(root, name)\n        if os.path.isdir(path):\n"
    "            yield from walk(path)\n        else:\n            yield path\n\n\n"
)
TYPED = "def count(root):\n    return sum(1 for _ in walk(root))\n"
AFTER = "\n\nclass Tree:\n    def __init__(self, root):\n        self.root = root\n"


@pytest.fixture(scope="module")
def causal_model(tmp_path_factory):
    return build_exported_model(tmp_path_factory.mktemp("models") / "causal")


@pytest.fixture(scope="module")
def bidirectional_model(tmp_path_factory):
    return build_exported_model(tmp_path_factory.mktemp("models") / "bidirectional",
                                context_attention="bidirectional")


def entry(nbytes: int, ids=(1, 2, 3)) -> EncodedContext:
    ids = np.asarray(ids, np.int64)
    return EncodedContext(ids, np.arange(len(ids)), object(), nbytes)


def test_shared_head_needs_same_id_at_same_position():
    cached = entry(0, (3, 10, 11, 12))
    assert shared_head([3, 10, 11, 12, 13], [0, 1, 2, 3, 4], cached) == 4
    assert shared_head([3, 10, 99, 12], [0, 1, 2, 3], cached) == 2
    assert shared_head([3, 10, 11, 12], [0, 1, 2, 4], cached) == 3  # a position moved
    assert shared_head([3, 10], [0, 1], cached) == 2


def test_cache_is_bounded_in_bytes_and_documents_least_recent_first():
    cache = ContextCache(max_bytes=100, max_documents=3, memory_is_low=lambda: False)
    for uri in "abc":
        cache.put(uri, entry(30))
    cache.get("a")  # a is now the most recent
    cache.put("d", entry(30))  # 120 bytes: b (least recent) goes
    assert cache.get("b") is None and cache.get("a") is not None and cache.nbytes <= 100
    cache.put("e", entry(10))  # four documents: the least recent goes
    assert len(cache) == 3
    cache.put("huge", entry(101))  # larger than the whole budget: not kept
    assert cache.get("huge") is None and len(cache) == 3
    cache.forget("a")
    assert cache.get("a") is None
    cache.clear()
    assert len(cache) == 0 and cache.nbytes == 0


def test_memory_pressure_drops_every_state():
    low = [False]
    cache = ContextCache(max_bytes=1000, memory_is_low=lambda: low[0])
    cache.put("a", entry(10))
    low[0] = True
    cache.put("b", entry(10))
    assert len(cache) == 0


def _typing_session(engine: Engine, uri: str = "file:///walk.py"):
    """Type TYPED into DOCUMENT character by character, completing after each keystroke."""
    answers = []
    for index in range(len(TYPED) + 1):
        text = DOCUMENT + TYPED[:index] + AFTER
        result = engine.complete_text(text, len(DOCUMENT) + index, "python", key=uri)
        answers.append((result.completion, result.context_tokens,
                        result.context_tokens_encoded, result.cached))
    return answers


def test_typing_session_answers_the_same_with_and_without_the_cache(causal_model):
    cached = Engine(causal_model)
    fresh = Engine(causal_model, settings=Settings(context_cache=False))
    assert cached.denoiser.incremental
    with_cache, without = _typing_session(cached), _typing_session(fresh)
    assert [a[0] for a in with_cache] == [a[0] for a in without]
    assert [a[1] for a in with_cache] == [a[1] for a in without]
    ran = [a for a in with_cache[1:] if not a[3]]  # model runs after the first keystroke
    assert ran, "every keystroke was answered by the typing-through cache"
    assert sum(a[2] for a in ran) < 0.5 * sum(a[1] for a in ran)
    assert all(a[2] == a[1] for a in without if not a[3])  # no cache: all of it, every time
    assert len(cached.contexts) == 1 and len(fresh.contexts) == 0


def test_close_drops_the_documents_state_and_the_cap_bounds_it(causal_model):
    engine = Engine(causal_model)
    for index in range(6):
        engine.complete_text(DOCUMENT + AFTER, len(DOCUMENT), "python", key=f"file:///{index}.py")
    per_document = engine.contexts.nbytes // len(engine.contexts)
    assert len(engine.contexts) == 6
    engine.forget("file:///0.py")
    assert engine.contexts.get("file:///0.py") is None and len(engine.contexts) == 5
    engine.settings = dataclasses.replace(engine.settings, context_cache_mb=1)
    limit = 3 * per_document
    engine.contexts.max_bytes = limit  # what a 1 MiB cap does to a bigger model's states
    engine.contexts.put("file:///x.py", engine.contexts.get("file:///1.py"))
    assert engine.contexts.nbytes <= limit and len(engine.contexts) <= 3
    engine.settings = dataclasses.replace(engine.settings, context_cache=False)
    engine.complete_text(DOCUMENT, len(DOCUMENT), "python", key="file:///y.py")
    assert len(engine.contexts) == 0


def test_a_cancelled_or_failed_request_leaves_a_whole_state(causal_model):
    engine = Engine(causal_model)
    uri = "file:///walk.py"
    text = DOCUMENT + "def count(" + AFTER
    offset = len(DOCUMENT) + len("def count(")
    with pytest.raises(Cancelled):  # cancelled at the first step, after the encoder ran
        calls = iter([False, True])
        engine.complete_text(text, offset, "python", key=uri, cancelled=lambda: next(calls))
    state = engine.contexts.get(uri)
    assert state is not None and len(state.ids) == state.state.length
    before = state

    class Exploding:
        incremental = True

        def extend(self, *args):
            raise RuntimeError("encoder exploded")

    real, engine.denoiser = engine.denoiser, Exploding()
    with pytest.raises(RuntimeError):
        engine.complete_text(text + "x", offset, "python", key=uri)
    assert engine.contexts.get(uri) is before  # the failed request left it as it was
    engine.denoiser = real
    again = engine.complete_text(text, offset, "python", key=uri)
    reference = Engine(causal_model, settings=Settings(context_cache=False))
    assert again.completion == reference.complete_text(text, offset, "python").completion
    assert again.context_tokens_encoded == 0  # the cancelled request's state was whole


def test_format_1_model_loads_and_answers_without_a_cache(bidirectional_model):
    engine = Engine(bidirectional_model)
    assert engine.card.context_attention == "bidirectional"
    assert not engine.denoiser.incremental
    assert engine.plan_settings().prefix_tokens == 384 and engine.plan_settings().prefix_step == 0
    first = engine.complete_text(DOCUMENT + AFTER, len(DOCUMENT), "python", key="file:///a.py")
    second = engine.complete_text(DOCUMENT + "d" + AFTER, len(DOCUMENT) + 1, "python",
                                  key="file:///a.py")
    assert first.plan is not None and first.context_tokens > 0
    assert second.context_tokens_encoded == second.context_tokens
    assert len(engine.contexts) == 0


def test_server_reports_context_figures_and_drops_the_state_on_close(causal_model, tmp_path):
    """Through the real server: dlm/status says how much of the context ran through the
    encoder; a keystroke re-encodes a fraction; didClose drops the document's state."""
    from tests.reliability.wire import WireServer, server_argv

    text = DOCUMENT + "def count(" + AFTER
    line = DOCUMENT.count("\n")
    uri = "file:///walk.py"
    with WireServer(server_argv("--model", str(causal_model), log_level="warning"),
                    stderr_path=tmp_path / "stderr.log") as server:
        server.initialize()
        server.open(uri, text)
        assert "result" in server.wait(server.inline(uri, line, len("def count(")))
        cold = server.call("dlm/status")["result"]
        assert cold["contextTokensEncoded"] == cold["contextTokens"] > 0
        server.change(uri, 2, [{"range": {"start": {"line": line, "character": 10},
                                          "end": {"line": line, "character": 10}},
                                "text": "r"}])
        assert "result" in server.wait(server.inline(uri, line, len("def count(r")))
        warm = server.call("dlm/status")["result"]
        assert 0 < warm["contextTokensEncoded"] < warm["contextTokens"] // 2, warm
        assert warm["contextCacheDocuments"] == 1 and warm["contextCacheBytes"] > 0
        server.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
        after = server.call("dlm/status")["result"]
        assert after["contextCacheDocuments"] == 0 and after["contextCacheBytes"] == 0
