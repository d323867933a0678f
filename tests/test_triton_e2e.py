"""The slow path end to end: `dlm-lsp triton-repo` → a real Triton server (the tritonserver
binary that nvidia-pytriton bundles, CPU, loopback) → `dlm-lsp --remote` over LSP."""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
import pytest_lsp
from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient

from dlm_lsp.remote.pytriton_server import LocalTriton, free_port
from dlm_lsp.remote.triton_repo import RepoSettings, write_repository
from tests.reliability.synthetic_model import build_synthetic_model
from tests.test_server_e2e import inline_params, open_doc
from tests.triton_gate import gate_repository

pytest.importorskip("pytriton", reason="pip install nvidia-pytriton (dlm-lsp[remote])")

URI = "file:///work/remote.py"
BLOCK = "total = sum(xs)\n    return total"  # what the served model writes
LOCAL = "pass"  # what the local fallback model writes
WORK = Path(tempfile.mkdtemp(prefix="dlm-triton-"))
SERVED = build_synthetic_model(WORK / "served", answer=BLOCK)
FALLBACK = build_synthetic_model(WORK / "local", answer=LOCAL)
TRITON = LocalTriton(WORK / "repo", WORK)  # ports are chosen now, the server starts below
GATE = WORK / "gate"  # while GATE/hold exists the served model holds its decoder steps
DOWN = f"grpc://127.0.0.1:{free_port()}"  # nobody listens here


def dlm_lsp(remote: str) -> list[str]:
    return [sys.executable, "-m", "dlm_lsp", "--log-level", "info", "--remote", remote,
            "--model", str(FALLBACK)]


@pytest.fixture(scope="module", autouse=True)
def triton():
    write_repository(SERVED, WORK / "repo", RepoSettings(kind="cpu", threads=1))
    gate_repository(WORK / "repo", GATE)
    try:
        with TRITON:
            yield TRITON
        print(TRITON.tail(2000), file=sys.stderr)
    finally:
        shutil.rmtree(WORK, ignore_errors=True)


def served_requests(triton: LocalTriton) -> int:
    """Requests the completion model answered, from Triton's metrics endpoint."""
    found = re.search(r'nv_inference_request_success\{model="dlm_complete",version="1"\} (\d+)',
                      triton.metrics())
    return int(found.group(1)) if found else 0


async def start(client: LanguageClient, options: dict | None = None) -> None:
    await client.initialize_session(types.InitializeParams(
        capabilities=types.ClientCapabilities(), initialization_options=options))


@pytest_lsp.fixture(config=ClientServerConfig(server_command=dlm_lsp(TRITON.grpc_url)))
async def remote_client(lsp_client: LanguageClient):
    await start(lsp_client, {"dlm": {"maxSteps": 16}})
    yield
    await lsp_client.shutdown_session()


@pytest_lsp.fixture(config=ClientServerConfig(server_command=dlm_lsp(DOWN)))
async def down_client(lsp_client: LanguageClient):
    await start(lsp_client)
    yield
    await lsp_client.shutdown_session()


async def test_inline_completion_and_fill_come_from_triton(remote_client: LanguageClient,
                                                           triton: LocalTriton):
    before = served_requests(triton)
    open_doc(remote_client, "def f(xs):\n    ", uri=URI)
    result = await remote_client.text_document_inline_completion_async(inline_params(1, 4, URI))
    assert [item.insert_text for item in result.items] == [BLOCK]
    status = await remote_client.protocol.send_request_async("dlm/status", {})
    assert status.lastBackend == "remote" and status.provider == f"remote {TRITON.grpc_url}"
    assert status.model == "synthetic" and status.remoteError is None
    open_doc(remote_client, "def f(xs):\n    <|hole|>\n\ndef g(xs):\n    <|hole|>\n",
             uri="file:///work/fill.py")
    fill = await remote_client.protocol.send_request_async(
        "dlm/fill", {"textDocument": {"uri": "file:///work/fill.py"}})
    # as locally, the synthetic model answers at the start of the concatenated canvas
    assert [(e.range.start.line, e.newText) for e in fill.edits] == [(1, BLOCK), (4, "")]
    status = await remote_client.protocol.send_request_async("dlm/status", {})
    assert status.lastBackend == "remote" and status.lastKind == "fill"
    assert served_requests(triton) == before + 2  # one round trip per completion
    assert remote_client.messages == []  # no warning


async def test_an_unreachable_server_warns_once_and_the_local_model_answers(
        down_client: LanguageClient):
    for uri in (URI, "file:///work/second.py"):  # two documents: no typing-through cache
        open_doc(down_client, "def f(xs):\n    ", uri=uri)
        result = await down_client.text_document_inline_completion_async(inline_params(1, 4, uri))
        assert [item.insert_text for item in result.items] == [LOCAL]
        status = await down_client.protocol.send_request_async("dlm/status", {})
        assert status.lastBackend == "local" and status.remoteError and status.provider == "CPU"
    warnings = [m for m in down_client.messages if DOWN in m.message]
    assert len(warnings) == 1 and warnings[0].type == types.MessageType.Warning
    down_client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
        settings={"dlm": {"remoteFallback": "empty"}}))
    open_doc(down_client, "def g(xs):\n    ", uri="file:///work/other.py")
    result = await down_client.text_document_inline_completion_async(
        inline_params(1, 4, "file:///work/other.py"))
    assert result is None or not result.items
    status = await down_client.protocol.send_request_async("dlm/status", {})
    assert status.lastBackend == "none"


def test_an_ar_shaped_model_through_triton_in_batches_equals_the_local_model(tmp_path):
    """Concurrent requests (Triton batches them; the sampler fills a batch in lockstep) get
    exactly the completions the local model gives one at a time — with a model shaped as
    the shipped one is (an imported AR model: shifted predictions, a causal canvas, grouped
    key/value heads, no suffix), whose anchors the served model derives from positions.

    Not healed on either side: healing constrains the first canvas positions with their
    logits, which a remote completion does not ship. The local model also stops a hole once
    its scope closes, the remote one runs to the end of the canvas: the postprocessed
    completions are the same.
    """
    from concurrent.futures import ThreadPoolExecutor

    from dlm_lsp.engine import Engine
    from dlm_lsp.remote.failover import remote_engine
    from dlm_lsp.settings import Settings
    from tests.causal_model import build_exported_model

    model = build_exported_model(tmp_path / "model", sharpness=4.0, shift=True,
                                 canvas_attention="causal", reads_suffix=False)
    prompts = ["def mean(xs):\n    ", "import os\n\nfor name in os.listdir('.'):\n    ",
               "class Point:\n    def __init__(self, x, y):\n        ",
               "def add(a, b):\n    return ", "x = [1, 2, 3]\ny = ", "with open(path) as f:\n    ",
               "if __name__ == '__main__':\n    ", "try:\n    import numpy\nexcept "]
    # and no reranking on either side: a remote completion is the loop's canvas as it is (the
    # engine reranks a local model's candidates only, emptyRerank included)
    local = Engine(model, Settings(token_healing=False, suffix_rerank=0, empty_rerank=0))

    def fill(engine, prompt):
        return engine.fill_text(prompt, [(len(prompt), len(prompt))], "python")

    expected = [fill(local, p) for p in prompts]
    assert all(r.raw[0] for r in expected)
    # one batch, by construction: Triton runs a batch once it is full (max_batch_size), and
    # waits up to a minute for the eight requests to fill it, however slowly they come
    repo = write_repository(model, tmp_path / "repo",
                            RepoSettings(kind="cpu", max_batch_size=len(prompts),
                                         max_queue_delay_us=60_000_000))
    with LocalTriton(repo, tmp_path) as served:
        engine = remote_engine(Settings(remote=served.grpc_url))
        with ThreadPoolExecutor(len(prompts)) as pool:
            results = list(pool.map(lambda p: fill(engine, p), prompts))
        answered, executions = (int(re.search(
            rf'{name}\{{model="dlm_complete",version="1"\}} (\d+)', served.metrics()).group(1))
            for name in ("nv_inference_request_success", "nv_inference_exec_count"))
    assert [r.completions for r in results] == [r.completions for r in expected]
    # the same tokens: the local model stopped where its scope closed, the remote one went on
    for remote, here in zip(results, expected):
        assert remote.raw[0].startswith(here.raw[0])
    assert {r.backend for r in results} == {"remote"}
    assert answered == len(prompts) and executions == 1  # all eight in one batch


def test_a_cancelled_or_slow_remote_request_returns_at_once(triton: LocalTriton):
    """Cancellation reaches a waiting request between polls; a timeout is a RemoteError; the
    server answers the next request either way.

    Told by order of events, not by the clock: while GATE/hold exists the served model holds
    its decoder step (tests/triton_gate.py) until its client cancels or the gate opens, so the
    server cannot answer before the client gives up.
    """
    import time

    from dlm_lsp.layout import build_layout
    from dlm_lsp.modelcard import load_card
    from dlm_lsp.remote.client import RemoteError, TritonDenoiser
    from dlm_lsp.sampler import Cancelled, SamplerSettings

    card = load_card(SERVED)
    specials = card.special_tokens
    layout = build_layout([[5, 6], [7]], [32], specials.file)
    settings = SamplerSettings(max_steps=32)
    remote = TritonDenoiser(triton.grpc_url, timeout_s=30)
    full = remote.denoise_request(layout, specials, settings, lambda: False)
    assert full.steps > 5  # one committed token per step: there are steps to cancel between
    hold, held = GATE / "hold", GATE / "held"
    stopped = triton.tail(10**6).count("cancelled by their clients")
    hold.touch()
    try:
        with pytest.raises(Cancelled):  # cancelled once the server holds a step: it cannot
            remote.denoise_request(layout, specials, settings, held.exists)  # have answered
        began = time.monotonic()
        while triton.tail(10**6).count("cancelled by their clients") == stopped:
            assert time.monotonic() - began < 60, triton.tail()  # the server stops too
            time.sleep(0.05)
        hasty = TritonDenoiser(triton.grpc_url, timeout_s=0.02)
        with pytest.raises(RemoteError):  # held: no answer can come within any timeout
            hasty.denoise_request(layout, specials, settings, lambda: False)
    finally:
        hold.unlink(missing_ok=True)
    assert remote.denoise_request(layout, specials, settings, lambda: False) == full


def test_one_shot_complete_asks_the_server(triton: LocalTriton, tmp_path):
    """`dlm-lsp --remote URL complete` uses the served model (no fallback), and a home where
    the card cannot be cached does not stop it."""
    import json
    import os
    import subprocess

    source = tmp_path / "f.py"
    source.write_text("def f(xs):\n    \n")
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    env = dict(os.environ, XDG_CACHE_HOME=str(blocked))
    command = [sys.executable, "-m", "dlm_lsp", "--remote", triton.grpc_url, "complete",
               str(source), "--line", "2", "--col", "5", "--json"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["text"] == BLOCK and answer["provider"] == f"remote {triton.grpc_url}"
    command[command.index(triton.grpc_url)] = DOWN
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and DOWN in done.stderr and "Traceback" not in done.stderr
