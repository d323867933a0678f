"""A served completion model that a test can hold still: `dlm_complete` whose decoder steps wait
at a gate, so that cancellation and timeouts are tested by order of events, not by how fast a
step is on this machine.

The gate is a folder. While GATE/hold exists, every decoder step first touches GATE/held and
then waits until GATE/hold is removed or every request of its batch was cancelled by its client.
The request is then cancelled (or released) at a known point: the server cannot answer before.

`gate_repository` rewrites a repository's `dlm_complete/1/model.py` to serve `GatedCompleteModel`
(the Python backend's stub imports it from this checkout).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from dlm_lsp.remote.triton_model import CompleteModel
from dlm_lsp.remote.wire import COMPLETE_MODEL

REPO = Path(__file__).resolve().parents[1]
POLL_S = 0.005  # how often a held step looks at the gate and its requests

MODEL_PY = '''"""Written by tests/triton_gate.py: dlm_complete with a gate at every decoder step."""

import sys

sys.path.insert(0, {repo!r})

from tests.triton_gate import gated_model  # noqa: E402

TritonPythonModel = gated_model({gate!r})
'''


class GatedRuntime:
    """The served runtime with a gate before each decoder step (everything else delegated)."""

    def __init__(self, inner: Any, gate: Path) -> None:
        self.inner = inner
        self.gate = gate
        self.cancelled: list[Callable[[], bool]] = []  # the current batch's client checks

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _wait(self) -> None:
        hold = self.gate / "hold"
        if not hold.exists():
            return
        (self.gate / "held").touch()
        while hold.exists() and not all(check() for check in self.cancelled):
            time.sleep(POLL_S)

    def denoise_step(self, *args: Any, **kwargs: Any) -> Any:
        self._wait()
        return self.inner.denoise_step(*args, **kwargs)

    def denoise_step_batch(self, *args: Any, **kwargs: Any) -> Any:
        self._wait()
        return self.inner.denoise_step_batch(*args, **kwargs)


def gated_model(gate: str) -> type:
    """`CompleteModel` whose runtime waits at `gate`, and which asks for cancellation before
    every step (no throttle: a released step is followed by a check that sees the cancel)."""

    class GatedCompleteModel(CompleteModel):
        cancel_check_s = 0.0

        def initialize(self, args: dict[str, str]) -> None:
            super().initialize(args)
            self.denoiser = GatedRuntime(self.denoiser, Path(gate))

        def execute(self, requests: list[Any]) -> list[Any]:
            self.denoiser.cancelled = [request.is_cancelled for request in requests
                                       if hasattr(request, "is_cancelled")]
            return super().execute(requests)

    return GatedCompleteModel


def gate_repository(repository: Path, gate: Path) -> Path:
    """Serve the gated model from `repository` (written by `write_repository`); the gate
    folder is made, open."""
    gate.mkdir(parents=True, exist_ok=True)
    (repository / COMPLETE_MODEL / "1" / "model.py").write_text(
        MODEL_PY.format(repo=str(REPO), gate=str(gate)))
    return gate
