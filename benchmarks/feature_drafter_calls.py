"""What the feature drafter costs per call: the target graphs with and without their
`features` output bound, and one `drafter.onnx` call.

For a model directory whose fused graphs have the `features` output (`python -m model_export
fuse ... --features card`) and a drafter (`python -m model_export export-drafter`): a
512-token encode and one decoder call of 8 canvas tokens over a 512-token context, each run
alternately with and without `features` among the fetched outputs (a load change on a shared
machine reaches both alike), and one drafter call of 3 new features on 512 cached positions.
Medians and minima in milliseconds.

    python benchmarks/feature_drafter_calls.py MODEL_DIR [--threads 1] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np


def _session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _alternate(session, feeds: dict, plain: list[str], repeats: int) -> dict:
    runs = {"without": [], "with": []}
    for _ in range(repeats + 1):  # the first round warms both up
        for name, outputs in (("without", plain), ("with", plain + ["features"])):
            started = time.perf_counter()
            session.run(outputs, feeds)
            runs[name].append((time.perf_counter() - started) * 1000)
    return {name: {"ms_median": round(float(np.median(t[1:])), 2), "ms_min": round(min(t[1:]), 2)}
            for name, t in runs.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from dlm_lsp.modelcard import load_card
    from model_export.drafter_export import drafter_session, time_one_call

    card = load_card(args.model_dir)
    files = card.graphs["cpu"]
    rng = np.random.default_rng(0)
    S, C = 512, 8
    L, H, D = card.n_layers, card.kv_heads, card.head_dim
    encoder = _session(card.path(files.encoder), args.threads)
    empty = np.zeros((L, 1, H, 0, D), np.float32)
    feeds = {"input_ids": rng.integers(4, card.vocab_size, (1, S)),
             "position_ids": np.arange(S)[None], "attention_mask": np.ones((1, S), np.int64),
             "past_keys": empty, "past_values": empty, "past_mask": np.zeros((1, 0), np.int64)}
    report = {"load_average": os.getloadavg(), "threads": args.threads,
              "encoder_512": _alternate(encoder, feeds, ["keys", "values"], args.repeats)}
    keys, values = encoder.run(["keys", "values"], feeds)
    decoder = _session(card.path(files.decoder), args.threads)
    feeds = {"canvas_ids": rng.integers(4, card.vocab_size, (1, C)),
             "canvas_position_ids": np.arange(S, S + C)[None], "keys": keys, "values": values,
             "context_mask": np.ones((1, S), np.int64), "canvas_mask": np.ones((1, C), bool)}
    report["decoder_8_on_512"] = _alternate(decoder, feeds, ["pred_ids", "pred_prob"],
                                            4 * args.repeats)
    if card.drafter is not None and card.drafter.graph:
        report["drafter_3_on_512"] = time_one_call(
            drafter_session(Path(args.model_dir), card.drafter.graph, args.threads), 3, 512,
            repeats=20)
    report["load_average_after"] = os.getloadavg()
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
