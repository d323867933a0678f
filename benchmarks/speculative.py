"""Speculative against left to right on the same cursors, through the Engine: the same text?
how many target calls, how many tokens per call, how long?

    python benchmarks/speculative.py --count 24 [--threads 2] [--draft-length 8]

Cursors are `dlm_lsp.measure.samples` positions in standard-library files (seeded, the four
kinds), each completed cold (no context cache) by both strategies in turn. Reports the share of
identical texts, target calls, tokens per call, and wall time per strategy and kind.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dlm_lsp.engine import Engine  # noqa: E402
from dlm_lsp.measure.samples import collect_files, default_files, sample_positions  # noqa: E402
from dlm_lsp.settings import Settings  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--draft-length", type=int, default=8)
    parser.add_argument("--model", default=None)
    parser.add_argument("--out", type=Path, default=None, help="per-cursor records, jsonl")
    args = parser.parse_args()
    engine = Engine(args.model, Settings(threads=args.threads, context_cache=False,
                                         draft_length=args.draft_length))
    files = collect_files(default_files(), max(8, args.count // 2), args.seed)
    samples = sample_positions(files, args.count, args.seed)
    strategies = {"left_to_right": dataclasses.replace(engine.settings, strategy="left_to_right"),
                  "speculative": dataclasses.replace(engine.settings, strategy="speculative")}
    if getattr(engine.denoiser, "has_drafter", False):
        # lookup alone (the default) and, where it finds nothing, the card's feature drafter
        strategies["drafter"] = dataclasses.replace(engine.settings, strategy="speculative",
                                                    feature_drafts=True)
    records = []
    for sample in samples:
        row = {"kind": sample.kind, "path": sample.path}
        for name, settings in strategies.items():
            started = time.perf_counter()
            result = engine.complete_text(sample.text, sample.offset, sample.language_id,
                                          settings=settings)
            row[name] = {
                "text": result.completion.text if result.completion else "",
                "steps": result.steps, "tokens": result.tokens,
                "drafted": result.drafted, "accepted": result.accepted,
                "ms": round(1000 * (time.perf_counter() - started), 1),
            }
        row["same"] = all(row[name]["text"] == row["left_to_right"]["text"]
                          for name in strategies)
        records.append(row)
        print(json.dumps(row), file=sys.stderr)
    if args.out:
        args.out.write_text("".join(json.dumps(r) + "\n" for r in records))
    kinds = sorted({r["kind"] for r in records}) + ["all"]
    print(f"load average {os.getloadavg()[0]:.2f}; {len(records)} cursors; draft length "
          f"{args.draft_length}")
    names = " / ".join(strategies)
    print(f"| kind | n | same text | calls {names} | tokens per call {names} "
          f"| p50 ms {names} | wall ratio to left_to_right |")
    print("|---|---|---|---|---|---|---|")
    for kind in kinds:
        group = [r for r in records if kind in ("all", r["kind"])]
        if not group:
            continue
        def total(name, field):
            return sum(r[name][field] for r in group)
        calls = {n: total(n, "steps") for n in strategies}
        tokens = {n: total(n, "tokens") for n in strategies}
        p50 = {n: statistics.median(r[n]["ms"] for r in group) for n in strategies}
        wall = {n: total(n, "ms") / max(1e-9, total("left_to_right", "ms")) for n in strategies}
        same = sum(r["same"] for r in group)

        def each(values, spec="{}"):
            return " / ".join(spec.format(values[n]) for n in strategies)

        per_call = {n: tokens[n] / max(1, calls[n]) for n in strategies}
        print(f"| {kind} | {len(group)} | {same}/{len(group)} | {each(calls)} | "
              f"{each(per_call, '{:.2f}')} | {each(p50, '{:.0f}')} | "
              f"{each(wall, '{:.2f}')} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
