"""`dlm-lsp bench`: end-to-end latency of the real server, beside token-by-token decoding.

The benchmark drives `python -m dlm_lsp` over stdio with pygls's LanguageClient, exactly as an
editor does: didOpen, then textDocument/inlineCompletion at a cursor, then `dlm/status` for the
server's own figures of that request (steps, tokens, scope, cached). Cursor positions are
sampled from real files the way people type, each with the text after the cursor that the user
has not written yet removed, so every request also has a true answer (`samples`; the client is
`client`, the tables and plot `report`).

Two servers run side by side and answer the same requests in turn: the model card's settings
("card": the parallel sampler, or speculative decoding for an autoregressive model, whose
tokens per target call the report shows) and the same weights decoded token by token (``strategy:
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
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .client import BenchServer, item_edit
from .report import (Measurement, compare, plot, render, summarize_measurements,
                     summarize_typing)
from .samples import KINDS, Sample, collect_files, default_files, exact_match, sample_positions
from .stats import progress

log = logging.getLogger(__name__)


# -- requests ---------------------------------------------------------------------------------


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
    start, end, insert = item_edit(sample.text, sample.offset, item) if item else (0, 0, "")
    return Measurement(
        strategy=strategy, kind=sample.kind, path=sample.path, latency_ms=round(latency, 3),
        server_ms=status.get("lastLatencyMs"), steps=status.get("lastSteps"),
        rerank_steps=status.get("lastRerankSteps"),
        tokens=status.get("lastTokens"), scope=status.get("lastScope"),
        drafted=status.get("lastDrafted"), accepted=status.get("lastAccepted"),
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
        start, end, insert = item_edit(sample.text, sample.offset, item)
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


def card_strategy(model: str | None) -> str:
    """The strategy the model card recommends (what the "card" server decodes with)."""
    from ..modelcard import default_model_dir, load_card

    return load_card(model or default_model_dir()).sampler.strategy


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
    servers = {"card": BenchServer("card", {}, model=model, device=device,
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
                    measurements += await typing_pass(servers["card"], sample, index,
                                                      args.typing)
                except Exception as exc:  # a failed replay loses its keystrokes, not the run
                    log.warning("typing pass %d failed: %s", index, exc)
        for name, server in servers.items():
            rss[name].append(server.rss_mb())
        status = await servers["card"].status()
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
        "card_strategy": (status.get("settings") or {}).get("strategy") or card_strategy(model),
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
