"""The `server` fixture of the editor-client tests: the fake, then the real dlm-lsp."""

from __future__ import annotations

import sys

import pytest
from editor_support import FAKE_SERVER, ServerUnderTest, missing, real_server_argv


@pytest.fixture(params=["fake", "real"])
def server(request: pytest.FixtureRequest) -> ServerUnderTest:
    """The server an editor test drives (parametrised: fake, real)."""
    if request.param == "fake":
        return ServerUnderTest([sys.executable, str(FAKE_SERVER)], fake=True)
    argv = real_server_argv()
    if argv is None:
        missing("dlm_lsp.server is not importable")
    return ServerUnderTest(argv, fake=False)
