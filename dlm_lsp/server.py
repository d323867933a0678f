"""The language server: pygls features wired to the documents store and the engine.

Handlers are short: fetch the snapshot, call the engine on a worker thread, convert types.
Model work never runs on the protocol thread, stdout carries only the protocol, and every
request gets an answer: a result, an empty result, or a JSON-RPC error.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from typing import Any

from lsprotocol import types
from pygls.exceptions import JsonRpcException, JsonRpcInternalError, JsonRpcInvalidParams
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol, lsp_method

from . import __version__
from .documents import DocumentStore, PositionError, Snapshot, UnknownDocument
from .engine import CompletionResult, Engine, FillResult, PlanError
from .modelcard import ModelError
from .sampler import Cancelled
from .settings import Settings, parse_settings, settings_to_wire

log = logging.getLogger(__name__)

FILL_METHOD = "dlm/fill"
FILL_COMMAND = "dlm.fill"
STATUS_METHOD = "dlm/status"
DEBUG_DOCUMENT_METHOD = "dlm/debugDocument"


class ContentModified(JsonRpcException):
    """The document changed while the request ran; its answer would be for old text."""

    CODE = -32801


class InvalidParams(JsonRpcException):
    """The request's parameters are not what the method takes."""

    CODE = -32602


class NoModel(Exception):
    """No model is loaded (missing, or it failed to load); `DlmServer.engine_error` says why."""


def plain(value: Any) -> Any:
    """pygls hands custom-method params over as namedtuples; turn them back into dicts."""
    if hasattr(value, "_asdict"):
        return {k: plain(v) for k, v in value._asdict().items()}
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def _lsp_range(snapshot: Snapshot, start: int, end: int) -> types.Range:
    (sl, sc), (el, ec) = snapshot.position_at(start), snapshot.position_at(end)
    return types.Range(types.Position(sl, sc), types.Position(el, ec))


def _parse_range(raw: Any) -> tuple[tuple[int, int], tuple[int, int]]:
    """((line, character), (line, character)) from a wire Range; InvalidParams if malformed."""
    try:
        start, end = raw["start"], raw["end"]
        points = (start["line"], start["character"]), (end["line"], end["character"])
    except (KeyError, TypeError):
        raise InvalidParams(f"not a Range: {raw!r}") from None
    for line, character in points:
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (line, character)):
            raise InvalidParams(f"not a Range: {raw!r}")
    return points


class _Unanswerable:
    """A message that could not be structured and has already been answered with an error."""


class DlmProtocol(LanguageServerProtocol):
    """pygls' protocol with two changes that keep the server honest.

    * Documents live only in our DocumentStore. pygls' own workspace copy converts change
      ranges by *mutating* them in place, with `str.splitlines` line breaks (U+2028, form
      feed, ...) that LSP does not have, so our store would apply shifted ranges.
    * A request whose params cannot be structured (a negative position, a wrong type, no
      params at all) gets an InvalidParams error instead of no answer.
    """

    # Plain functions, not generators: pygls keeps a generator handler of a notification in
    # its request table for ever (a leak per keystroke).
    def _user(self, method: str, params: Any) -> None:
        if (handler := self.fm.features.get(method)) is not None:
            handler(params)

    @lsp_method(types.TEXT_DOCUMENT_DID_OPEN)
    def lsp_text_document__did_open(self, params: types.DidOpenTextDocumentParams) -> None:
        self._user(types.TEXT_DOCUMENT_DID_OPEN, params)

    @lsp_method(types.TEXT_DOCUMENT_DID_CHANGE)
    def lsp_text_document__did_change(self, params: types.DidChangeTextDocumentParams) -> None:
        self._user(types.TEXT_DOCUMENT_DID_CHANGE, params)

    @lsp_method(types.TEXT_DOCUMENT_DID_CLOSE)
    def lsp_text_document__did_close(self, params: types.DidCloseTextDocumentParams) -> None:
        self._user(types.TEXT_DOCUMENT_DID_CLOSE, params)

    def structure_message(self, data: dict[str, Any]):
        if "jsonrpc" not in data:
            return data  # a nested object: json's object_hook sees those too
        is_request = "method" in data and "id" in data
        if is_request and "params" not in data:
            data["params"] = None
        try:
            return super().structure_message(data)
        except JsonRpcException as exc:
            msg_id = data.get("id")
            if not is_request or not isinstance(msg_id, (int, str)) or isinstance(msg_id, bool):
                raise
            log.warning("request %r (%s) has params we cannot read", msg_id, data.get("method"))
            error = JsonRpcInvalidParams(f"invalid params for {data.get('method')}: {exc!r}")
            self._send_response(msg_id, error=error.to_response_error())
            return _Unanswerable()

    def handle_message(self, message):
        if isinstance(message, _Unanswerable):
            return
        if not hasattr(message, "jsonrpc"):  # valid JSON that is no JSON-RPC message
            log.warning("ignoring a message that is not JSON-RPC: %.200r", message)
            return
        super().handle_message(message)


class DlmServer(LanguageServer):
    """The dlm-lsp language server and its state."""

    def __init__(self, settings: Settings | None = None, engine: Engine | None = None) -> None:
        super().__init__("dlm-lsp", __version__, protocol_cls=DlmProtocol)
        self.settings = settings or Settings()
        self.store = DocumentStore()
        self._engine = engine
        self.engine_error: str | None = None  # why no model is loaded (dlm/status shows it)
        self._engine_lock = threading.Lock()
        self._request_ids = itertools.count(1)
        self._protocol_loop: asyncio.AbstractEventLoop | None = None  # set at initialize
        self._protocol_thread: int | None = None
        self.last: dict[str, Any] = {}

    # -- the engine, loaded once, lazily, off the protocol thread -----------------------------

    def engine(self) -> Engine | None:
        """The loaded engine, or None (the error was logged and shown once)."""
        with self._engine_lock:
            if self._engine is None and self.engine_error is None:
                try:
                    self._engine = (self._failover() if self.settings.remote
                                    else Engine(settings=self.settings))
                except ModelError as exc:
                    self.engine_error = str(exc)
                    log.error("no model: %s", exc)
                    self.show(f"dlm-lsp: no completions, the model cannot be used: {exc}",
                              types.MessageType.Error)
                except Exception as exc:  # a broken onnx file can raise anything
                    self.engine_error = f"{type(exc).__name__}: {exc}"
                    log.exception("model failed to load")
                    self.show(f"dlm-lsp: the model failed to load: {exc}", types.MessageType.Error)
            return self._engine

    def _failover(self):
        """The remote engine with its fallback (dlm_lsp.remote); its warnings reach the editor."""
        from .remote.failover import FailoverEngine

        return FailoverEngine(self.settings,
                              warn=lambda message: self.show(message, types.MessageType.Warning))

    def apply_settings(self, raw: Any) -> None:
        """Merge wire settings; bad values fall back and the user is told."""
        settings, problems = parse_settings(raw, self.settings)
        for problem in problems:
            log.warning("%s", problem)
        if problems:
            self.show("dlm-lsp settings: " + "; ".join(problems), types.MessageType.Warning)
        logging.getLogger("dlm_lsp").setLevel(settings.log_level.upper())
        with self._engine_lock:
            model_changed = settings.model_key() != self.settings.model_key()
            self.settings = settings
            if model_changed:
                self._engine, self.engine_error = None, None

    def report_server_error(self, error: Exception, source) -> None:
        """Log what pygls could not handle; a popup per bad message would flood the editor."""
        log.error("%s: %s", getattr(source, "__name__", source), error)

    def show(self, message: str, kind: types.MessageType) -> None:
        """window/showMessage, ignored when no client is connected (tests, one-shot use).

        From a worker thread (a model that fails to load, a remote server that stops
        answering) the message is handed to the protocol loop: two threads writing the
        protocol stream at once could interleave their bytes.
        """
        loop = self._protocol_loop
        if loop is not None and threading.get_ident() != self._protocol_thread:
            loop.call_soon_threadsafe(self.show, message, kind)
            return
        try:
            self.window_show_message(types.ShowMessageParams(type=kind, message=message))
        except Exception:
            log.debug("showMessage not sent: %s", message)

    def snapshot(self, uri: str) -> Snapshot | None:
        """The open document, or None (logged) when the uri is not open."""
        try:
            return self.store.get(uri)
        except UnknownDocument:
            log.info("request for a document that is not open: %s", uri)
            return None

    async def run_model(self, key: str, work, *args, debounce_ms: int = 0) -> Any:
        """Run engine work on a thread; newest request per `key` wins, client cancels stop it.

        With `debounce_ms`, wait that long first: a keystroke burst then costs one model run,
        not one per key. Raises asyncio.CancelledError when the client cancelled (pygls answers
        RequestCancelled), Cancelled when a newer request superseded this one, and NoModel
        when there is no model to ask.
        """
        # loaded already (every request but the first): no thread hop on the typing path
        engine = self._engine or await asyncio.to_thread(self.engine)
        if engine is None:
            raise NoModel(self.engine_error)
        stop = threading.Event()
        stale = engine.supersede(key)
        if debounce_ms > 0:
            await asyncio.sleep(debounce_ms / 1000)
            if stale():
                raise Cancelled
        try:
            return await asyncio.to_thread(
                work, engine, *args, lambda: stop.is_set() or stale()
            )
        except asyncio.CancelledError:
            stop.set()  # the worker sees it at its next denoise step
            raise
        finally:
            # off the answer's path: what the request's calls freed goes back to the system
            # (`runtime.release_freed`), so RSS follows what the server holds, not its peaks
            from .runtime import release_freed

            asyncio.get_running_loop().run_in_executor(None, release_freed)

    def record(self, kind: str, result: CompletionResult | FillResult | None, started: float,
               scope: str | None = None) -> None:
        """Remember the last request's figures for `dlm/status` (editors, bench)."""
        self.last = {
            "kind": kind,
            "latencyMs": round((time.perf_counter() - started) * 1000, 2),
            "steps": getattr(result, "steps", 0),
            "rerankSteps": getattr(result, "rerank_steps", 0),
            "tokens": getattr(result, "tokens", 0),
            "drafted": getattr(result, "drafted", 0),
            "accepted": getattr(result, "accepted", 0),
            "cached": bool(getattr(result, "cached", False)),
            "scope": scope,
            "backend": getattr(result, "backend", None),  # local, remote, cache, none
            "contextTokens": getattr(result, "context_tokens", 0),
            "contextTokensEncoded": getattr(result, "context_tokens_encoded", 0),
        }


def _complete(engine: Engine, snapshot: Snapshot, offset: int, settings: Settings,
              cancelled) -> CompletionResult:
    return engine.complete(snapshot, offset, settings, cancelled=cancelled)


def _fill(engine: Engine, snapshot: Snapshot, ranges, settings: Settings,
          cancelled) -> FillResult:
    return engine.fill(snapshot, ranges, settings, cancelled=cancelled)


def _fill_markers(engine: Engine, snapshot: Snapshot, marker: str, settings: Settings,
                  cancelled) -> FillResult:
    return engine.fill_markers(snapshot, marker, settings, cancelled=cancelled)


# ---------------------------------------------------------------------------- handlers


def initialize(ls: DlmServer, params: types.InitializeParams) -> None:
    """The client's position encoding and settings; the protocol loop, for messages from workers."""
    ls._protocol_loop, ls._protocol_thread = asyncio.get_running_loop(), threading.get_ident()
    encoding = ls.workspace.position_encoding or types.PositionEncodingKind.Utf16
    ls.store = DocumentStore(getattr(encoding, "value", encoding))
    ls.apply_settings(params.initialization_options)


async def initialized(ls: DlmServer, params: types.InitializedParams) -> None:
    """Load the model now, off the protocol thread, not on the first keystroke."""
    await asyncio.to_thread(ls.engine)


def did_change_configuration(ls: DlmServer, params: types.DidChangeConfigurationParams):
    """New settings: they apply from the next request on."""
    ls.apply_settings(params.settings)


def did_open(ls: DlmServer, params: types.DidOpenTextDocumentParams) -> None:
    """Start keeping a buffer."""
    doc = params.text_document
    ls.store.open(doc.uri, doc.language_id, doc.version, doc.text)


def did_change(ls: DlmServer, params: types.DidChangeTextDocumentParams) -> None:
    """Apply incremental (or whole) changes to a buffer."""
    changes = []
    for change in params.content_changes:
        if isinstance(change, types.TextDocumentContentChangePartial):
            r = change.range
            changes.append((((r.start.line, r.start.character),
                             (r.end.line, r.end.character)), change.text))
        else:
            changes.append((None, change.text))
    try:
        ls.store.change(params.text_document.uri, params.text_document.version, changes)
    except UnknownDocument:
        log.warning("didChange for a document that is not open: %s",
                    params.text_document.uri)


def did_close(ls: DlmServer, params: types.DidCloseTextDocumentParams) -> None:
    """Forget a buffer and the engine's state for it."""
    ls.store.close(params.text_document.uri)
    if ls._engine is not None:
        ls._engine.forget(params.text_document.uri)


async def complete_at(ls: DlmServer, uri: str, position: types.Position, kind: str):
    """The completion at a position, or None; shared by inline and classic completion."""
    started = time.perf_counter()
    snapshot = ls.snapshot(uri)
    if snapshot is None or not ls.settings.language_enabled(snapshot.language_id):
        return None, None
    if len(snapshot.text) > ls.settings.max_document_bytes:
        log.info("%s is too large for completions (%d chars)", uri, len(snapshot.text))
        return None, None
    try:
        offset = snapshot.offset_at(position.line, position.character)
    except PositionError as exc:
        raise InvalidParams(str(exc)) from None
    request = next(ls._request_ids)
    try:
        result = await ls.run_model(uri, _complete, snapshot, offset, ls.settings,
                                    debounce_ms=ls.settings.debounce_ms)
    except Cancelled:
        log.debug("#%d %s superseded", request, kind)
        return None, None
    except NoModel:
        return None, None
    current = ls.snapshot(uri)
    if current is None or current.version != snapshot.version:
        log.debug("#%d answered for version %s, document moved on", request, snapshot.version)
        return None, None
    scope = result.plan.holes[0].scope if result.plan and result.plan.holes else None
    ls.record(kind, result, started, scope)
    log.info("#%d %s %s: %s steps, %.0f ms%s", request, kind, scope, result.steps,
             ls.last["latencyMs"], " (cached)" if result.cached else "")
    return snapshot, result.completion


async def inline_completion(ls: DlmServer, params: types.InlineCompletionParams):
    """Ghost text at the cursor (LSP 3.18 inline completion)."""
    snapshot, completion = await complete_at(
        ls, params.text_document.uri, params.position, "inline")
    if completion is None or not completion.text:
        return types.InlineCompletionList(items=[])
    return types.InlineCompletionList(items=[types.InlineCompletionItem(
        insert_text=completion.text,
        range=_lsp_range(snapshot, completion.start, completion.end),
    )])


async def completion(ls: DlmServer, params: types.CompletionParams):
    """The completion as one classic completion item, for clients without inline completion."""
    snapshot, item = await complete_at(ls, params.text_document.uri, params.position,
                                       "completion")
    if item is None or not item.text.strip():
        return types.CompletionList(is_incomplete=True, items=[])
    first_line = next((line for line in item.text.splitlines() if line.strip()), item.text)
    return types.CompletionList(is_incomplete=True, items=[types.CompletionItem(
        label=first_line.strip()[:80],
        kind=types.CompletionItemKind.Text,
        detail="dlm-lsp",
        documentation=types.MarkupContent(types.MarkupKind.PlainText, item.text),
        insert_text_format=types.InsertTextFormat.PlainText,
        text_edit=types.TextEdit(_lsp_range(snapshot, item.start, item.end), item.text),
        filter_text=snapshot.text[
            snapshot.text.rfind("\n", 0, item.start) + 1 : item.start].lstrip(),
        sort_text="0",
    )])


async def fill(ls: DlmServer, raw: Any) -> dict[str, Any]:
    """dlm/fill: every hole (or re-write range) of a document in one parallel pass."""
    started = time.perf_counter()
    raw = plain(raw)
    if isinstance(raw, list) and len(raw) == 1:
        raw = raw[0]  # executeCommand arguments: [params]
    try:
        uri = raw["textDocument"]["uri"]
    except (KeyError, TypeError):
        raise InvalidParams("dlm/fill needs {textDocument: {uri}, holes?: [Range]}") from None
    holes = raw.get("holes")
    if holes is not None and not isinstance(holes, list):
        raise InvalidParams("holes must be a list of Range")
    snapshot = ls.snapshot(uri)
    if snapshot is None:
        raise InvalidParams(f"document not open: {uri}")
    if holes is None:
        work, arg = _fill_markers, ls.settings.hole_marker
    else:
        ranges = []
        for hole in holes:
            (sl, sc), (el, ec) = _parse_range(hole)
            try:
                start, end = snapshot.offset_at(sl, sc), snapshot.offset_at(el, ec)
            except PositionError as exc:
                raise InvalidParams(str(exc)) from None
            ranges.append((min(start, end), max(start, end)))
        work, arg = _fill, ranges
    try:
        result = await ls.run_model("fill:" + uri, work, snapshot, arg, ls.settings)
    except PlanError as exc:
        raise InvalidParams(str(exc)) from None
    except NoModel as exc:
        raise JsonRpcInternalError(f"no model: {exc}") from None
    except Cancelled:
        raise ContentModified("a newer dlm/fill on this document superseded this one")
    current = ls.snapshot(uri)
    if current is None or current.version != snapshot.version:
        raise ContentModified("the document changed while filling; ask again")
    ls.record("fill", result, started, "span")
    edits = [types.TextEdit(_lsp_range(snapshot, start, end), text)
             for start, end, text in result.edits]
    return {"edits": [ls.protocol._converter.unstructure(e) for e in edits]}


async def fill_request(ls: DlmServer, params: Any) -> dict[str, Any]:
    """The `dlm/fill` request."""
    return await fill(ls, params)


async def fill_command(ls: DlmServer, *args: Any) -> dict[str, Any]:
    """The `dlm.fill` command (workspace/executeCommand): the request's params as its argument."""
    params = args[0] if len(args) == 1 else list(args)
    return await fill(ls, params)


def debug_document(ls: DlmServer, params: Any) -> dict[str, Any]:
    """The server's view of a document, for drift tests: version, text, syntax tree."""
    raw = plain(params)
    try:
        uri = raw["textDocument"]["uri"]
    except (KeyError, TypeError):
        raise InvalidParams("dlm/debugDocument needs {textDocument: {uri}}") from None
    snapshot = ls.snapshot(uri)
    if snapshot is None:
        raise InvalidParams(f"document not open: {uri}")
    return {
        "version": snapshot.version,
        "text": snapshot.text,
        "sexp": str(snapshot.tree.root_node) if snapshot.tree is not None else None,
    }


def status(ls: DlmServer, params: Any = None) -> dict[str, Any]:
    """What `dlm/status` reports: the model, the last request's figures, the settings."""
    engine = ls._engine
    return {
        "version": __version__,
        "model": engine.card.name if engine and engine.card else None,
        "modelVersion": engine.card.version if engine and engine.card else None,
        "provider": engine.provider if engine else None,
        "error": ls.engine_error,
        "lastLatencyMs": ls.last.get("latencyMs"),
        "lastSteps": ls.last.get("steps"),
        # of those, the suffix reranking's (candidates and scoring), not the decoding's
        "lastRerankSteps": ls.last.get("rerankSteps"),
        "lastTokens": ls.last.get("tokens"),
        # speculative decoding: drafted tokens the model checked, and those it agreed with
        "lastDrafted": ls.last.get("drafted"),
        "lastAccepted": ls.last.get("accepted"),
        "lastScope": ls.last.get("scope"),
        "lastCached": ls.last.get("cached"),
        "lastKind": ls.last.get("kind"),
        "lastBackend": ls.last.get("backend"),
        "remote": ls.settings.remote,
        "remoteError": getattr(engine, "remote_error", None),
        "contextTokens": ls.last.get("contextTokens"),
        "contextTokensEncoded": ls.last.get("contextTokensEncoded"),
        "contextCacheBytes": engine.contexts.nbytes if engine else 0,
        "contextCacheDocuments": len(engine.contexts) if engine else 0,
        "openDocuments": len(ls.store),
        "settings": settings_to_wire(ls.settings),
    }


def create_server(settings: Settings | None = None, engine: Engine | None = None) -> DlmServer:
    """A server with every feature registered."""
    from .runtime import bound_malloc

    bound_malloc()  # before the server's threads exist: each would get a heap of its own
    server = DlmServer(settings, engine)
    server.feature(types.INITIALIZE)(initialize)
    server.feature(types.INITIALIZED)(initialized)
    server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)(did_change_configuration)
    server.feature(types.TEXT_DOCUMENT_DID_OPEN)(did_open)
    server.feature(types.TEXT_DOCUMENT_DID_CHANGE)(did_change)
    server.feature(types.TEXT_DOCUMENT_DID_CLOSE)(did_close)
    server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION,
                   types.InlineCompletionOptions())(inline_completion)
    server.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions())(completion)
    server.feature(FILL_METHOD)(fill_request)
    server.command(FILL_COMMAND)(fill_command)
    server.feature(DEBUG_DOCUMENT_METHOD)(debug_document)
    server.feature(STATUS_METHOD)(status)
    return server
