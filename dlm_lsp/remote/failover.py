"""The remote engine while its server answers; the local model (or empty answers) when not.

`FailoverEngine` stands where the server expects an `Engine`. Each request goes to the remote
engine (a Triton server; the card and tokenizer are fetched on first use) unless the server
failed within the last `retry_s`; when it fails — unreachable, an error, a timeout — the user
gets one warning per outage, the request is answered by the fallback (`remote_fallback`:
"local", the model on this machine, loaded on first need; or "empty"), and the server is tried
again after `retry_s`. The last result says which backend answered.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Any, Callable

from ..engine import CompletionResult, Engine, FillResult, NewestWins
from ..modelcard import ModelError
from ..settings import Settings
from .client import RemoteError, TritonDenoiser

log = logging.getLogger(__name__)

RETRY_S = 30.0  # after a failure, the server is asked again this much later


def remote_engine(settings: Settings) -> Engine:
    """An engine whose denoiser is the Triton server named by `settings.remote`."""
    denoiser = TritonDenoiser(settings.remote or "", timeout_s=settings.remote_timeout_ms / 1000)
    card = denoiser.fetch_card()
    return Engine(settings=settings, denoiser=denoiser, card=card)


def local_engine(settings: Settings) -> Engine:
    """The engine of the model on this machine (`settings.remote` is None)."""
    return Engine(settings=settings)


class _NoContexts:
    """No engine yet, so no encoded contexts."""

    nbytes = 0

    def __len__(self) -> int:
        return 0


_NO_CONTEXTS = _NoContexts()


class FailoverEngine:
    """An engine that asks a remote server first and falls back when it cannot answer."""

    def __init__(self, settings: Settings, *, warn: Callable[[str], None] | None = None,
                 remote_factory: Callable[[Settings], Engine] = remote_engine,
                 local_factory: Callable[[Settings], Engine] = local_engine,
                 retry_s: float = RETRY_S, clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self.warn = warn or (lambda message: None)
        self._make_remote, self._make_local = remote_factory, local_factory
        self.retry_s, self.clock = retry_s, clock
        self._remote: Engine | None = None
        self._local: Engine | None = None
        self._down_until = float("-inf")
        self._outage = False  # warned about the current outage
        self._lock = threading.Lock()
        self._requests = NewestWins()
        self.last_engine: Engine | None = None
        self.remote_error: str | None = None

    # -- what the server reads --------------------------------------------------------------

    @property
    def settings(self) -> Settings:
        return self._settings

    @property
    def card(self) -> Any:
        engine = self.last_engine or self._remote or self._local
        return engine.card if engine is not None else None

    @property
    def provider(self) -> str:
        engine = self.last_engine or self._remote or self._local
        return engine.provider if engine is not None else f"remote {self._settings.remote}"

    @property
    def contexts(self) -> Any:
        """The answering engine's encoded-context cache (for `dlm/status`)."""
        engine = self.last_engine or self._remote or self._local
        return engine.contexts if engine is not None else _NO_CONTEXTS

    def supersede(self, key: str) -> Callable[[], bool]:
        """Start a new request on `key`; the check turns true once a newer one started."""
        return self._requests.start(key)

    def forget(self, key: str) -> None:
        self._requests.forget(key)
        for engine in (self._remote, self._local):
            if engine is not None:
                engine.forget(key)

    # -- requests ---------------------------------------------------------------------------

    def complete(self, snapshot, offset: int, settings: Settings | None = None, *,
                 cancelled=lambda: False) -> CompletionResult:
        return self._answer("complete", (snapshot, offset), settings, cancelled,
                            lambda: CompletionResult(None, backend="none"))

    def fill(self, snapshot, ranges, settings: Settings | None = None, *,
             cancelled=lambda: False) -> FillResult:
        return self._answer("fill", (snapshot, ranges), settings, cancelled,
                            lambda: FillResult([], backend="none"))

    def fill_markers(self, snapshot, marker: str, settings: Settings | None = None, *,
                     cancelled=lambda: False) -> FillResult:
        return self._answer("fill_markers", (snapshot, marker), settings, cancelled,
                            lambda: FillResult([], backend="none"))

    def _answer(self, method: str, args: tuple, settings: Settings | None, cancelled,
                empty: Callable[[], Any]) -> Any:
        """The remote engine's answer under this request's `settings`; the local one's (or
        `empty()`) while the remote cannot answer."""
        settings = settings or self._settings
        remote = self._remote_engine()
        if remote is not None:
            try:
                result = getattr(remote, method)(*args, settings, cancelled=cancelled)
            except RemoteError as exc:
                self._failed(exc)
            else:
                self._recovered()
                self.last_engine = remote
                return result
        if settings.remote_fallback != "local":
            return empty()
        local = self._local_engine()
        self.last_engine = local
        return getattr(local, method)(*args, dataclasses.replace(settings, remote=None),
                                      cancelled=cancelled)

    def _remote_engine(self) -> Engine | None:
        """The remote engine, or None while the server is believed down."""
        if self.clock() < self._down_until:
            return None
        if self._remote is None:
            with self._lock:
                if self._remote is None:
                    try:
                        self._remote = self._make_remote(self._settings)
                    except ModelError as exc:  # unreachable (RemoteError), or a bad card
                        self._failed(exc)
                        return None
        return self._remote

    def _local_engine(self) -> Engine:
        with self._lock:
            if self._local is None:
                self._local = self._make_local(dataclasses.replace(self._settings, remote=None))
            return self._local

    def _failed(self, exc: Exception) -> None:
        self._down_until = self.clock() + self.retry_s
        self.remote_error = str(exc)
        fallback = ("the local model" if self._settings.remote_fallback == "local"
                    else "no completions")
        log.warning("remote %s failed: %s; %s for %.0f s", self._settings.remote, exc, fallback,
                    self.retry_s)
        if not self._outage:
            self._outage = True
            self.warn(f"dlm-lsp: the completion server {self._settings.remote} cannot answer "
                      f"({exc}); using {fallback} until it can (retrying every "
                      f"{self.retry_s:.0f} s)")

    def _recovered(self) -> None:
        if self._outage:
            log.info("remote %s answers again", self._settings.remote)
        self._outage, self.remote_error = False, None
