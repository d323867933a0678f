"""The `server` fixture of the editor-client tests: the fake, then the real dlm-lsp.

The real server runs with a synthetic model (the real runtime over tiny ONNX graphs that always
fill the first hole with SYNTHETIC_ANSWER): the editors' tests then check what the client does
with real answers, whatever the shipped model's quality.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from editor_support import FAKE_SERVER, ServerUnderTest, missing, real_server_argv

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.reliability.synthetic_model import build_synthetic_model  # noqa: E402

SYNTHETIC_ANSWER = "result = a\n    return result"


@pytest.fixture(scope="session")
def synthetic_model(tmp_path_factory) -> Path:
    return build_synthetic_model(tmp_path_factory.mktemp("editor-model"), answer=SYNTHETIC_ANSWER)


@pytest.fixture(params=["fake", "real"])
def server(request: pytest.FixtureRequest, synthetic_model: Path) -> ServerUnderTest:
    """The server an editor test drives (parametrised: fake, real)."""
    if request.param == "fake":
        return ServerUnderTest([sys.executable, str(FAKE_SERVER)], fake=True)
    argv = real_server_argv()
    if argv is None:
        missing("dlm_lsp.server is not importable")
    return ServerUnderTest(argv + ["--model", str(synthetic_model)], fake=False)
