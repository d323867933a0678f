"""Differential fuzz of the context cache: one editor session, two servers, the same answers.

Two server processes over stdio (`probe_server.py`: the real server, `create_server`
unchanged, plus test-only requests) load the same causal (format 2) model; one keeps each
document's encoded context across requests (`contextCache: true`), the other encodes every
context whole (`contextCache: false`). A seeded random editor sends both the same messages:
typing, backspace and forward delete, pasted blocks, edits above and below the cursor, undo of
the last edit, multi-byte text (emoji, CJK), cursor jumps, several documents, didClose and a
reopen, configuration changes. After each action it asks both for a completion at the cursor
(mostly inline, sometimes classic completion or dlm/fill) and compares:

* the answers (the whole JSON-RPC result or error);
* what `dlm/status` says about the last request: steps, generated tokens, scope, whether the
  typing-through cache answered, and the context's length;
* the cached server's state for the document against a fresh encoding of the same tokens
  (`reliability/contextCheck` of probe_server.py): their keys/values must agree to float
  rounding, so a stale state shows even where the model would decode it to the same text.

Requests are sent one at a time and answered before the next action, so nothing races: the
cached server must give exactly the reference's answers. The editor keeps its own copy of every
document (plain string slicing, `edits.py`); on close the servers' copies are read back with
`dlm/debugDocument` and compared with it.
"""

from __future__ import annotations

import json
import random
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .edits import PIECES, START_TEXT, position_of, random_edit, valid_offset
from .wire import WireServer, probe_argv

# what a typist types, one character at a time (multi-byte ones included)
TYPED = ("total = sum(values)  # 合計 😀\n    ", "if x is None:\n        return 0\n    ",
         "for i, v in enumerate(xs):\n        ", "print('中文', v)\n", "def g(a, b):\n    ",
         "return [a, b]\n", "s = \"é ß 𝔘\"\n", "x = {\"k\": (1, 2)}\n")
BLOCKS = (  # what gets pasted
    "\ndef pasted(xs):\n    out = []\n    for x in xs:\n        out.append(x * 2)\n"
    "    return out\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x  # 😀\n        self.y = y\n",
    "    # 注释: 平均を計算する\n    mean = total / len(xs)\n",
    "import json\nimport os\n\n",
    "try:\n    value = json.loads(text)\nexcept ValueError:\n    value = None\n",
    "😀😀😀 中文字 🎉\n",
)
BODY = (  # what documents are made of (several kilobytes: the prefix window has to move)
    "def mean(xs):\n    total = 0\n    for x in xs:\n        total += x\n"
    "    return total / len(xs)\n\n",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, x):\n"
    "        self.items.append(x)\n\n    def pop(self):\n        return self.items.pop()\n\n",
    "def walk(root):\n    for name in sorted(os.listdir(root)):\n"
    "        path = os.path.join(root, name)\n"
    "        if os.path.isdir(path):\n            yield from walk(path)\n\n",
    "# 平均 😀 — a comment with CJK and emoji\nVALUES = [1, 2, 3, 4]  # 数字\n\n",
    "def parse(text):\n    fields = text.split(',')\n"
    "    return {k: v for k, v in zip(fields, fields[1:])}\n\n",
)
# settings sent to both servers (each merges them into its own; contextCache stays as it was)
SETTINGS = (
    {"prefixTokens": 64}, {"prefixTokens": 200}, {"prefixTokens": None},
    {"suffixTokens": 16}, {"suffixTokens": 128}, {"maxSteps": 2}, {"maxSteps": None},
    {"threshold": 0.5}, {"threshold": None}, {"strategy": "left_to_right"},
    {"strategy": "parallel"}, {"maxBlockLines": 3}, {"maxBlockLines": 16},
    {"contextCacheMb": 1}, {"contextCacheMb": 64}, {"tokenHealing": False},
    {"tokenHealing": True},
)
MAX_DOCUMENT = 6000  # characters; longer documents only shrink
LANGUAGES = ("python", "python", "python", "javascript", "plaintext")
STATUS_FIELDS = ("lastKind", "lastSteps", "lastTokens", "lastScope", "lastCached", "contextTokens")
STALE = 1e-3  # keys/values further than this (relative to their scale) from a fresh encoding
# the tiny causal models it runs with (tests/causal_model.py arguments; weights sharpened 4x so
# that what they write follows the context): a format-2 denoiser, and one shaped like an
# imported autoregressive model (shifted predictions, causal canvas, grouped-query attention,
# no suffix; token healing)
MODELS = {
    "format2": {"sharpness": 4.0},
    "shifted": {"sharpness": 4.0, "shift": True, "canvas_attention": "causal", "n_kv_heads": 1,
                "reads_suffix": False},
}


@dataclass
class Document:
    uri: str
    language: str
    text: str
    cursor: int
    version: int = 1
    undo: list[tuple[int, int, str]] = field(default_factory=list)  # (start, end, old text)


@dataclass
class FuzzResult:
    edits: int = 0  # document changes sent
    actions: int = 0  # every action (changes, jumps, opens, closes, settings)
    requests: int = 0  # completion requests, each sent to both servers
    differences: list[dict] = field(default_factory=list)
    context_tokens: int = 0  # contexts the cached server's requests had, in tokens
    encoded_tokens: int = 0  # how many of those went through its encoder
    states_checked: int = 0  # cached states compared with a fresh encoding
    worst_state_diff: float = 0.0  # the largest relative difference seen
    seconds: float = 0.0

    def figures(self) -> dict[str, Any]:
        return {"edits": self.edits, "actions": self.actions, "requests": self.requests,
                "differences": len(self.differences),
                "encoded_share": round(self.encoded_tokens / max(1, self.context_tokens), 3),
                "states_checked": self.states_checked,
                "worst_state_diff": float(f"{self.worst_state_diff:.3g}"),
                "seconds": round(self.seconds, 1)}


def server_pair(stack: ExitStack, model: Path, folder: Path) -> tuple[WireServer, WireServer]:
    """(cached, reference): the same model, `contextCache` on and off."""
    pair = []
    for name, cache in (("cached", True), ("reference", False)):
        server = stack.enter_context(WireServer(
            probe_argv("--model", str(model), log_level="warning"),
            stderr_path=folder / f"{name}.stderr.log"))
        server.initialize(options={"dlm": {"contextCache": cache}})
        pair.append(server)
    return pair[0], pair[1]


class CacheFuzz:
    """A random editor driving two servers with the same messages."""

    def __init__(self, cached: WireServer, reference: WireServer, seed: int) -> None:
        self.servers = (cached, reference)
        self.rnd = random.Random(seed)
        self.documents: dict[str, Document] = {}
        self.current: Document | None = None
        self.opened = 0
        self.result = FuzzResult()
        self.log: list[Any] = []  # every message sent, for a reproducer

    # -- sending ---------------------------------------------------------------------------

    def notify(self, method: str, params: Any) -> None:
        self.log.append(("notify", method, params))
        for server in self.servers:
            server.notify(method, params)

    def ask(self, method: str, params: Any, what: str) -> None:
        """Send one request to both servers and compare the answers and the status."""
        self.log.append(("request", method, params))
        ids = [server.request(method, params) for server in self.servers]
        answers = [server.wait(msg_id, 60) for server, msg_id in zip(self.servers, ids)]
        self.result.requests += 1
        got, want = (_answer(a) for a in answers)
        statuses = [server.call("dlm/status", {}, 60)["result"] for server in self.servers]
        seen, expected = ({k: s.get(k) for k in STATUS_FIELDS} for s in statuses)
        cached_status = statuses[0]
        if method != "dlm/fill" and cached_status.get("contextTokens"):
            self.result.context_tokens += cached_status["contextTokens"]
            self.result.encoded_tokens += cached_status["contextTokensEncoded"] or 0
        state = self.check_state(params["textDocument"]["uri"])
        if got != want or seen != expected or state is not None:
            document = self.current
            self.result.differences.append({
                "request": self.result.requests, "what": what, "method": method,
                "params": params, "cached": got, "reference": want,
                "cached_status": seen, "reference_status": expected, "stale_state": state,
                "text": document.text if document else None,
                "messages": len(self.log)})

    def check_state(self, uri: str) -> dict | None:
        """The cached server's state for `uri` against a fresh encoding: None when it agrees
        (or there is none), else what the check said."""
        check = self.servers[0].call("reliability/contextCheck", {"uri": uri}, 60)["result"]
        if not check.get("cached"):
            return None
        self.result.states_checked += 1
        relative = check["maxDiff"] / max(1.0, check.get("scale", 1.0))
        self.result.worst_state_diff = max(self.result.worst_state_diff, relative)
        return check if relative > STALE else None

    def change(self, document: Document, start: int, end: int, new: str,
               wire: dict | None = None) -> None:
        """Replace text[start:end] by `new` (sent as one didChange), remember the undo."""
        old = document.text[start:end]
        if wire is None:
            (sl, sc), (el, ec) = position_of(document.text, start), position_of(document.text, end)
            wire = {"range": {"start": {"line": sl, "character": sc},
                              "end": {"line": el, "character": ec}}, "text": new}
        document.text = document.text[:start] + new + document.text[end:]
        document.version += 1
        document.undo.append((start, start + len(new), old))
        del document.undo[:-50]
        self.notify("textDocument/didChange", {
            "textDocument": {"uri": document.uri, "version": document.version},
            "contentChanges": [wire]})
        self.result.edits += 1
        # the cursor follows the text it stood in
        if document.cursor >= end:
            document.cursor += len(new) - (end - start)
        elif document.cursor > start:
            document.cursor = start + len(new)
        document.cursor = valid_offset(document.text, min(document.cursor, len(document.text)))

    # -- documents -------------------------------------------------------------------------

    def new_text(self) -> str:
        parts = [START_TEXT] + [self.rnd.choice(BODY) for _ in range(self.rnd.randint(4, 40))]
        self.rnd.shuffle(parts)
        return "".join(parts)

    def open(self, uri: str | None = None, text: str | None = None) -> Document:
        if uri is None:
            self.opened += 1
            uri = f"file:///cache-fuzz/d{self.opened}.{'py' if self.opened % 5 else 'txt'}"
        text = self.new_text() if text is None else text
        language = "python" if uri.endswith(".py") else self.rnd.choice(LANGUAGES)
        document = Document(uri, language, text, valid_offset(text, self.rnd.randint(0, len(text))))
        self.notify("textDocument/didOpen", {"textDocument": {
            "uri": uri, "languageId": language, "version": 1, "text": text}})
        self.documents[uri] = document
        self.current = document
        return document

    def close(self, document: Document) -> None:
        for server in self.servers:  # the servers' copies match the editor's
            seen = server.call("dlm/debugDocument", {"textDocument": {"uri": document.uri}}, 60)
            assert seen.get("result", {}).get("text") == document.text, (
                f"{document.uri} drifted: {json.dumps(seen)[:300]}")
        self.notify("textDocument/didClose", {"textDocument": {"uri": document.uri}})
        del self.documents[document.uri]
        self.current = next(iter(self.documents.values()), None)

    # -- one action ------------------------------------------------------------------------

    def act(self) -> str:
        """One random editor action; returns its name."""
        rnd, document = self.rnd, self.current
        if document is None:
            self.open()
            return "open"
        text, cursor = document.text, document.cursor
        roll = rnd.random()
        shrink = len(text) > MAX_DOCUMENT
        if roll < 0.40 and not shrink:  # type the next character of a line being written
            source = rnd.choice(TYPED)
            self.change(document, cursor, cursor, source[rnd.randrange(len(source))])
            return "type"
        if roll < 0.52 and cursor > 0:  # backspace (a \r\n goes whole)
            start = cursor - 2 if text[cursor - 2 : cursor] == "\r\n" else cursor - 1
            self.change(document, start, cursor, "")
            return "backspace"
        if roll < 0.55 and cursor < len(text):  # forward delete
            end = cursor + 2 if text[cursor : cursor + 2] == "\r\n" else cursor + 1
            self.change(document, cursor, end, "")
            return "delete"
        if roll < 0.58 and cursor > 0:  # delete the word before the cursor
            start = cursor
            while start > 0 and text[start - 1] in " \t":
                start -= 1
            while start > 0 and not text[start - 1].isspace():
                start -= 1
            self.change(document, valid_offset(text, start), cursor, "")
            return "delete-word"
        if roll < 0.63 and not shrink:  # Enter, with the line's indentation
            line = text[text.rfind("\n", 0, cursor) + 1 : cursor]
            indent = line[: len(line) - len(line.lstrip(" \t"))]
            self.change(document, cursor, cursor,
                        "\n" + indent + ("    " if rnd.random() < 0.3 else ""))
            return "enter"
        if roll < 0.69 and not shrink:  # paste a block (sometimes over a selection)
            end = valid_offset(text, min(len(text), cursor + rnd.choice((0, 0, 0, 5, 40))))
            self.change(document, cursor, end, rnd.choice(BLOCKS + PIECES))
            return "paste"
        if roll < 0.79:  # an edit anywhere else: above or below the cursor, odd ranges too
            edit = random_edit(rnd, text, max_len=MAX_DOCUMENT)
            if edit.rng is None:  # a whole-document change
                self.log.append(("whole", len(edit.expected)))
                document.text, document.version = edit.expected, document.version + 1
                document.undo.clear()
                document.cursor = valid_offset(edit.expected,
                                               rnd.randint(0, len(edit.expected)))
                self.notify("textDocument/didChange", {
                    "textDocument": {"uri": document.uri, "version": document.version},
                    "contentChanges": [edit.change]})
                self.result.edits += 1
                return "replace-all"
            self.change(document, edit.start, edit.end, edit.text, wire=edit.change)
            return "edit-elsewhere"
        if roll < 0.85 and document.undo:  # undo the last edit
            start, end, old = document.undo.pop()
            self.change(document, start, end, old)
            document.undo.pop()  # an undo is not itself undone
            document.cursor = valid_offset(document.text, start + len(old))
            return "undo"
        if roll < 0.92:  # the cursor jumps (a click, a search, go to definition)
            document.cursor = valid_offset(text, rnd.randint(0, len(text)))
            return "jump"
        if roll < 0.95:  # another document, sometimes a new one
            if len(self.documents) < 4 and rnd.random() < 0.4:
                self.open()
                return "open"
            self.current = rnd.choice(list(self.documents.values()))
            return "switch"
        if roll < 0.975:  # close, and maybe open it again (same or other text)
            self.close(document)
            if rnd.random() < 0.7:
                again = document.text if rnd.random() < 0.6 else self.new_text()
                self.open(document.uri, again)
                return "reopen"
            return "close"
        settings = dict(rnd.choice(SETTINGS))
        self.notify("workspace/didChangeConfiguration", {"settings": {"dlm": settings}})
        if rnd.random() < 0.15:  # the cache itself off and on again (the cached server only)
            for value in (False, True):
                self.servers[0].notify("workspace/didChangeConfiguration",
                                       {"settings": {"dlm": {"contextCache": value}}})
            self.log.append(("cache-off-on",))
        return "settings"

    def request(self, what: str) -> None:
        """A completion request at the current document's cursor, to both servers."""
        document = self.current
        if document is None:
            return
        line, character = position_of(document.text, document.cursor)
        where = {"textDocument": {"uri": document.uri},
                 "position": {"line": line, "character": character}}
        roll = self.rnd.random()
        if roll < 0.85:
            self.ask("textDocument/inlineCompletion", {**where, "context": {"triggerKind": 2}},
                     what)
        elif roll < 0.95:
            self.ask("textDocument/completion", where, what)
        else:
            at = where["position"]
            self.ask("dlm/fill", {"textDocument": where["textDocument"],
                                  "holes": [{"start": at, "end": at}]}, what)

    def run(self, edits: int, *, max_differences: int = 20) -> FuzzResult:
        """Act and ask until `edits` document changes were sent (or too many differences)."""
        started = time.perf_counter()
        self.open()
        while self.result.edits < edits and len(self.result.differences) < max_differences:
            what = self.act()
            self.result.actions += 1
            if what != "settings":
                self.request(what)
        self.result.seconds = time.perf_counter() - started
        return self.result


def save_log(log: list[Any], path: Path) -> Path:
    """The messages of a session, one JSON line each (`replay` sends them again)."""
    path.write_text("".join(json.dumps(entry, ensure_ascii=True) + "\n" for entry in log))
    return path


def replay(path: Path, cached: WireServer, reference: WireServer) -> list[tuple[Any, Any]]:
    """Send a saved session to both servers again; the (cached, reference) answers that
    differ, in order."""
    differ = []
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        if entry[0] == "notify":
            for server in (cached, reference):
                server.notify(entry[1], entry[2])
        elif entry[0] == "cache-off-on":
            for value in (False, True):
                cached.notify("workspace/didChangeConfiguration",
                              {"settings": {"dlm": {"contextCache": value}}})
        elif entry[0] == "request":
            got, want = (_answer(server.call(entry[1], entry[2], 60))
                         for server in (cached, reference))
            if got != want:
                differ.append((got, want))
    return differ


def _answer(response: dict) -> Any:
    """What a response says: its result, or its error's code and message."""
    if "error" in response:
        return {"error": response["error"].get("code"), "message": response["error"].get("message")}
    return response.get("result")
