"""The VS Code extension (editors/vscode): it installs from its lockfile, compiles, lints,
passes its unit tests, talks to the server over stdio the way VS Code's client does, and
packages to a .vsix."""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

import pytest
from editor_support import REPO, ServerUnderTest, missing, run_checked

EXTENSION = REPO / "editors" / "vscode"


@pytest.fixture(scope="module")
def npm() -> str:
    """`npm ci && npm run compile`, once for the module; the npm executable."""
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        missing("node/npm are not installed")
    env = dict(os.environ, npm_config_audit="false", npm_config_fund="false",
               npm_config_update_notifier="false")
    run_checked([npm, "ci", "--prefer-offline"], cwd=EXTENSION, timeout=400, env=env)
    run_checked([npm, "run", "compile"], cwd=EXTENSION, timeout=240)
    return npm


def test_lint(npm: str) -> None:
    run_checked([npm, "run", "lint"], cwd=EXTENSION, timeout=240)


def test_unit_and_e2e(npm: str, server: ServerUnderTest) -> None:
    """`npm test`: the unit tests, and the stdio session against the given server."""
    script = "test:e2e" if server.fake else "test"
    done = run_checked([npm, "run", script], cwd=EXTENSION, timeout=240, env=server.env())
    assert "# skipped 0" in done.stdout or "ℹ skipped 0" in done.stdout, done.stdout[-3000:]


def test_package(npm: str) -> None:
    """`vsce package` makes a .vsix with the compiled extension and its runtime dependency."""
    vsix = EXTENSION / "dlm-lsp.vsix"
    vsix.unlink(missing_ok=True)
    run_checked([npm, "run", "package"], cwd=EXTENSION, timeout=240)
    names = set(zipfile.ZipFile(vsix).namelist())
    assert "extension/out/src/extension.js" in names
    assert "extension/package.json" in names
    assert any(n.startswith("extension/node_modules/vscode-languageclient/") for n in names)
    assert not any(n.startswith("extension/out/test/") for n in names)


@pytest.mark.slow
def test_code_server_ghost_text(npm: str, tmp_path) -> None:
    """Real VS Code (code-server) in Debian's Chromium through playwright-core: the .vsix
    installs, typing in a Python file shows the fake server's ghost text, Tab accepts it.

    Needs what shared/recipes/code-server.md installs: CODE_SERVER (its out/node/entry.js),
    CODE_SERVER_NODE (node 22+), PLAYWRIGHT_CORE (the package's folder) and /usr/bin/chromium.
    Screenshots go to DLM_SCREENSHOT_DIR (default: the test's tmp folder)."""
    needed = {name: os.environ.get(name) for name in ("CODE_SERVER", "CODE_SERVER_NODE", "PLAYWRIGHT_CORE")}
    if not all(needed.values()) or shutil.which(os.environ.get("CHROMIUM", "chromium")) is None:
        pytest.skip(f"code-server, node 22+, playwright-core or chromium missing: {needed}")
    from editor_support import FAKE_SERVER
    import json
    import sys

    vsix = EXTENSION / "dlm-lsp.vsix"
    if not vsix.exists():
        run_checked([npm, "run", "package"], cwd=EXTENSION, timeout=240)
    shots = Path(os.environ.get("DLM_SCREENSHOT_DIR", str(tmp_path)))
    shots.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, VSIX=str(vsix), SCREENSHOT=str(shots / "code-server-ghost-text.png"),
               DLM_LSP_COMMAND=json.dumps([sys.executable, str(FAKE_SERVER)]))
    done = run_checked([needed["CODE_SERVER_NODE"], "test-browser/code-server.mjs"], cwd=EXTENSION,
                       timeout=400, env=env, expect="DLM BROWSER OK")
    print(done.stdout)
