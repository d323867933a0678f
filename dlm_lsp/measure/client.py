"""The benchmark's client: one `python -m dlm_lsp` process behind pygls' LanguageClient, driven
over stdio exactly as an editor drives it (didOpen, didChange, inlineCompletion, `dlm/status`).
Positions go over the wire in UTF-16 code units, counted as the server counts them.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from pathlib import Path
from typing import Any

from ..documents import Snapshot
from ..server import plain
from .samples import Sample

log = logging.getLogger(__name__)


def _snapshot(text: str) -> Snapshot:
    return Snapshot(uri="", language_id="", version=0, text=text, tree=None, syntax=None)


def utf16_position(text: str, offset: int) -> tuple[int, int]:
    """LSP (line, character) of a str offset, characters counted in UTF-16 code units (as the
    server counts them: `documents.Snapshot`)."""
    return _snapshot(text).position_at(offset)


def utf16_offset(text: str, line: int, character: int) -> int:
    """The str offset of an LSP (line, UTF-16 character) position, clamped to the line."""
    return _snapshot(text).offset_at(line, character)


class BenchServer:
    """One `python -m dlm_lsp` process behind a pygls LanguageClient."""

    def __init__(self, name: str, options: dict[str, Any], *, model: str | None,
                 device: str | None, log_path: Path | None, timeout_s: float) -> None:
        self.name = name
        self.options = options
        self.model = model
        self.device = device
        self.log_path = log_path
        self.timeout_s = timeout_s
        self.client: Any = None
        self.version = 0
        self._drain: asyncio.Task | None = None
        self._log = None

    async def start(self) -> dict[str, Any]:
        """Start and initialize the server; return its first `dlm/status`."""
        from lsprotocol import types
        from pygls.lsp.client import LanguageClient

        command = [sys.executable, "-m", "dlm_lsp", "--log-level", "warning"]
        if self.model:
            command += ["--model", str(self.model)]
        if self.device:
            command += ["--device", self.device]
        self.client = LanguageClient("dlm-lsp-bench", "1")
        await self.client.start_io(*command)
        self._log = open(self.log_path, "ab") if self.log_path else None
        self._drain = asyncio.create_task(self._drain_stderr())  # a full pipe would block it
        capabilities = types.ClientCapabilities(
            general=types.GeneralClientCapabilities(
                position_encodings=[types.PositionEncodingKind.Utf16]),
            text_document=types.TextDocumentClientCapabilities(
                inline_completion=types.InlineCompletionClientCapabilities()),
        )
        await asyncio.wait_for(self.client.initialize_async(types.InitializeParams(
            capabilities=capabilities, process_id=None, root_uri=None,
            initialization_options={"dlm": self.options},
        )), timeout=120)
        self.client.initialized(types.InitializedParams())
        return await self.status(wait_for_model=True)

    async def _drain_stderr(self) -> None:
        stream = self.client._server.stderr
        while True:
            chunk = await stream.read(65536)
            if not chunk:
                return
            if self._log is not None:
                self._log.write(chunk)

    @property
    def pid(self) -> int:
        return self.client._server.pid

    def rss_mb(self) -> float | None:
        """Resident memory of the server process, MiB."""
        try:
            import psutil

            return psutil.Process(self.pid).memory_info().rss / 2**20
        except Exception:
            return None

    async def status(self, wait_for_model: bool = False) -> dict[str, Any]:
        """`dlm/status`; with wait_for_model, until the model is loaded (or failed)."""
        deadline = time.monotonic() + 120
        while True:
            raw = await asyncio.wait_for(
                self.client.protocol.send_request_async("dlm/status", None), timeout=30)
            status = plain(raw)
            if not wait_for_model or status.get("model") or status.get("error"):
                return status
            if time.monotonic() > deadline:
                return status
            await asyncio.sleep(0.2)

    def open(self, uri: str, sample: Sample) -> None:
        from lsprotocol import types

        self.version = 1
        self.client.text_document_did_open(types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(
                uri=uri, language_id=sample.language_id, version=1, text=sample.text)))

    def close(self, uri: str) -> None:
        from lsprotocol import types

        self.client.text_document_did_close(types.DidCloseTextDocumentParams(
            text_document=types.TextDocumentIdentifier(uri=uri)))

    def type_char(self, uri: str, text: str, offset: int, char: str) -> None:
        """didChange inserting one character at `offset` (an incremental edit)."""
        from lsprotocol import types

        self.version += 1
        line, character = utf16_position(text, offset)
        position = types.Position(line=line, character=character)
        self.client.text_document_did_change(types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=self.version),
            content_changes=[types.TextDocumentContentChangePartial(
                range=types.Range(start=position, end=position), text=char)],
        ))

    async def complete(self, uri: str, text: str, offset: int) -> tuple[float, Any, dict]:
        """(client latency ms, first inline item or None, the status after it)."""
        from lsprotocol import types

        line, character = utf16_position(text, offset)
        started = time.perf_counter()
        result = await asyncio.wait_for(
            self.client.text_document_inline_completion_async(types.InlineCompletionParams(
                text_document=types.TextDocumentIdentifier(uri=uri),
                position=types.Position(line=line, character=character),
                context=types.InlineCompletionContext(
                    trigger_kind=types.InlineCompletionTriggerKind.Automatic),
            )), timeout=self.timeout_s)
        latency = (time.perf_counter() - started) * 1000
        items = result.items if isinstance(result, types.InlineCompletionList) else (result or [])
        status = await self.status()
        return latency, (items[0] if items else None), status

    async def stop(self) -> None:
        if self.client is None:
            return
        try:
            await asyncio.wait_for(self.client.shutdown_async(None), timeout=10)
            self.client.exit(None)
            await asyncio.wait_for(self.client.stop(), timeout=10)
        except Exception:  # a server that will not stop politely is killed
            try:
                self.client._server.kill()
            except Exception:
                pass
        if self._drain is not None:
            self._drain.cancel()
        if self._log is not None:
            self._log.close()


def item_edit(text: str, offset: int, item: Any) -> tuple[int, int, str]:
    """(start, end, insert) of an inline item; without a range it inserts at the cursor."""
    insert = item.insert_text if isinstance(item.insert_text, str) else item.insert_text.value
    if item.range is None:
        return offset, offset, insert
    start = utf16_offset(text, item.range.start.line, item.range.start.character)
    end = utf16_offset(text, item.range.end.line, item.range.end.character)
    return start, end, insert
