"""Security: the server never executes buffer content, and `--tcp` stays on loopback unless told.

The sandbox that runs generated code for evaluation (dlm_lsp/measure/sandbox.py) is tested by
tests/test_sandbox.py: sockets refused, fork bombs contained, unbounded allocation stopped,
runaway loops killed, nothing inherited. Nothing is missing there for this issue.
"""

from __future__ import annotations

import ast
import json
import logging
import socket
import sys
import time
from pathlib import Path

import psutil
import pytest

from .wire import REPO, WireServer

# Modules the running server imports. evaluate.py, bench.py and sandbox.py are the measure tools.
SERVER_MODULES = ["server.py", "engine.py", "documents.py", "plan.py", "postprocess.py",
                  "sampler.py", "cache.py", "settings.py", "languages.py", "layout.py",
                  "modelcard.py", "cli.py", "runtime/onnx.py", "runtime/__init__.py"]
FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__", "system", "popen", "Popen", "run",
                   "call", "check_call", "check_output", "spawnv", "execv", "execve", "fork",
                   "loads"}
FORBIDDEN_MODULES = {"subprocess", "pickle", "marshal", "shelve", "ctypes", "runpy"}
# reviewed exceptions: (module file, imported module) and why
ALLOWED_IMPORTS = {("runtime/onnx.py", "ctypes")}  # CDLL("libcuda.so.1"): a fixed name, no input

# Buffer content that leaves a mark if anything executes it.
def _payloads(marker: Path) -> str:
    return (
        f"import pathlib; pathlib.Path({str(marker)!r}).write_text('executed')\n"
        f"__import__('os').system('touch {marker}')\n"
        f"exec(\"open({str(marker)!r}, 'w').write('x')\")\n"
        "def f(x):\n    <|hole|>\n"
        "# {{ 7*7 }} ${jndi:ldap://127.0.0.1/x} $(touch /tmp/never) `touch /tmp/never`\n"
        "def g(y):\n    "
    )


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else \
                func.attr if isinstance(func, ast.Attribute) else None
            owner = func.value.id if isinstance(func, ast.Attribute) and \
                isinstance(func.value, ast.Name) else None
            yield name, owner, node.lineno


def test_server_modules_have_no_code_execution_or_process_spawning():
    problems = []
    for name in SERVER_MODULES:
        path = REPO / "dlm_lsp" / name
        if not path.exists():
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) \
                    else [node.module or ""]
                for module in modules:
                    if module.split(".")[0] in FORBIDDEN_MODULES and \
                            (name, module) not in ALLOWED_IMPORTS:
                        problems.append(f"{name}:{node.lineno} imports {module}")
        for call, owner, line in _calls(tree):
            if call in FORBIDDEN_CALLS:
                if call == "loads" and owner == "json":
                    continue
                if call == "run" and owner in ("asyncio",):
                    continue
                if call == "compile" and owner == "re":
                    continue
                problems.append(f"{name}:{line} calls {owner + '.' if owner else ''}{call}")
    assert not problems, problems


AUDIT_WRAPPER = r"""
import json, os, sys
LOG = os.environ["DLM_AUDIT_LOG"]
MARK = os.environ["DLM_AUDIT_MARK"]
WATCH = ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
         "os.forkpty", "pty.spawn", "socket.connect", "socket.bind")
def hook(event, args):
    hit = event in WATCH
    if event in ("compile", "exec"):
        source = args[0]
        text = source if isinstance(source, (str, bytes)) else repr(getattr(source, "co_consts", ""))
        hit = MARK in (text.decode("utf-8", "replace") if isinstance(text, bytes) else text)
    elif event == "open" and isinstance(args[0], str) and MARK in args[0]:
        hit = True
    if hit:
        with open(LOG, "a") as out:
            out.write(json.dumps([event, repr(args)[:300]]) + "\n")
sys.addaudithook(hook)
sys.argv = ["dlm-lsp", *sys.argv[1:]]
import runpy
runpy.run_module("dlm_lsp", run_name="__main__", alter_sys=True)
"""


def test_buffer_content_is_never_executed(synthetic_model, tmp_path):
    """Every completion path over hostile buffers; an audit hook records any exec/compile of the
    buffer, any process spawned and any socket opened, and the marker file never appears."""
    marker = tmp_path / "EXECUTED-MARKER"
    audit = tmp_path / "audit.jsonl"
    wrapper = tmp_path / "audited_server.py"
    wrapper.write_text(AUDIT_WRAPPER)
    argv = [sys.executable, str(wrapper), "--model", str(synthetic_model), "--log-level", "warning"]
    env = {"DLM_AUDIT_LOG": str(audit), "DLM_AUDIT_MARK": marker.name}
    with WireServer(argv, stderr_path=tmp_path / "stderr.log", env=env) as server:
        server.initialize()
        text = _payloads(marker)
        for language, uri in (("python", "file:///p.py"), ("javascript", "file:///p.js"),
                              ("plaintext", "file:///p.txt")):
            server.open(uri, text, language)
            last = text.count("\n")
            ids = [server.inline(uri, last, 4), server.inline(uri, 0, 10),
                   server.request("textDocument/completion", {
                       "textDocument": {"uri": uri}, "position": {"line": last, "character": 4}}),
                   server.request("dlm/fill", {"textDocument": {"uri": uri}}),
                   server.request("workspace/executeCommand", {
                       "command": "dlm.fill", "arguments": [{"textDocument": {"uri": uri}}]})]
            server.wait_all(ids)
        assert server.alive()
    assert not marker.exists(), "buffer content was executed"
    events = audit.read_text().splitlines() if audit.exists() else []
    assert not events, events


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_tcp_binds_loopback_by_default_and_says_so(synthetic_model, tmp_path):
    port = _free_port()
    stderr = tmp_path / "stderr.log"
    argv = [sys.executable, "-m", "dlm_lsp", "--tcp", str(port), "--model", str(synthetic_model),
            "--log-level", "warning"]
    server = WireServer(argv, stderr_path=stderr)
    try:
        deadline = time.monotonic() + 30
        listening = []
        while time.monotonic() < deadline and not listening:
            time.sleep(0.2)
            assert server.alive(), server.stderr_tail()
            listening = [c for c in server.ps.net_connections(kind="inet")
                         if c.status == psutil.CONN_LISTEN]
        assert listening, "the server never listened"
        assert {c.laddr.ip for c in listening} == {"127.0.0.1"}, listening
        assert {c.laddr.port for c in listening} == {port}
        assert f"tcp://127.0.0.1:{port}" in stderr.read_text()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "processId": None, "rootUri": None, "capabilities": {}}}).encode()
            conn.sendall(b"Content-Length: %d\r\n\r\n" % len(body) + body)
            conn.settimeout(30)
            answer = b""
            while b'"id": 1' not in answer:  # the frame may come in several reads
                chunk = conn.recv(65536)
                assert chunk, f"connection closed after {answer!r}"
                answer += chunk
    finally:
        server.proc.kill()
        server.close()


def test_tcp_on_another_host_only_when_told_and_with_a_warning(monkeypatch, caplog):
    from dlm_lsp import cli

    assert cli._parse_tcp("4389") == ("127.0.0.1", 4389)
    assert cli._parse_tcp(":4389") == ("127.0.0.1", 4389)
    calls = []

    class FakeServer:
        def start_tcp(self, host, port):
            calls.append((host, port))

        def start_io(self):  # pragma: no cover
            raise AssertionError("not stdio")

    monkeypatch.setattr("dlm_lsp.server.create_server", lambda *a, **k: FakeServer())
    with caplog.at_level(logging.WARNING, logger="dlm_lsp"):
        cli.serve(cli.build_parser().parse_args(["--tcp", "0.0.0.0:4389"]))
    assert calls == [("0.0.0.0", 4389)]
    assert "NOT loopback" in caplog.text
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["--tcp", "99999"])
