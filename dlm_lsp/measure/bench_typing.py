"""`dlm-lsp bench --scenario typing`: lines typed back a keystroke at a time, with and without
the context cache.

Real lines are taken from real files and removed (their indentation stays: the editor puts it
there), then typed back one character at a time, with an inline completion request after
every keystroke and no debounce, as an editor without debounce would send them. Two servers
run the same keystrokes in turn, interleaved, so load from other processes hits both alike:
one with the context cache (`contextCache: true`), one without. Each line starts on a freshly
opened document, whose first request (before the first keystroke) is the *cold* request. The
server's `dlm/status` after each request says how many context tokens it had and how many ran
through the encoder.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..languages import language_id_for_path
from .client import BenchServer
from .samples import Sample, collect_files, default_files, text_rows
from .stats import format_table, mean, progress, ratio, summarize

SERVERS = {"cache": {"contextCache": True}, "no-cache": {"contextCache": False}}


@dataclass(frozen=True)
class TypedLine:
    """A document with one line's text removed, and that text, to be typed back."""

    path: str
    language_id: str
    text: str  # the document without the line's text (its indentation kept)
    offset: int  # where typing starts
    line: str  # what is typed


@dataclass
class Keystroke:
    """One request as the client saw it and the server reported it."""

    server: str
    line: int  # index of the typed line
    keystroke: int  # 0: the cold request before the first character
    latency_ms: float
    server_ms: float | None
    context_tokens: int | None
    encoded_tokens: int | None
    cached: bool  # answered by the typing-through cache (no model run)


def pick_lines(files: Sequence[Path], count: int, seed: int, *, min_chars: int = 16,
               max_chars: int = 80, min_line: int = 40) -> list[TypedLine]:
    """`count` code lines (not comments, not in docstrings) from `files`, seeded; each at least
    `min_line` lines into its file, so the prefix is a real one."""
    rng = random.Random(seed)
    texts = {}
    for path in files:
        try:
            texts[path] = path.read_text(encoding="utf-8").replace("\r\n", "\n")
        except (OSError, UnicodeDecodeError):
            continue
    paths = sorted(texts)
    picked: list[TypedLine] = []
    attempts = 0
    while paths and len(picked) < count and attempts < 50 * count:
        attempts += 1
        path = rng.choice(paths)
        text, language_id = texts[path], language_id_for_path(path.name)
        lines = text.split("\n")
        skip = text_rows(text, language_id)
        rows = [i for i, line in enumerate(lines) if i >= min_line and i not in skip
                and min_chars <= len(line.strip()) <= max_chars
                and not line.strip().startswith(("#", "//", "*", '"', "'"))]
        if not rows:
            continue
        row = rng.choice(rows)
        start = sum(len(line) + 1 for line in lines[:row])
        body = lines[row].lstrip(" \t")
        offset = start + len(lines[row]) - len(body)
        picked.append(TypedLine(str(path), language_id, text[:offset] + text[offset + len(body):],
                                offset, body))
    return picked


async def type_line(servers: dict[str, Any], typed: TypedLine, index: int,
                    max_keystrokes: int) -> list[Keystroke]:
    """Open the document on every server, ask once (cold), then type the line back, asking
    after every keystroke; servers take turns at each keystroke."""
    out: list[Keystroke] = []
    uris = {name: f"file:///dlm-bench/typing-{name}/{index}/{Path(typed.path).name}"
            for name in servers}
    sample = Sample(kind="typing", path=typed.path, language_id=typed.language_id,
                    text=typed.text, offset=typed.offset, expected=typed.line)
    for name, server in servers.items():
        server.open(uris[name], sample)
    try:
        text, offset = typed.text, typed.offset
        for keystroke, char in enumerate([""] + list(typed.line[:max_keystrokes])):
            if char:
                for name, server in servers.items():
                    server.type_char(uris[name], text, offset, char)
                text, offset = text[:offset] + char + text[offset:], offset + 1
            for name, server in servers.items():
                latency, _, status = await server.complete(uris[name], text, offset)
                out.append(Keystroke(
                    server=name, line=index, keystroke=keystroke, latency_ms=round(latency, 3),
                    server_ms=status.get("lastLatencyMs"),
                    context_tokens=status.get("contextTokens"),
                    encoded_tokens=status.get("contextTokensEncoded"),
                    cached=bool(status.get("lastCached")),
                ))
    finally:
        for name, server in servers.items():
            server.close(uris[name])
    return out


def summarize_typing(keystrokes: list[Keystroke]) -> dict[str, Any]:
    """Per server: keystroke latency (after the cold request), the share of the context that
    ran through the encoder per model-run keystroke, and the cold requests' latency."""
    rows: dict[str, Any] = {}
    for name in SERVERS:
        mine = [k for k in keystrokes if k.server == name]
        if not mine:
            continue
        typed = [k for k in mine if k.keystroke > 0]
        ran = [k for k in typed if not k.cached and k.context_tokens]
        rows[name] = {
            "lines": len({k.line for k in mine}),
            "keystrokes": len(typed),
            "keystroke_ms": summarize([k.latency_ms for k in typed]),
            "keystroke_server_ms": summarize([k.server_ms for k in typed
                                              if k.server_ms is not None]),
            "model_runs": len(ran),
            "typing_through_share": mean([float(k.cached) for k in typed]),
            "context_tokens_mean": mean([k.context_tokens for k in ran]),
            "encoded_tokens_mean": mean([k.encoded_tokens for k in ran]),
            "encoded_share_mean": mean([k.encoded_tokens / k.context_tokens for k in ran]),
            "cold_ms": summarize([k.latency_ms for k in mine if k.keystroke == 0]),
        }
    if "cache" in rows and "no-cache" in rows:
        rows["cache_vs_no_cache_p50"] = ratio(rows["cache"]["keystroke_ms"]["p50"],
                                              rows["no-cache"]["keystroke_ms"]["p50"])
    return rows


def render_typing(report: dict[str, Any]) -> str:
    """The typing report as a table."""
    headers = ["server", "lines", "keys", "p50 ms", "p95 ms", "encoded/context", "ctx tokens",
               "cold p50 ms", "typed-through%"]
    body = []
    for name in SERVERS:
        row = report["typing"].get(name)
        if row:
            share = row["typing_through_share"]
            body.append([name, row["lines"], row["keystrokes"], row["keystroke_ms"]["p50"],
                         row["keystroke_ms"]["p95"], row["encoded_share_mean"],
                         row["context_tokens_mean"], row["cold_ms"]["p50"],
                         None if share is None else 100 * share])
    lines = [f"model {report['model']} on {report['provider']}; {report['source']}; seed "
             f"{report['seed']}; a request after every keystroke, servers interleaved",
             "", format_table(headers, body, digits=2)]
    p50 = report["typing"].get("cache_vs_no_cache_p50")
    if p50 is not None:
        lines.append(f"keystroke p50 with the cache / without: {p50:.2f}")
    return "\n".join(lines)


async def run_typing(args) -> tuple[dict[str, Any], list[Keystroke]]:
    """Start both servers, warm them up on one line, then type `args.lines` lines back."""
    import sys

    source = args.source or default_files()
    files = collect_files(source, args.files, args.seed)
    lines = pick_lines(files, args.lines + 1, args.seed)
    if len(lines) < 2:
        raise ValueError(f"no lines to type in {source}")
    model, device = getattr(args, "model", None), getattr(args, "device", None)
    servers = {name: BenchServer(name, options, model=model, device=device,
                                 log_path=args.server_log, timeout_s=args.timeout)
               for name, options in SERVERS.items()}
    keystrokes: list[Keystroke] = []
    status: dict[str, Any] = {}
    started = time.perf_counter()
    try:
        for name, server in servers.items():
            status = await server.start()
            if status.get("error"):
                raise RuntimeError(f"{name} server has no model: {status['error']}")
        await type_line(servers, lines[0], -1, 8)  # warm-up, not measured
        show = not args.no_progress and sys.stderr.isatty()
        for index, typed in enumerate(progress(lines[1:], total=len(lines) - 1, desc="typing",
                                               enabled=show)):
            keystrokes += await type_line(servers, typed, index, args.max_keystrokes)
    finally:
        for server in servers.values():
            await server.stop()
    report = {
        "scenario": "typing",
        "model": status.get("model"),
        "model_version": status.get("modelVersion"),
        "provider": status.get("provider"),
        "source": str(source),
        "seed": args.seed,
        "lines": [{"path": t.path, "line": t.line} for t in lines[1:]],
        "typing": summarize_typing(keystrokes),
        "seconds": round(time.perf_counter() - started, 2),
    }
    return report, keystrokes
