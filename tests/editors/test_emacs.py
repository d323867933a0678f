"""Emacs + eglot with editors/emacs/dlm-eglot.el, in batch mode: completion-at-point's
candidates and `dlm-fill-holes`. Optional: CI does not install Emacs, so a machine without
Emacs 28+ and eglot skips it (`apt-get install -y emacs-nox elpa-eglot` to run it)."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from editor_support import REPO, ServerUnderTest, run_checked


@pytest.fixture(scope="module")
def emacs() -> str:
    path = shutil.which("emacs")
    if path is None:
        pytest.skip("emacs is not installed (optional: apt-get install -y emacs-nox elpa-eglot)")
    probe = subprocess.run(
        [path, "--batch", "-Q", "--eval",
         "(progn (dolist (d (file-expand-wildcards \"/usr/share/emacs/site-lisp/elpa/*\"))"
         " (add-to-list 'load-path d)) (require 'eglot))"],
        capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip("eglot is not installed (optional: apt-get install -y elpa-eglot)")
    return path


def test_eglot_e2e(emacs: str, server: ServerUnderTest) -> None:
    done = run_checked([emacs, "--batch", "-Q", "-l", "editors/emacs/tests/e2e.el"], cwd=REPO,
                       timeout=180, env=server.env(), expect="DLM EMACS E2E OK")
    print(done.stdout)
