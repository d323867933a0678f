"""The evaluation sandbox: what generated code can and cannot do."""

from __future__ import annotations

import os
import random
import re
import socket
import threading
import time

import psutil
import pytest

from dlm_lsp.measure.sandbox import SandboxLimits, _unshare_flags, run_python

FAST = SandboxLimits(timeout_s=3.0, cpu_s=3, memory_mb=512, max_processes=16)


def _listener() -> tuple[socket.socket, int]:
    """A TCP server on the host's loopback that accepts anything (proves the host can connect)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(5)

    def accept() -> None:
        try:
            while True:
                conn, _ = server.accept()
                conn.close()
        except OSError:
            pass

    threading.Thread(target=accept, daemon=True).start()
    return server, server.getsockname()[1]


CONNECT = """\
import socket
try:
    socket.create_connection(("127.0.0.1", {port}), timeout=2).close()
    print("CONNECTED")
except Exception as exc:
    print("REFUSED", type(exc).__name__, exc)
"""


def test_runs_a_program_and_captures_its_output():
    result = run_python("import sys\nprint('out')\nprint('err', file=sys.stderr)", FAST)
    assert result.outcome == "passed" and result.returncode == 0
    assert result.stdout == "out\n" and result.stderr == "err\n"


def test_a_failing_program_is_failed_with_its_traceback():
    result = run_python("assert 1 == 2, 'nope'", FAST)
    assert result.outcome == "failed"
    assert "AssertionError: nope" in result.stderr


def test_output_is_bounded():
    limits = SandboxLimits(timeout_s=5.0, output_chars=1000, max_file_mb=1)
    result = run_python("while True:\n    print('x' * 100)", limits)
    assert result.outcome != "passed"
    assert len(result.stdout) < 1100 and result.stdout.endswith("[... output truncated ...]")


def test_network_is_refused():
    server, port = _listener()
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()  # the host can
        result = run_python(CONNECT.format(port=port), FAST)
    finally:
        server.close()
    assert "REFUSED" in result.stdout, result
    assert result.isolation["net_namespace"] or result.isolation["socket_audit_hook"]


@pytest.mark.skipif(_unshare_flags() is None, reason="no network namespace on this machine")
def test_network_namespace_alone_refuses_network():
    server, port = _listener()
    try:
        result = run_python(CONNECT.format(port=port), FAST, block_sockets=False)
    finally:
        server.close()
    assert result.isolation["net_namespace"] and not result.isolation["socket_audit_hook"]
    assert "REFUSED" in result.stdout, result


def test_audit_hook_alone_refuses_sockets():
    result = run_python(CONNECT.format(port=9), FAST, block_sockets=True)
    assert "REFUSED PermissionError" in result.stdout, result


def test_runaway_loop_is_killed_on_time():
    # the wall clock's 0.5 s come long before the CPU limit's 60 s, however busy the machine
    # (CPU time never runs ahead of wall time); only a hang reaches the 10 s bound
    started = time.monotonic()
    result = run_python("while True:\n    pass", SandboxLimits(timeout_s=0.5, cpu_s=60))
    assert result.outcome == "timeout" and result.returncode is None
    assert time.monotonic() - started < 10.0


def test_cpu_limit_kills_a_spinning_program():
    # one CPU-second arrives before the 120 s wall clock unless the program gets < 1 % of a core
    result = run_python("while True:\n    pass", SandboxLimits(timeout_s=120.0, cpu_s=1))
    assert result.outcome == "killed", result


def test_unbounded_allocation_is_stopped():
    program = "blocks = []\nwhile True:\n    blocks.append(bytearray(50 * 1024 * 1024))"
    result = run_python(program, SandboxLimits(timeout_s=120.0, memory_mb=300))
    assert result.outcome == "memory", result  # stopped by the limit, not by the clock


def _leftovers(marker: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if marker in " ".join(process.info["cmdline"] or []):
            found.append(process)
    return found


def test_fork_bomb_is_contained_and_leaves_nothing_behind():
    marker = f"0.{random.randrange(10**8, 10**9)}"
    # 200 fork attempts whose children become `sleep` (survivors are easy to find), each
    # success counted on stdout; then every process forks forever. Counted, not timed: how
    # far it got before the timeout does not matter, the count it printed is the truth.
    program = f"""\
import os
count = 0
for _ in range(200):
    try:
        pid = os.fork()
    except OSError:
        continue
    if pid == 0:
        os.execv("/bin/sleep", ["sleep", "100", "{marker}"])
    count += 1
    print("FORKED", count, flush=True)
while True:
    try:
        os.fork()
    except OSError:
        pass
"""
    limits = SandboxLimits(timeout_s=1.0, max_processes=16)
    started = time.monotonic()
    result = run_python(program, limits)
    assert result.outcome in ("timeout", "killed")
    assert time.monotonic() - started < 30.0  # a hang guard
    forked = max(map(int, re.findall(r"^FORKED (\d+)$", result.stdout, re.M)), default=0)
    if result.isolation["pids_cgroup"] or os.geteuid() != 0:  # a hard ceiling is in force
        assert forked < limits.max_processes
    deadline = time.monotonic() + 30.0  # a hang guard: killed processes go at once
    while _leftovers(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _leftovers(marker)


def test_nothing_is_inherited(monkeypatch):
    monkeypatch.setenv("DLM_SECRET_TOKEN", "hunter2")
    reader, writer = os.pipe()  # an inheritable-looking descriptor must not leak
    os.set_inheritable(writer, True)
    try:
        program = (
            "import os\n"
            "print(sorted(os.environ))\n"
            "print(sorted(int(fd) for fd in os.listdir('/proc/self/fd')))\n"
            "print(sorted(os.listdir('.')))\n"
        )
        result = run_python(program, FAST)
    finally:
        os.close(reader)
        os.close(writer)
    env_line, fd_line, files_line = result.stdout.splitlines()
    assert "DLM_SECRET_TOKEN" not in env_line
    assert eval(fd_line)[:3] == [0, 1, 2] and len(eval(fd_line)) <= 4  # + listdir's own fd
    assert eval(files_line) == ["main.py"]
