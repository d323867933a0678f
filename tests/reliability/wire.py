"""A raw JSON-RPC client over a server's stdio: bytes in, framed messages out.

pytest-lsp's client only sends what lsprotocol can type; the reliability tests must also send
what no well-behaved client would (malformed JSON, invalid UTF-8, lone surrogates, unknown
methods, ids that collide), so this client writes Content-Length frames itself. A reader thread
parses every frame the server writes and files it: responses by id (counting them, to prove
"exactly one response per request"), notifications and server requests in order. Server
requests (e.g. `window/workDoneProgress/create`) are answered with a null result, as an editor
would.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[2]


class ServerDied(AssertionError):
    """The server process exited while a test still talked to it."""


def frame(body: bytes) -> bytes:
    """One Content-Length framed message."""
    return b"Content-Length: %d\r\n\r\n" % len(body) + body


def encode(message: Any) -> bytes:
    """JSON body; lone surrogates are written as \\uXXXX escapes (valid JSON, invalid UTF-16)."""
    return json.dumps(message, ensure_ascii=True).encode("ascii")


class WireServer:
    """A server subprocess and a raw client to it."""

    def __init__(self, argv: list[str], *, stderr_path: Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.argv = argv
        self.stderr_path = stderr_path
        self._stderr = open(stderr_path, "wb") if stderr_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
            cwd=REPO, env={**os.environ, **(env or {})}, bufsize=0,
        )
        self.ps = psutil.Process(self.proc.pid)
        self._ids = itertools.count(1)
        self._lock = threading.Condition()
        self._write_lock = threading.Lock()
        self.responses: dict[Any, list[dict]] = defaultdict(list)
        self.notifications: list[dict] = []
        self.server_requests: list[dict] = []
        self.order: list[Any] = []  # response ids in the order the server wrote them
        self.answered_at: dict[Any, float] = {}  # first response's arrival (perf_counter)
        self.sent_requests: dict[Any, str] = {}
        self.unparsed: list[bytes] = []
        self.bytes_sent = 0
        self.messages_sent = 0
        self._reader = threading.Thread(target=self._read, name="wire-reader", daemon=True)
        self._reader.start()

    # -- reading --------------------------------------------------------------------------------

    def _read(self) -> None:
        stream = self.proc.stdout
        assert stream is not None
        while True:
            length = None
            while True:
                line = stream.readline()
                if not line:
                    with self._lock:
                        self._lock.notify_all()
                    return
                if line in (b"\r\n", b"\n"):
                    break
                name, _, value = line.decode("ascii", "replace").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            if length is None:
                continue
            body = b""
            while len(body) < length:
                chunk = stream.read(length - len(body))
                if not chunk:
                    return
                body += chunk
            try:
                message = json.loads(body)
            except ValueError:
                self.unparsed.append(body)
                continue
            self._file(message)

    def _file(self, message: dict) -> None:
        if "method" in message and "id" in message:
            self.server_requests.append(message)
            self.send({"jsonrpc": "2.0", "id": message["id"], "result": None})
            return
        with self._lock:
            if "method" in message:
                self.notifications.append(message)
            else:
                key = _key(message.get("id"))
                self.responses[key].append(message)
                self.answered_at.setdefault(key, time.perf_counter())
                self.order.append(key)
            self._lock.notify_all()

    # -- writing --------------------------------------------------------------------------------

    def send_bytes(self, data: bytes) -> None:
        """Write raw bytes (a frame, or garbage)."""
        if self.proc.poll() is not None:
            raise ServerDied(f"server exited with {self.proc.returncode}; {self.stderr_tail()}")
        with self._write_lock:
            assert self.proc.stdin is not None
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
            self.bytes_sent += len(data)
            self.messages_sent += 1

    def send(self, message: Any) -> None:
        """Frame and write one JSON message."""
        self.send_bytes(frame(encode(message)))

    def notify(self, method: str, params: Any = None) -> None:
        message = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        self.send(message)

    def request(self, method: str, params: Any = None, *, msg_id: Any = None,
                omit_params: bool = False) -> Any:
        """Send a request; returns its id (a fresh integer unless given)."""
        msg_id = next(self._ids) if msg_id is None else msg_id
        message = {"jsonrpc": "2.0", "id": msg_id, "method": method}
        if not omit_params:
            message["params"] = params
        self.sent_requests[_key(msg_id)] = method
        self.send(message)
        return msg_id

    def cancel(self, msg_id: Any) -> None:
        self.notify("$/cancelRequest", {"id": msg_id})

    # -- waiting --------------------------------------------------------------------------------

    def wait(self, msg_id: Any, timeout: float = 30.0) -> dict:
        """The (first) response to `msg_id`; AssertionError if none comes in time."""
        key = _key(msg_id)
        deadline = time.monotonic() + timeout
        with self._lock:
            while not self.responses.get(key):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"no response to request {msg_id!r} ({self.sent_requests.get(key)}) in "
                        f"{timeout:.0f}s; alive={self.alive()}; {self.stderr_tail()}")
                if self.proc.poll() is not None and not self._reader.is_alive():
                    raise ServerDied(f"server exited with {self.proc.returncode} before "
                                     f"answering {msg_id!r}; {self.stderr_tail()}")
                self._lock.wait(min(left, 0.5))
            return self.responses[key][0]

    def call(self, method: str, params: Any = None, timeout: float = 30.0) -> dict:
        """request + wait."""
        return self.wait(self.request(method, params), timeout)

    def wait_all(self, ids: list[Any], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        for msg_id in ids:
            self.wait(msg_id, max(0.1, deadline - time.monotonic()))

    def wait_notification(self, method: str, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                for message in self.notifications:
                    if message.get("method") == method:
                        return message
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {method} in {timeout:.0f}s; {self.stderr_tail()}")
                self._lock.wait(min(left, 0.5))

    def duplicates(self) -> dict[Any, int]:
        """Request ids answered more than once (should be empty)."""
        with self._lock:
            return {k: len(v) for k, v in self.responses.items() if len(v) > 1}

    def unanswered(self) -> list[Any]:
        with self._lock:
            return [k for k in self.sent_requests if not self.responses.get(k)]

    # -- the session ----------------------------------------------------------------------------

    def initialize(self, options: Any = None, capabilities: dict | None = None) -> dict:
        params = {"processId": os.getpid(), "rootUri": None,
                  "capabilities": capabilities or {}}
        if options is not None:
            params["initializationOptions"] = options
        result = self.call("initialize", params, timeout=60)
        self.notify("initialized", {})
        return result

    def open(self, uri: str, text: str, language: str = "python", version: int = 1) -> None:
        self.notify("textDocument/didOpen", {"textDocument": {
            "uri": uri, "languageId": language, "version": version, "text": text}})

    def change(self, uri: str, version: int, changes: list[dict]) -> None:
        self.notify("textDocument/didChange", {
            "textDocument": {"uri": uri, "version": version}, "contentChanges": changes})

    def inline(self, uri: str, line: int, character: int, **kw) -> Any:
        return self.request("textDocument/inlineCompletion", {
            "textDocument": {"uri": uri}, "position": {"line": line, "character": character},
            "context": {"triggerKind": 2}}, **kw)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stderr_tail(self, chars: int = 3000) -> str:
        if not self.stderr_path:
            return "(stderr not captured)"
        try:
            return "stderr tail:\n" + self.stderr_path.read_bytes()[-chars:].decode("utf-8", "replace")
        except OSError:
            return "(no stderr)"

    def rss(self) -> int:
        return self.ps.memory_info().rss

    def threads(self) -> int:
        return self.ps.num_threads()

    def close(self, timeout: float = 10.0) -> int | None:
        """shutdown + exit when it is alive; kill it if it does not go. Returns the exit code."""
        if self.alive():
            try:
                self.wait(self.request("shutdown", None), timeout)
                self.notify("exit")
                self.proc.wait(timeout)
            except (AssertionError, OSError, subprocess.TimeoutExpired):
                pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout)
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()  # type: ignore[union-attr]
            except OSError:
                pass
        if self._stderr not in (None, subprocess.DEVNULL):
            self._stderr.close()  # type: ignore[union-attr]
        return self.proc.returncode

    def __enter__(self) -> WireServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _key(msg_id: Any) -> Any:
    """Ids as dictionary keys (JSON ids are str or int; anything else by its JSON text)."""
    if isinstance(msg_id, (str, int)) and not isinstance(msg_id, bool):
        return msg_id
    return json.dumps(msg_id)


def server_argv(*args: str, log_level: str = "info") -> list[str]:
    """`python -m dlm_lsp` with arguments."""
    return [sys.executable, "-m", "dlm_lsp", "--log-level", log_level, *args]


def probe_argv(*args: str, log_level: str = "info") -> list[str]:
    """The real server plus the reliability probe requests (see probe_server.py)."""
    return [sys.executable, str(Path(__file__).with_name("probe_server.py")),
            "--log-level", log_level, *args]
