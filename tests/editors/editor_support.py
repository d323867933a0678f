"""Shared pieces of the editor-client tests (imported by conftest.py and the tests): which server to drive, and the skip-or-fail rule.

Each editor test runs twice: against tests/editors/fake_dlm_server.py (exact texts) and
against the real `dlm-lsp` (shapes only: the tiny model's text is not predictable). A missing
toolchain (node, nvim) skips the test on a developer's machine and fails it under CI=true.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FAKE_SERVER = Path(__file__).resolve().parent / "fake_dlm_server.py"
IN_CI = os.environ.get("CI") == "true"


@dataclass(frozen=True)
class ServerUnderTest:
    """A server command line and whether it is the deterministic fake."""

    argv: list[str]
    fake: bool

    def env(self) -> dict[str, str]:
        """The environment the editor tests read the server from."""
        env = dict(os.environ)
        env["DLM_LSP_COMMAND"] = json.dumps(self.argv)
        env["DLM_LSP_FAKE"] = "1" if self.fake else "0"
        return env


def missing(what: str) -> None:
    """Skip for a missing tool or server, except in CI, where it is a failure."""
    if IN_CI:
        pytest.fail(f"{what} (CI=true: this test must run)")
    pytest.skip(what)


def real_server_argv() -> list[str] | None:
    """The real server: the console script beside this Python, else `python -m dlm_lsp`."""
    if importlib.util.find_spec("dlm_lsp") is None or importlib.util.find_spec("dlm_lsp.server") is None:
        return None
    script = Path(sys.executable).parent / "dlm-lsp"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "dlm_lsp"]


def run_checked(argv: list[str], *, cwd: Path, timeout: float, env: dict[str, str] | None = None,
                expect: str | None = None) -> subprocess.CompletedProcess[str]:
    """Runs a command, failing the test with its output when it fails or `expect` is absent."""
    try:
        done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"").decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        pytest.fail(f"{' '.join(argv)} timed out after {timeout} s\n{out[-6000:]}")
    output = done.stdout + done.stderr
    if done.returncode != 0 or (expect is not None and expect not in output):
        pytest.fail(f"{' '.join(argv)} exited {done.returncode} in {cwd}\n{output[-8000:]}")
    return done
