"""One model call at a time, through the runtime, for model directories side by side.

For each model directory, in a fresh process (so that load time and memory are its own):
`OnnxDenoiser(card)` load time and RSS after load, a 512-token encode, and one decoder call
of M = 1, 16, 64 canvas tokens over a 512-token cached context (the anchor hidden, as a
shifted layout sends it), at each thread count. Directories alternate within each round, so
a load change on a shared machine reaches them alike; medians and minima over the repeats.

    python benchmarks/graph_calls.py DIR_A DIR_B [--threads 1,2] [--rounds 2] [--repeats 9]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def measure(model: Path, threads: int, repeats: int) -> dict:
    import psutil

    from dlm_lsp.layout import build_layout
    from dlm_lsp.modelcard import load_card
    from dlm_lsp.runtime import OnnxDenoiser

    card = load_card(model)
    started = time.perf_counter()
    runtime = OnnxDenoiser(card, "cpu", threads)
    load_ms = (time.perf_counter() - started) * 1000
    rss = psutil.Process().memory_info().rss / 2**20
    rng = np.random.default_rng(0)
    prefix = list(rng.integers(4, card.vocab_size, 511))
    layout = build_layout([prefix, []], [64], card.special_tokens.file, shift=card.shift)

    def timed(call, n):
        call()
        times = []
        for _ in range(n):
            t = time.perf_counter()
            call()
            times.append((time.perf_counter() - t) * 1000)
        return {"p50": round(float(np.median(times)), 1), "min": round(min(times), 1)}

    row = {"model": str(model), "decoder": runtime.graphs.decoder, "threads": threads,
           "load_ms": round(load_ms), "rss_after_load_mb": round(rss)}
    row["encode_512"] = timed(lambda: runtime.encode(layout), max(2, repeats // 3))
    state = runtime.encode(layout)
    canvas = rng.integers(4, card.vocab_size, 64)
    ids, positions = layout.decoder_inputs(canvas, np.array(layout.canvas_positions[0]))
    for m in (1, 16, 64):
        row[f"decoder_M{m}"] = timed(
            lambda: runtime.denoise_step(state, ids[None, :m], positions[None, :m]),
            repeats if m < 64 else max(3, repeats // 2))
    row["rss_after_calls_mb"] = round(psutil.Process().memory_info().rss / 2**20)
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", type=Path)
    p.add_argument("--threads", default="1,2")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    if args.worker:
        print(json.dumps(measure(args.models[0], threads[0], args.repeats)))
        return 0
    for round_ in range(args.rounds):
        for count in threads:
            for model in args.models:
                out = subprocess.run(
                    [sys.executable, __file__, str(model), "--worker", "--threads", str(count),
                     "--repeats", str(args.repeats)], capture_output=True, text=True,
                    check=True, env=os.environ)
                row = json.loads(out.stdout.strip().splitlines()[-1])
                row["round"] = round_
                row["load_average"] = [round(x, 2) for x in os.getloadavg()]
                print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
