"""Soak: a long mixed session against the real server (edits, completions, cancels, fills, opens
and closes), printing latency percentiles and memory over time.

    python benchmarks/soak.py [--minutes 10] [--model DIR | --synthetic] [--gap-ms 8]

Default model: the shipped one (dlm_lsp/models/default) when it is there, else a synthetic
model built in a temporary directory (fast and deterministic; see
tests/reliability/synthetic_model.py). The server runs through tests/reliability/probe_server.py
(the real server plus a `reliability/probe` request) so that asyncio tasks and Python threads
can be counted from inside. Bounded by --minutes and --rounds; every line is one round.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from reliability.storm import storm  # noqa: E402
from reliability.synthetic_model import build_synthetic_model  # noqa: E402
from reliability.wire import WireServer, probe_argv  # noqa: E402

MB = 1024 * 1024


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))] if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=10_000, help="stop after this many rounds")
    parser.add_argument("--requests-per-round", type=int, default=200)
    parser.add_argument("--gap-ms", type=float, default=8.0, help="mean time between keystrokes")
    parser.add_argument("--model", default=None)
    parser.add_argument("--synthetic", action="store_true", help="use the synthetic model")
    args = parser.parse_args(argv)

    temp = tempfile.TemporaryDirectory(prefix="dlm-soak-")
    shipped = REPO / "dlm_lsp" / "models" / "default"
    if args.model:
        model = Path(args.model)
    elif not args.synthetic and (shipped / "model.json").exists():
        model = shipped
    else:
        model = build_synthetic_model(Path(temp.name) / "synthetic", work=384)
    print(f"soak: model {model}, {args.minutes} min, {args.requests_per_round} requests/round",
          flush=True)
    server = WireServer(probe_argv("--model", str(model), log_level="warning"),
                        stderr_path=Path(temp.name) / "stderr.log")
    rnd = random.Random(0)
    started = time.monotonic()
    totals = {"requests": 0, "completions": 0, "cancelled": 0, "errors": 0, "stale": 0,
              "fills": 0}
    first = None
    try:
        server.initialize()
        print(f"{'t(s)':>6} {'round':>5} {'reqs':>6} {'p50':>6} {'p90':>6} {'p99':>6} "
              f"{'RSS MB':>7} {'thr':>4} {'osthr':>5} {'tasks':>5} {'docs':>4}", flush=True)
        for round_no in range(args.rounds):
            if time.monotonic() - started > args.minutes * 60:
                break
            uri = f"file:///soak/{round_no % 7}.py"
            result = storm(server, uri, args.requests_per_round, seed=round_no,
                           gap_ms=args.gap_ms, timeout=300)
            fill_ids = []
            for _ in range(3):  # fills and classic completions between typing bursts
                fill_ids.append(server.request("dlm/fill", {"textDocument": {"uri": uri}, "holes": [
                    {"start": {"line": 1, "character": 4}, "end": {"line": 1, "character": 9}}]}))
                fill_ids.append(server.request("textDocument/completion", {
                    "textDocument": {"uri": uri}, "position": {"line": 2, "character": 4}}))
            server.wait_all(fill_ids, 300)
            if rnd.random() < 0.5:
                server.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
            probe = server.call("reliability/probe", {}, timeout=60)["result"]
            first = first or probe
            totals["requests"] += result.requests
            totals["completions"] += result.non_empty
            totals["cancelled"] += result.cancelled
            totals["errors"] += len(result.errors)
            totals["stale"] += len(result.stale)
            totals["fills"] += len(fill_ids)
            lat = result.latencies_ms
            print(f"{time.monotonic() - started:6.0f} {round_no:5d} {totals['requests']:6d} "
                  f"{percentile(lat, .5):6.0f} {percentile(lat, .9):6.0f} "
                  f"{percentile(lat, .99):6.0f} {probe['rss'] / MB:7.1f} {probe['threads']:4d} "
                  f"{server.threads():5d} {probe['tasks']:5d} {probe['documents']:4d}", flush=True)
            if not server.alive():
                print("SERVER DIED", server.stderr_tail(), flush=True)
                return 1
        last = server.call("reliability/probe", {}, timeout=60)["result"]
        print(f"totals: {totals}; duplicates {len(server.duplicates())}; "
              f"RSS {first['rss'] / MB:.1f} → {last['rss'] / MB:.1f} MB; "
              f"threads {first['threads']} → {last['threads']}; "
              f"tasks {first['tasks']} → {last['tasks']}", flush=True)
        return 1 if totals["errors"] or totals["stale"] or server.duplicates() else 0
    finally:
        server.close()
        temp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
