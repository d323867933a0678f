"""The client side of a remote completion: a runtime whose server runs the whole denoise loop.

`TritonDenoiser` stands where an `OnnxDenoiser` would: the engine plans, tokenizes, caches and
postprocesses as always, and hands the layout to `denoise_request`, one gRPC round trip to the
`dlm_complete` model. The model card and tokenizer come from the server's `dlm_card` model (and
are kept in a cache folder), so an editor needs only the server's address.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..layout import Layout
from ..modelcard import ModelCard, ModelError, SpecialTokens, parse_card
from ..sampler import Cancelled, DenoiseResult, SamplerSettings
from .wire import (CARD_FILES, CARD_MODEL, COMPLETE_MODEL, RESPONSE_OUTPUTS, WireError,
                   parse_remote_url, parse_response, request_tensors)

log = logging.getLogger(__name__)

POLL_S = 0.01  # how often a waiting request looks at its cancellation check


class RemoteError(ModelError):
    """The remote server could not answer: unreachable, failing, too slow, or not ours."""


def cache_root() -> Path:
    """Where fetched cards and tokenizers are kept."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "dlm-lsp" / "remote"


def _datatype(value: np.ndarray) -> str:
    return "BYTES" if value.dtype == np.object_ else {"int64": "INT64", "int32": "INT32",
                                                      "float32": "FP32"}[value.dtype.name]


def _save(folder: Path, files: dict[str, bytes]) -> None:
    """Write the card files into `folder` unless they are there (each write atomic)."""
    if all((folder / name).is_file() for name in files):
        return
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        partial = folder / f".{name}.{os.getpid()}"
        partial.write_bytes(content)
        partial.replace(folder / name)


class TritonDenoiser:
    """A remote runtime: `denoise_request` runs a whole completion on a Triton server."""

    def __init__(self, url: str, *, timeout_s: float = 10.0) -> None:
        try:
            import tritonclient.grpc as grpcclient
        except ImportError as exc:
            raise RemoteError("--remote needs tritonclient: pip install 'dlm-lsp[remote]'") from exc
        self._grpc = grpcclient
        self.url = url
        self.address = parse_remote_url(url)
        self.timeout_s = timeout_s
        self.provider = f"remote {url}"
        self.client = grpcclient.InferenceServerClient(self.address)

    def _inputs(self, tensors: dict[str, np.ndarray]) -> list[Any]:
        inputs = []
        for name, value in tensors.items():
            tensor = self._grpc.InferInput(name, list(value.shape), _datatype(value))
            tensor.set_data_from_numpy(value)
            inputs.append(tensor)
        return inputs

    def _infer(self, model: str, tensors: dict[str, np.ndarray], outputs: tuple[str, ...],
               cancelled: Callable[[], bool] = lambda: False) -> dict[str, np.ndarray]:
        """One inference, waiting at most `timeout_s`; Cancelled as soon as `cancelled()`."""
        done = threading.Event()
        answer: dict[str, Any] = {}

        def callback(result: Any, error: Any) -> None:
            answer["result"], answer["error"] = result, error
            done.set()

        try:
            context = self.client.async_infer(
                model, self._inputs(tensors), callback,
                outputs=[self._grpc.InferRequestedOutput(name) for name in outputs],
                client_timeout=self.timeout_s)
        except Exception as exc:
            raise RemoteError(f"{self.url}: {exc}") from exc
        deadline = time.monotonic() + self.timeout_s + 1.0
        while not done.wait(POLL_S):
            if cancelled():
                context.cancel()
                raise Cancelled
            if time.monotonic() > deadline:
                context.cancel()
                raise RemoteError(f"{self.url}: no answer in {self.timeout_s:.1f} s")
        if answer["error"] is not None:
            message = getattr(answer["error"], "message", lambda: str(answer["error"]))()
            raise RemoteError(f"{self.url} {model}: {message}")
        try:
            return {name: np.asarray(answer["result"].as_numpy(name)) for name in outputs}
        except Exception as exc:  # an output missing: not our model behind that name
            raise RemoteError(f"{self.url} {model}: {exc}") from exc

    def denoise_request(self, layout: Layout, specials: SpecialTokens,
                        settings: SamplerSettings, cancelled: Callable[[], bool]) -> DenoiseResult:
        """Fill every canvas of `layout` on the server: one round trip."""
        if cancelled():
            raise Cancelled
        outputs = self._infer(COMPLETE_MODEL, request_tensors(layout, settings),
                              RESPONSE_OUTPUTS, cancelled)
        try:
            return parse_response(outputs, layout, specials.end_of_span)
        except WireError as exc:
            raise RemoteError(f"{self.url}: {exc}") from exc

    def fetch_card(self, root: Path | None = None) -> ModelCard:
        """The served model's card, its tokenizer saved next to it in a cache folder."""
        files = {}
        for name in CARD_FILES:
            request = {"name": np.array([name.encode()], dtype=np.object_)}
            content = self._infer(CARD_MODEL, request, ("content",))["content"].reshape(-1)[0]
            files[name] = content if isinstance(content, bytes) else str(content).encode()
        digest = hashlib.sha256(b"".join(files[name] for name in CARD_FILES)).hexdigest()[:16]
        folder = (root or cache_root()) / digest
        try:
            _save(folder, files)
        except OSError as exc:  # a read-only home: a private folder for this process
            log.warning("cannot cache the served card in %s (%s)", folder, exc)
            folder = Path(tempfile.mkdtemp(prefix="dlm-lsp-card-"))
            _save(folder, files)
        try:
            raw = json.loads(files["model.json"])
        except ValueError as exc:
            raise RemoteError(f"{self.url}: the served model.json is not JSON ({exc})") from None
        raw["tokenizer"] = "tokenizer.json"  # saved under that name whatever the server's is
        try:
            return parse_card(raw, folder)
        except ModelError as exc:
            raise RemoteError(f"{self.url}: the served card: {exc}") from exc

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:
            pass
