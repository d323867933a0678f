"""End to end: the real server over stdio, driven by pytest-lsp's client, with the shipped model."""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from pathlib import Path

import pytest
import pytest_lsp
from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pytest_lsp import ClientServerConfig, LanguageClient

URI = "file:///work/example.py"


from tests.reliability.synthetic_model import build_synthetic_model  # noqa: E402

# These tests check the server, not the model: a synthetic model that always fills a canvas
# with BLOCK makes every answer checkable. The shipped model is driven at the end of the file.
BLOCK = "total = sum(xs)\n    return total"
SYNTHETIC = build_synthetic_model(Path(tempfile.mkdtemp(prefix="dlm-e2e-")), answer=BLOCK)
SERVER = [sys.executable, "-m", "dlm_lsp", "--log-level", "info", "--model", str(SYNTHETIC)]
# DLM_TEST_MODEL points the shipped-model tests at another model directory.
SHIPPED = [sys.executable, "-m", "dlm_lsp", "--log-level", "info"] + (
    ["--model", os.environ["DLM_TEST_MODEL"]] if os.environ.get("DLM_TEST_MODEL") else [])


@pytest_lsp.fixture(config=ClientServerConfig(server_command=SERVER))
async def client(lsp_client: LanguageClient):
    lsp_client.init_result = await lsp_client.initialize_session(types.InitializeParams(
        capabilities=types.ClientCapabilities(),
        initialization_options={"dlm": {"maxSteps": 16}},
    ))
    yield
    await lsp_client.shutdown_session()


def open_doc(client: LanguageClient, text: str, uri: str = URI, language: str = "python",
             version: int = 1) -> None:
    client.text_document_did_open(types.DidOpenTextDocumentParams(
        types.TextDocumentItem(uri=uri, language_id=language, version=version, text=text)))


def inline_params(line: int, character: int, uri: str = URI) -> types.InlineCompletionParams:
    return types.InlineCompletionParams(
        text_document=types.TextDocumentIdentifier(uri),
        position=types.Position(line, character),
        context=types.InlineCompletionContext(
            trigger_kind=types.InlineCompletionTriggerKind.Automatic),
    )


def pos(line, character):
    return {"line": line, "character": character}


async def test_advertises_inline_completion_and_fill(client: LanguageClient):
    caps = client.init_result.capabilities  # type: ignore[attr-defined]
    assert caps.inline_completion_provider is not None
    assert caps.completion_provider is not None
    assert "dlm.fill" in caps.execute_command_provider.commands


async def test_inline_block_completion_after_def(client: LanguageClient):
    open_doc(client, "def f(xs):\n    ")
    result = await client.text_document_inline_completion_async(inline_params(1, 4))
    assert isinstance(result, types.InlineCompletionList)
    assert len(result.items) == 1
    item = result.items[0]
    assert item.insert_text == BLOCK  # multi-line, and kept whole by the block's stop rules
    assert item.range.start == types.Position(1, 4) and item.range.end == types.Position(1, 4)
    status = await client.protocol.send_request_async("dlm/status", {})
    assert status.lastScope == "block" and status.lastSteps >= 1
    assert status.provider == "CPU" and status.lastTokens > 5


async def test_completion_request_gives_a_text_edit(client: LanguageClient):
    open_doc(client, "import os\n\ndef main():\n    path = os.")
    result = await client.text_document_completion_async(types.CompletionParams(
        text_document=types.TextDocumentIdentifier(URI), position=types.Position(3, 14)))
    assert isinstance(result, types.CompletionList)
    for item in result.items:
        assert item.text_edit.range.start == types.Position(3, 14)
        assert item.insert_text_format == types.InsertTextFormat.PlainText


async def test_fill_two_holes_in_one_call(client: LanguageClient):
    text = "def add(a, b):\n    <|hole|>\n\n\ndef mul(a, b):\n    <|hole|>\n"
    open_doc(client, text)
    result = await client.protocol.send_request_async("dlm/fill", {"textDocument": {"uri": URI}})
    edits = result.edits
    assert len(edits) == 2
    assert edits[0].range.start.line == 1 and edits[1].range.start.line == 5
    for edit in edits:
        # each edit replaces exactly its marker
        assert edit.range.start.character == 4 and edit.range.end.character == 4 + len("<|hole|>")
    # the synthetic model answers at the start of the (concatenated) canvas: the first hole
    # gets BLOCK, the second closes at once; the one pass still answers both holes
    assert edits[0].newText == BLOCK and edits[1].newText == ""
    explicit = await client.protocol.send_request_async("dlm/fill", {
        "textDocument": {"uri": URI},
        "holes": [{"start": pos(1, 4), "end": pos(1, 12)}, {"start": pos(5, 4), "end": pos(5, 12)}],
    })
    assert len(explicit.edits) == 2
    command = await client.workspace_execute_command_async(types.ExecuteCommandParams(
        command="dlm.fill", arguments=[{"textDocument": {"uri": URI}}]))
    assert len(command["edits"]) == 2


async def test_cancelled_request_gets_request_cancelled_and_next_works(client: LanguageClient):
    # a ten-minute debounce keeps the request in flight until the cancel finds it: the
    # request cannot be answered first, however slow the machine
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"dlm": {"debounceMs": 600_000}}))
    open_doc(client, "class Stack:\n    def __init__(self):\n        ")
    future = client.protocol.send_request(
        types.TEXT_DOCUMENT_INLINE_COMPLETION, inline_params(2, 8), msg_id=4242)
    client.protocol.notify(types.CANCEL_REQUEST, types.CancelParams(id=4242))
    with pytest.raises(JsonRpcException) as info:
        await asyncio.wait_for(asyncio.wrap_future(future), 30)
    assert info.value.code == -32800  # RequestCancelled
    client.workspace_did_change_configuration(
        types.DidChangeConfigurationParams(settings={"dlm": {"debounceMs": 0}}))
    result = await client.text_document_inline_completion_async(inline_params(2, 8))
    assert isinstance(result, types.InlineCompletionList)


async def test_hostile_input_gets_answers_and_the_server_lives(client: LanguageClient):
    open_doc(client, "", uri="file:///empty.py")
    empty = await client.text_document_inline_completion_async(
        inline_params(0, 0, "file:///empty.py"))
    assert isinstance(empty, types.InlineCompletionList)

    open_doc(client, "x = 1\n")
    far = await client.text_document_inline_completion_async(inline_params(10_000, 10_000))
    assert isinstance(far, types.InlineCompletionList)  # clamped to the end, like LSP says

    huge = ("def f(x):\n    return x * 2\n" * 200_000)[: 5 * 1024 * 1024]
    open_doc(client, huge, uri="file:///huge.py")
    result = await client.text_document_inline_completion_async(
        inline_params(3, 4, "file:///huge.py"))
    assert isinstance(result, types.InlineCompletionList)

    open_doc(client, "a = '\x00\x00'\nb = ", uri="file:///nul.py")
    result = await client.text_document_inline_completion_async(
        inline_params(1, 4, "file:///nul.py"))
    assert isinstance(result, types.InlineCompletionList)

    open_doc(client, "frobnicate {\n  ", uri="file:///x.frob", language="frob")
    result = await client.text_document_inline_completion_async(
        inline_params(1, 2, "file:///x.frob"))
    assert isinstance(result, types.InlineCompletionList)

    closed = await client.text_document_inline_completion_async(
        inline_params(0, 0, "file:///never-opened.py"))
    assert closed is None or not closed.items

    with pytest.raises(JsonRpcException):
        await client.protocol.send_request_async("dlm/fill", {"holes": 3})

    # and a normal request still works
    open_doc(client, "def g(n):\n    ", uri="file:///g.py")
    result = await client.text_document_inline_completion_async(inline_params(1, 4, "file:///g.py"))
    assert isinstance(result, types.InlineCompletionList) and result.items


PASS_MODEL = build_synthetic_model(Path(tempfile.mkdtemp(prefix="dlm-e2e-pass-")))


@pytest_lsp.fixture(config=ClientServerConfig(
    server_command=[sys.executable, "-m", "dlm_lsp", "--model", str(PASS_MODEL)]))
async def utf8_client(lsp_client: LanguageClient):
    lsp_client.init_result = await lsp_client.initialize_session(types.InitializeParams(
        capabilities=types.ClientCapabilities(general=types.GeneralClientCapabilities(
            position_encodings=[types.PositionEncodingKind.Utf8]))))
    yield
    await lsp_client.shutdown_session()


async def test_negotiated_utf8_positions_count_bytes(utf8_client: LanguageClient):
    assert utf8_client.init_result.capabilities.position_encoding == "utf-8"
    before = "x = '😀 日本'; "  # the cursor here: 20 bytes, 12 characters, 13 UTF-16 units
    line = before + "  # ☃"
    open_doc(utf8_client, line)
    column = len(before.encode("utf-8"))
    result = await utf8_client.text_document_inline_completion_async(inline_params(0, column))
    assert [i.insert_text for i in result.items] == ["pass"]
    # read as UTF-16 the column would fall past the line's end, and the range with it
    assert result.items[0].range.start == types.Position(0, column)
    await utf8_client.protocol.send_request_async("dlm/status", {})
    debug = await utf8_client.protocol.send_request_async(
        "dlm/debugDocument", {"textDocument": {"uri": URI}})
    assert debug.text == line


@pytest_lsp.fixture(config=ClientServerConfig(server_command=SHIPPED))
async def shipped_client(lsp_client: LanguageClient):
    await lsp_client.initialize_session(types.InitializeParams(
        capabilities=types.ClientCapabilities()))
    yield
    await lsp_client.shutdown_session()


async def test_the_shipped_model_serves_out_of_the_box(shipped_client: LanguageClient):
    open_doc(shipped_client, "def f(xs):\n    ")
    result = await shipped_client.text_document_inline_completion_async(inline_params(1, 4))
    assert isinstance(result, types.InlineCompletionList) and result.items
    for item in result.items:
        assert item.insert_text.strip() and item.range.start == types.Position(1, 4)
    status = await shipped_client.protocol.send_request_async("dlm/status", {})
    assert status.error is None and status.model.startswith("smollm2")
    # left to right, stopped once the block closed (the card allows the whole 128 canvas)
    assert status.lastScope == "block" and 1 <= status.lastSteps <= 128
    open_doc(shipped_client, "def add(a, b):\n    <|hole|>\n\ndef mul(a, b):\n    <|hole|>\n",
             uri="file:///fill.py")
    fill = await shipped_client.protocol.send_request_async(
        "dlm/fill", {"textDocument": {"uri": "file:///fill.py"}})
    assert [e.range.start.line for e in fill.edits] == [1, 4]
