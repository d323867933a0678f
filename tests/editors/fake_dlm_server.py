"""A deterministic stand-in for `dlm-lsp` that speaks the same LSP surface.

The editor tests use it to assert exact buffer contents (the real tiny model's text is not
predictable), and to develop the editor clients without a model. It implements only what
docs/INTERFACES.md promises editors: inline completion, completion, `dlm/fill` (request and
`dlm.fill` command) and `dlm/status`.

Completions are fixed strings: after a line ending in `:` it suggests an indented
`return a + b` block, elsewhere the word `fake`. Each hole becomes `pass`.

Run: ``python tests/editors/fake_dlm_server.py`` (stdio).
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

from lsprotocol import types as lsp
from pygls.lsp.server import LanguageServer

HOLE_MARKER = "<|hole|>"
HOLE_TEXT = "pass"

server = LanguageServer("fake-dlm-lsp", "0.0.0-fake")
settings: dict[str, Any] = {"enable": True, "holeMarker": HOLE_MARKER}


def _update_settings(raw: object) -> None:
    """Merge a `{"dlm": {...}}` settings object, ignoring anything malformed."""
    if isinstance(raw, dict) and isinstance(raw.get("dlm"), dict):
        settings.update(raw["dlm"])


def _suggestion(line_before: str) -> str:
    """The fixed completion for a cursor whose line reads `line_before` up to the cursor."""
    if line_before.rstrip().endswith(":"):
        indent = len(line_before) - len(line_before.lstrip())
        return "\n" + " " * (indent + 4) + "return a + b"
    return "fake"


def _offset_to_position(text: str, offset: int) -> lsp.Position:
    """UTF-16 position of a str offset (the tests only use ASCII, but stay correct)."""
    before = text[:offset]
    line = before.count("\n")
    column = before[before.rfind("\n") + 1 :]
    return lsp.Position(line=line, character=len(column.encode("utf-16-le")) // 2)


@server.feature(lsp.INITIALIZE)
def on_initialize(params: lsp.InitializeParams) -> None:
    _update_settings(params.initialization_options)


@server.feature(lsp.WORKSPACE_DID_CHANGE_CONFIGURATION)
def on_configuration(params: lsp.DidChangeConfigurationParams) -> None:
    _update_settings(params.settings)


# pygls advertises inline completion only when given options (its default is None).
@server.feature(lsp.TEXT_DOCUMENT_INLINE_COMPLETION, lsp.InlineCompletionOptions())
def inline_completion(params: lsp.InlineCompletionParams) -> lsp.InlineCompletionList:
    if not settings.get("enable", True):
        return lsp.InlineCompletionList(items=[])
    doc = server.workspace.get_text_document(params.text_document.uri)
    pos = params.position
    line = doc.lines[pos.line] if pos.line < len(doc.lines) else ""
    text = _suggestion(line.rstrip("\r\n")[: pos.character])
    item = lsp.InlineCompletionItem(insert_text=text, range=lsp.Range(start=pos, end=pos))
    return lsp.InlineCompletionList(items=[item])


@server.feature(lsp.TEXT_DOCUMENT_COMPLETION)
def completion(params: lsp.CompletionParams) -> lsp.CompletionList:
    doc = server.workspace.get_text_document(params.text_document.uri)
    pos = params.position
    line = doc.lines[pos.line] if pos.line < len(doc.lines) else ""
    text = _suggestion(line.rstrip("\r\n")[: pos.character])
    item = lsp.CompletionItem(
        label=text.strip().splitlines()[0],
        kind=lsp.CompletionItemKind.Text,
        text_edit=lsp.TextEdit(range=lsp.Range(start=pos, end=pos), new_text=text),
    )
    return lsp.CompletionList(is_incomplete=True, items=[item])


def _fill(params: Any) -> dict[str, Any]:
    """Answer a `dlm/fill`: one edit per hole (given ranges, else every marker)."""
    params = _plain(params)
    uri = params["textDocument"]["uri"]
    doc = server.workspace.get_text_document(uri)
    holes = params.get("holes")
    if holes is None:
        marker = settings.get("holeMarker") or HOLE_MARKER
        holes = [
            {
                "start": _unstructure(_offset_to_position(doc.source, m.start())),
                "end": _unstructure(_offset_to_position(doc.source, m.end())),
            }
            for m in re.finditer(re.escape(marker), doc.source)
        ]
    return {"edits": [{"range": hole, "newText": HOLE_TEXT} for hole in holes]}


def _plain(value: Any) -> Any:
    """pygls hands custom-method params over as nested namedtuples: make them dicts."""
    if hasattr(value, "_asdict"):
        return {k: _plain(v) for k, v in value._asdict().items()}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _unstructure(position: lsp.Position) -> dict[str, int]:
    return {"line": position.line, "character": position.character}


@server.feature("dlm/fill")
def fill_request(ls: LanguageServer, params: Any) -> dict[str, Any]:
    return _fill(params)


@server.command("dlm.fill")
def fill_command(ls: LanguageServer, *args: Any) -> dict[str, Any]:
    arg = _plain(args[0]) if args else {}
    if isinstance(arg, list):  # pygls may hand the whole arguments list as one value
        arg = arg[0]
    return _fill(arg)


@server.feature("dlm/status")
def status(ls: LanguageServer, params: Any) -> dict[str, Any]:
    return {"model": "fake", "provider": "CPU", "lastLatencyMs": 1.5, "version": "0.0.0-fake"}


if __name__ == "__main__":
    if os.environ.get("DLM_FAKE_LOG"):  # every message, for debugging a client
        logging.basicConfig(filename=os.environ["DLM_FAKE_LOG"], level=logging.DEBUG)
    server.start_io()
