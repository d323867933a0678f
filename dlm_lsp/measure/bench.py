"""`dlm-lsp bench`: end-to-end latency of the real server, beside token-by-token decoding.

The benchmark drives `python -m dlm_lsp` over stdio with pygls's LanguageClient, exactly as an
editor does: didOpen, then textDocument/inlineCompletion at a cursor, then `dlm/status` for the
server's own figures of that request (steps, tokens, scope, cached). Cursor positions are
sampled from real files the way people type, each with the text after the cursor that the user
has not written yet removed, so every request also has a true answer:

* ``mid-line``: inside a line's code; the rest of the line is removed;
* ``end-of-line``: at the end of a line whose statement continues (an open bracket or a
  trailing comma/operator); the continuation lines are removed;
* ``block-opener``: after a line that opens a block (``:`` or ``{``); the block's body is
  removed, the cursor is on the new, indented line below the opener;
* ``empty-line``: on a line inside a body, emptied to its indentation.

Two servers run side by side and answer the same requests in turn: the parallel sampler (the
model card's settings) and the same weights decoded token by token (``strategy:
left_to_right``, one commit per step: what an autoregressive decoder would do). The speed-up
and its quality cost are then ratios measured on one machine at one moment. A "typing" pass
replays keystrokes through each shown suggestion and counts the answers the typing-through
cache served. Warm-up requests are excluded; the sample is fixed by ``--seed``.

``--scenario typing`` (`bench_typing`) types real lines back a keystroke at a time, a request
after each, with and without the context cache.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import re
import sys
import sysconfig
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

from ..documents import Snapshot
from ..languages import language_id_for_path
from ..server import plain
from .stats import format_table, mean, progress, ratio, summarize

log = logging.getLogger(__name__)

KINDS = ("mid-line", "end-of-line", "block-opener", "empty-line")
SCOPES = ("line", "statement", "block")
STRATEGIES = ("parallel", "left_to_right")
_CONTINUES = re.compile(r"[(\[{,=+\-*/\\]$|\b(and|or|not|in)$")
_OPENS_BLOCK = re.compile(r"(:|\{)$")


# -- samples ----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Sample:
    """A document as the user has it, a cursor in it, and what the user went on to write."""

    kind: str
    path: str
    language_id: str
    text: str  # the document, with `expected` removed
    offset: int  # cursor, a str index into text
    expected: str  # the removed text that belongs at the cursor

    @property
    def original(self) -> str:
        return self.text[: self.offset] + self.expected + self.text[self.offset :]


def _snapshot(text: str) -> Snapshot:
    return Snapshot(uri="", language_id="", version=0, text=text, tree=None, syntax=None)


def utf16_position(text: str, offset: int) -> tuple[int, int]:
    """LSP (line, character) of a str offset, characters counted in UTF-16 code units (as the
    server counts them: `documents.Snapshot`)."""
    return _snapshot(text).position_at(offset)


def utf16_offset(text: str, line: int, character: int) -> int:
    """The str offset of an LSP (line, UTF-16 character) position, clamped to the line."""
    return _snapshot(text).offset_at(line, character)


def default_files() -> Path:
    """This Python's standard library (the default benchmark source)."""
    return Path(sysconfig.get_paths()["stdlib"])


def collect_files(root: Path, count: int, seed: int, *, min_chars: int = 2_000,
                  max_chars: int = 60_000) -> list[Path]:
    """A seeded sample of up to `count` source files under root (a file: just that file)."""
    if root.is_file():
        return [root]
    candidates = []
    skip = ("__pycache__", "site-packages", "dist-packages", "node_modules", "idlelib")
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "test"))
                             and d not in skip)
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if language_id_for_path(name) == "plaintext":
                continue
            try:
                size = path.stat().st_size
            except OSError:
                continue
            if min_chars <= size <= max_chars:
                candidates.append(path)
    rng = random.Random(seed)
    rng.shuffle(candidates)
    return sorted(candidates[:count])


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def _text_rows(text: str, language_id: str) -> set[int]:
    """Rows inside multi-line strings and comments (docstrings): not where people wait for code."""
    from ..languages import syntax_for

    syntax = syntax_for(language_id)
    if syntax is None:
        return set()
    rows: set[int] = set()
    stack = [syntax.parser().parse(text.encode("utf-8")).root_node]
    while stack:
        node = stack.pop()
        if node.type in ("string", "comment", "template_string", "raw_string_literal",
                         "interpreted_string_literal", "block_comment", "string_literal"):
            if node.end_point[0] > node.start_point[0]:
                rows.update(range(node.start_point[0], node.end_point[0] + 1))
            continue
        stack.extend(node.children)
    return rows


def _candidates(lines: list[str], kind: str, excluded: set[int] = frozenset()) -> list[int]:
    """Line indexes where a sample of `kind` can be cut (none inside `excluded` rows)."""
    found = []
    for i, line in enumerate(lines):
        if i in excluded or i + 1 in excluded and kind in ("end-of-line", "block-opener"):
            continue
        code = line.rstrip()
        body = code.strip()
        if not body or body.startswith(("#", "//", "*", "/*", '"""', "'''")):
            continue
        following = lines[i + 1] if i + 1 < len(lines) else ""
        deeper = following.strip() and _indent(following) > _indent(line)
        if kind == "mid-line" and len(body) >= 12:
            found.append(i)
        elif kind == "end-of-line" and _CONTINUES.search(code) and deeper:
            found.append(i)
        elif kind == "block-opener" and _OPENS_BLOCK.search(code) and deeper:
            found.append(i)
        elif kind == "empty-line" and _indent(line) > 0 and i > 0 and lines[i - 1].strip() \
                and _indent(lines[i - 1]) == _indent(line):
            found.append(i)
    return found


def cut_sample(text: str, path: str, kind: str, line_index: int,
               rng: random.Random) -> Sample | None:
    """The sample of `kind` at a line of `text` (see the module docstring), or None."""
    lines = text.split("\n")
    starts = [0]
    for line in lines[:-1]:
        starts.append(starts[-1] + len(line) + 1)
    line = lines[line_index]
    start = starts[line_index]
    language_id = language_id_for_path(path)
    if kind == "mid-line":
        lo = start + _indent(line) + 1
        hi = start + len(line.rstrip()) - 1
        if hi <= lo:
            return None
        cursor = rng.randrange(lo, hi)
        end = start + len(line)
        return Sample(kind=kind, path=path, language_id=language_id,
                      text=text[:cursor] + text[end:], offset=cursor, expected=text[cursor:end])
    if kind == "empty-line":
        cursor = start + _indent(line)
        end = start + len(line)
        return Sample(kind=kind, path=path, language_id=language_id,
                      text=text[:cursor] + text[end:], offset=cursor, expected=text[cursor:end])
    # end-of-line and block-opener: remove the deeper-indented lines that follow
    level = _indent(line)
    last = line_index
    for j in range(line_index + 1, len(lines)):
        if lines[j].strip() and _indent(lines[j]) <= level:
            break
        if lines[j].strip():
            last = j
    if last == line_index:
        return None
    if last - line_index > 40:  # a whole class body: not what people wait for
        last = line_index + 40
        while last > line_index + 1 and not lines[last].strip():
            last -= 1
    removed_end = starts[last] + len(lines[last])
    line_end = start + len(line)
    if kind == "end-of-line":
        cursor = line_end
        return Sample(kind=kind, path=path, language_id=language_id,
                      text=text[:cursor] + text[removed_end:], offset=cursor,
                      expected=text[cursor:removed_end])
    # block-opener: the user pressed Enter after the opener; the editor indented the new line
    body_indent = lines[line_index + 1][: _indent(lines[line_index + 1])]
    cursor = line_end + 1 + len(body_indent)
    body = text[cursor:removed_end]
    new_text = text[:line_end] + "\n" + body_indent + text[removed_end:]
    return Sample(kind=kind, path=path, language_id=language_id, text=new_text,
                  offset=cursor, expected=body)


def sample_positions(files: Sequence[Path], count: int, seed: int,
                     kinds: Sequence[str] = KINDS) -> list[Sample]:
    """`count` samples, kinds in turn, files and lines drawn with a seeded generator."""
    rng = random.Random(seed)
    texts: dict[Path, str] = {}
    for path in files:
        try:
            texts[path] = path.read_text(encoding="utf-8").replace("\r\n", "\n")
        except (OSError, UnicodeDecodeError):
            continue
    if not texts:
        return []
    paths = sorted(texts)
    excluded = {p: _text_rows(texts[p], language_id_for_path(p.name)) for p in paths}
    samples: list[Sample] = []
    attempts = 0
    while len(samples) < count and attempts < count * 50:
        attempts += 1
        kind = kinds[len(samples) % len(kinds)]
        path = rng.choice(paths)
        lines = texts[path].split("\n")
        found = _candidates(lines, kind, excluded[path])
        if not found:
            continue
        sample = cut_sample(texts[path], str(path), kind, rng.choice(found), rng)
        if sample is not None and sample.expected.strip():
            samples.append(sample)
    return samples


# -- scoring ----------------------------------------------------------------------------------


def _normalize(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.split("\n")).rstrip()


def apply_edit(text: str, start: int, end: int, insert: str) -> str:
    return text[:start] + insert + text[end:]


def exact_match(sample: Sample, start: int, end: int, insert: str) -> bool:
    """Whether accepting the suggestion gives back what the user wrote (up to trailing
    whitespace), judged on the whole document so that replaced closers count right."""
    if not insert:
        return False
    return _normalize(apply_edit(sample.text, start, end, insert)) == _normalize(sample.original)


# -- the server -------------------------------------------------------------------------------


@dataclass
class Measurement:
    """One request as the client saw it and as the server reported it."""

    strategy: str
    kind: str
    path: str
    latency_ms: float  # client wall clock, request sent → answer received
    server_ms: float | None
    steps: int | None
    tokens: int | None
    scope: str | None
    cached: bool
    suggested: bool
    exact_match: bool
    text: str = ""
    error: str | None = None  # the request failed (JSON-RPC error or timeout)


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


def _item_edit(text: str, offset: int, item: Any) -> tuple[int, int, str]:
    """(start, end, insert) of an inline item; without a range it inserts at the cursor."""
    insert = item.insert_text if isinstance(item.insert_text, str) else item.insert_text.value
    if item.range is None:
        return offset, offset, insert
    start = utf16_offset(text, item.range.start.line, item.range.start.character)
    end = utf16_offset(text, item.range.end.line, item.range.end.character)
    return start, end, insert


async def measure(server: BenchServer, strategy: str, sample: Sample, index: int) -> Measurement:
    """One completion request on a freshly opened copy of the sample's document."""
    uri = f"file:///dlm-bench/{strategy}/{index}/{Path(sample.path).name}"
    server.open(uri, sample)
    started = time.perf_counter()
    try:
        latency, item, status = await server.complete(uri, sample.text, sample.offset)
    except Exception as exc:  # an error answer is a measurement too, and the run goes on
        log.warning("%s request %d failed: %s", strategy, index, exc)
        return Measurement(
            strategy=strategy, kind=sample.kind, path=sample.path,
            latency_ms=round((time.perf_counter() - started) * 1000, 3), server_ms=None,
            steps=None, tokens=None, scope=None, cached=False, suggested=False,
            exact_match=False, error=f"{type(exc).__name__}: {exc}",
        )
    finally:
        server.close(uri)
    start, end, insert = _item_edit(sample.text, sample.offset, item) if item else (0, 0, "")
    return Measurement(
        strategy=strategy, kind=sample.kind, path=sample.path, latency_ms=round(latency, 3),
        server_ms=status.get("lastLatencyMs"), steps=status.get("lastSteps"),
        tokens=status.get("lastTokens"), scope=status.get("lastScope"),
        cached=bool(status.get("lastCached")), suggested=bool(insert),
        exact_match=exact_match(sample, start, end, insert) if item else False, text=insert,
    )


async def typing_pass(server: BenchServer, sample: Sample, index: int,
                      keystrokes: int) -> list[Measurement]:
    """Show a suggestion, then type its first characters one keystroke at a time, asking
    again after each (as an editor does); each answer says whether the cache served it."""
    uri = f"file:///dlm-bench/typing/{index}/{Path(sample.path).name}"
    server.open(uri, sample)
    out: list[Measurement] = []
    try:
        _, item, _ = await server.complete(uri, sample.text, sample.offset)
        if item is None:
            return out
        start, end, insert = _item_edit(sample.text, sample.offset, item)
        if start != sample.offset:
            return out
        text, offset = sample.text, sample.offset
        for char in insert.split("\n", 1)[0][:keystrokes]:
            server.type_char(uri, text, offset, char)
            text, offset = text[:offset] + char + text[offset:], offset + 1
            latency, item, status = await server.complete(uri, text, offset)
            out.append(Measurement(
                strategy="typing", kind=sample.kind, path=sample.path,
                latency_ms=round(latency, 3), server_ms=status.get("lastLatencyMs"),
                steps=status.get("lastSteps"), tokens=status.get("lastTokens"),
                scope=status.get("lastScope"), cached=bool(status.get("lastCached")),
                suggested=item is not None, exact_match=False,
            ))
    finally:
        server.close(uri)
    return out


# -- report -----------------------------------------------------------------------------------


def summarize_measurements(measurements: list[Measurement]) -> dict[str, Any]:
    """Per strategy and scope (and 'all'): latency percentiles, steps, tokens/s, exact match."""
    rows: dict[str, dict[str, Any]] = {}
    for strategy in STRATEGIES:
        mine = [m for m in measurements if m.strategy == strategy]
        if not mine:
            continue
        scopes = [s for s in SCOPES if any(m.scope == s for m in mine)]
        others = sorted({m.scope or "none" for m in mine} - set(SCOPES))
        rows[strategy] = {}
        for scope in [*scopes, *others, "all"]:
            group = [m for m in mine if scope == "all" or (m.scope or "none") == scope]
            seconds = sum((m.server_ms or m.latency_ms) for m in group) / 1000
            rows[strategy][scope] = {
                "requests": len(group),
                "latency_ms": summarize([m.latency_ms for m in group]),
                "server_ms": summarize([m.server_ms for m in group if m.server_ms is not None]),
                "steps": mean([m.steps for m in group if m.steps is not None]),
                "tokens": mean([m.tokens for m in group if m.tokens is not None]),
                "tokens_per_s": ratio(sum(m.tokens or 0 for m in group), seconds),
                "exact_match": mean([float(m.exact_match) for m in group]),
                "suggested": mean([float(m.suggested) for m in group]),
                "errors": sum(m.error is not None for m in group),
            }
    return rows


def compare(rows: dict[str, Any]) -> dict[str, Any]:
    """Parallel against token-by-token per scope: latency and steps ratios, quality delta."""
    if "parallel" not in rows or "left_to_right" not in rows:
        return {}
    out = {}
    for scope, fast in rows["parallel"].items():
        slow = rows["left_to_right"].get(scope)
        if slow is None:
            continue
        out[scope] = {
            "speedup_p50": ratio(slow["latency_ms"]["p50"], fast["latency_ms"]["p50"]),
            "speedup_mean": ratio(slow["latency_ms"]["mean"], fast["latency_ms"]["mean"]),
            "steps_ratio": ratio(slow["steps"], fast["steps"]),
            "exact_match_parallel": fast["exact_match"],
            "exact_match_left_to_right": slow["exact_match"],
        }
    return out


def summarize_typing(measurements: list[Measurement]) -> dict[str, Any] | None:
    typed = [m for m in measurements if m.strategy == "typing"]
    if not typed:
        return None
    return {
        "keystrokes": len(typed),
        "cached_share": mean([float(m.cached) for m in typed]),
        "latency_ms": summarize([m.latency_ms for m in typed]),
        "cached_latency_ms": summarize([m.latency_ms for m in typed if m.cached]),
    }


def render(report: dict[str, Any]) -> str:
    """The report as terminal tables."""
    lines = [
        f"model {report['model']} on {report['provider']} "
        f"({report['device_note']}); {report['requests']} requests per strategy, "
        f"seed {report['seed']}, {report['warmup']} warm-up excluded; "
        f"{report['files']} files from {report['source']}",
    ]
    headers = ["strategy/scope", "n", "p50 ms", "p95 ms", "p99 ms", "steps", "tok/s",
               "exact%", "shown%"]
    body = []
    for strategy, scopes in report["results"].items():
        for scope, row in scopes.items():
            body.append([
                f"{strategy}/{scope}", row["requests"], row["latency_ms"]["p50"],
                row["latency_ms"]["p95"], row["latency_ms"]["p99"], row["steps"],
                row["tokens_per_s"],
                None if row["exact_match"] is None else 100 * row["exact_match"],
                None if row["suggested"] is None else 100 * row["suggested"],
            ])
    lines += ["", format_table(headers, body)]
    if report["comparison"]:
        headers = ["scope", "speed-up p50", "speed-up mean", "steps ratio",
                   "exact% parallel", "exact% token-by-token"]
        body = [[scope, c["speedup_p50"], c["speedup_mean"], c["steps_ratio"],
                 None if c["exact_match_parallel"] is None else 100 * c["exact_match_parallel"],
                 None if c["exact_match_left_to_right"] is None
                 else 100 * c["exact_match_left_to_right"]]
                for scope, c in report["comparison"].items()]
        lines += ["", "parallel vs token-by-token (same weights, same requests, interleaved):",
                  format_table(headers, body, digits=2)]
    typing = report.get("typing")
    if typing:
        lines += ["", f"typing: {typing['keystrokes']} keystrokes replayed through suggestions; "
                  f"{100 * (typing['cached_share'] or 0):.0f}% answered from the typing-through "
                  f"cache; keystroke p50 {typing['latency_ms']['p50'] or 0:.1f} ms, "
                  f"p95 {typing['latency_ms']['p95'] or 0:.1f} ms"]
    rss = report["rss_mb"]
    lines += ["", "server RSS MiB (after load / after warm-up / after run): " + "; ".join(
        f"{name} {' / '.join('-' if v is None else f'{v:.0f}' for v in values)}"
        for name, values in rss.items())]
    return "\n".join(lines)


def plot(measurements: list[Measurement], report: dict[str, Any], path: str | Path) -> None:
    """Latency distribution per scope and strategy; steps against exact match."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    labels, data = [], []
    for strategy in STRATEGIES:
        for scope in SCOPES:
            values = [m.latency_ms for m in measurements
                      if m.strategy == strategy and m.scope == scope]
            if values:
                labels.append(f"{scope}\n{'parallel' if strategy == 'parallel' else 'token×1'}")
                data.append(values)
    if data:
        left.boxplot(data, showfliers=True)
        left.set_xticks(range(1, len(labels) + 1), labels, fontsize=8)
    left.set_yscale("log")
    left.set_ylabel("end-to-end latency (ms)")
    left.set_title(f"latency per scope ({report['provider']})")
    left.grid(alpha=0.3, axis="y")
    for strategy, marker in zip(STRATEGIES, ("o", "s")):
        for scope in SCOPES:
            row = report["results"].get(strategy, {}).get(scope)
            if not row or row["steps"] is None:
                continue
            right.scatter(row["steps"], 100 * row["exact_match"], marker=marker, s=50,
                          label=f"{strategy.replace('_', '-')} {scope}")
            right.annotate(scope, (row["steps"], 100 * row["exact_match"]), fontsize=7,
                           xytext=(4, 4), textcoords="offset points")
    right.set_xscale("log")
    right.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    right.set_ylim(-3, 103)
    right.set_xlabel("denoiser calls per request (mean)")
    right.set_ylabel("exact match (%)")
    right.set_title("steps vs exact match")
    right.grid(alpha=0.3)
    if right.collections:
        right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- command line -----------------------------------------------------------------------------


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `bench` subcommand."""
    parser = subparsers.add_parser(
        "bench", help="latency of the real server on real files, beside token-by-token decoding",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("source", nargs="?", type=Path, default=None,
                        help="directory (or file) of source files (default: a sample of this "
                        "Python's standard library)")
    parser.add_argument("-n", "--requests", type=int, default=24,
                        help="measured requests per strategy (default 24)")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured requests first")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--files", type=int, default=40, help="files sampled from the source")
    parser.add_argument("--kinds", default=",".join(KINDS),
                        help=f"cursor kinds, comma list of {', '.join(KINDS)}")
    parser.add_argument("--no-token-by-token", dest="baseline", action="store_false",
                        help="skip the token-by-token server (faster)")
    parser.add_argument("--typing", type=int, default=6, metavar="K",
                        help="keystrokes typed through each of a few suggestions (0: off)")
    parser.add_argument("--typing-samples", type=int, default=4,
                        help="suggestions typed through in the typing pass")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--out", type=Path, default=None, help="per-request jsonl")
    parser.add_argument("--plot", type=Path, default=None, help="write a PNG")
    parser.add_argument("--server-log", type=Path, default=None,
                        help="append the servers' stderr here (default: discarded)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--scenario", choices=["requests", "typing"], default="requests",
                        help="requests: one request per cursor (default); typing: lines typed "
                        "back a keystroke at a time, with and without the context cache")
    parser.add_argument("--lines", type=int, default=8, help="typing: lines typed back")
    parser.add_argument("--max-keystrokes", type=int, default=60,
                        help="typing: keystrokes per line at most")
    parser.set_defaults(func=run)
    return parser


def _largest_bucket(model: str | None) -> int:
    from ..modelcard import default_model_dir, load_card

    return max(load_card(model or default_model_dir()).canvas_buckets)


async def run_bench(args: argparse.Namespace) -> tuple[dict[str, Any], list[Measurement]]:
    """Start the servers, warm them up, measure, and build the report."""
    source = args.source or default_files()
    kinds = [k for k in args.kinds.split(",") if k in KINDS] or list(KINDS)
    files = collect_files(source, args.files, args.seed)
    samples = sample_positions(files, args.warmup + args.requests, args.seed, kinds)
    if len(samples) <= args.warmup:
        raise ValueError(f"no usable cursor positions in {source}")
    warmup, measured = samples[: args.warmup], samples[args.warmup :]
    model = getattr(args, "model", None)
    device = getattr(args, "device", None)
    servers = {"parallel": BenchServer("parallel", {}, model=model, device=device,
                                       log_path=args.server_log, timeout_s=args.timeout)}
    if args.baseline:
        servers["left_to_right"] = BenchServer(
            "left_to_right", {"strategy": "left_to_right", "maxSteps": _largest_bucket(model)},
            model=model, device=device, log_path=args.server_log, timeout_s=args.timeout)
    rss: dict[str, list[float | None]] = {}
    measurements: list[Measurement] = []
    status: dict[str, Any] = {}
    try:
        for name, server in servers.items():
            status = await server.start()
            if status.get("error"):
                raise RuntimeError(f"{name} server has no model: {status['error']}")
            rss[name] = [server.rss_mb()]
        for name, server in servers.items():
            for index, sample in enumerate(warmup):
                await measure(server, name, sample, -1 - index)
            rss[name].append(server.rss_mb())
        show = not args.no_progress and sys.stderr.isatty()
        for index, sample in enumerate(progress(measured, total=len(measured), desc="bench",
                                                enabled=show)):
            for name, server in servers.items():  # interleaved: same moment, same load
                measurements.append(await measure(server, name, sample, index))
        if args.typing > 0:
            chosen = [s for s in measured if s.kind in ("mid-line", "empty-line")]
            for index, sample in enumerate(chosen[: args.typing_samples]):
                try:
                    measurements += await typing_pass(servers["parallel"], sample, index,
                                                      args.typing)
                except Exception as exc:  # a failed replay loses its keystrokes, not the run
                    log.warning("typing pass %d failed: %s", index, exc)
        for name, server in servers.items():
            rss[name].append(server.rss_mb())
        status = await servers["parallel"].status()
    finally:
        for server in servers.values():
            await server.stop()
    results = summarize_measurements(measurements)
    report = {
        "model": status.get("model"),
        "model_version": status.get("modelVersion"),
        "provider": status.get("provider"),
        "device_note": f"--device {device or 'auto'}",
        "source": str(source),
        "files": len(files),
        "seed": args.seed,
        "warmup": len(warmup),
        "requests": len(measured),
        "kinds": kinds,
        "results": results,
        "comparison": compare(results),
        "typing": summarize_typing(measurements),
        "rss_mb": rss,
    }
    return report, measurements


def run(args: argparse.Namespace) -> int:
    """`dlm-lsp bench`: 0 when the run finished, 2 when it could not start."""
    started = time.perf_counter()
    if getattr(args, "scenario", "requests") == "typing":
        return _run_typing(args)
    try:
        report, measurements = asyncio.run(run_bench(args))
    except (ValueError, RuntimeError, OSError, asyncio.TimeoutError) as exc:
        print(f"dlm-lsp bench: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    report["seconds"] = round(time.perf_counter() - started, 2)
    if args.out:
        from .stats import write_jsonl

        write_jsonl(args.out, (asdict(m) for m in measurements))
    if args.plot:
        plot(measurements, report, args.plot)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(render(report))
        print(f"{report['seconds']} s" + (f"; plot: {args.plot}" if args.plot else "")
              + (f"; per-request: {args.out}" if args.out else ""))
    return 0


def _run_typing(args: argparse.Namespace) -> int:
    """`dlm-lsp bench --scenario typing` (see dlm_lsp.measure.bench_typing)."""
    from .bench_typing import render_typing, run_typing

    try:
        report, keystrokes = asyncio.run(run_typing(args))
    except (ValueError, RuntimeError, OSError, asyncio.TimeoutError) as exc:
        print(f"dlm-lsp bench: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    if args.out:
        from .stats import write_jsonl

        write_jsonl(args.out, (asdict(k) for k in keystrokes))
    print(json.dumps(report, indent=2) if args.json else render_typing(report))
    return 0
