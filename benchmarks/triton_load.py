"""Load: N simulated editors against one Triton server, beside N editors each with a local model.

Each editor is its own process with its own engine, as each user runs their own dlm-lsp: it
plans, tokenizes and postprocesses locally and asks for `--requests` block and line completions
one after another (a closed loop: one request in flight per editor, bounded). In "triton" mode
its engine sends each layout to one tritonserver (pytriton's bundled binary, loopback, the
repository `dlm-lsp triton-repo` writes, dynamic batching); in "local" mode it runs the model
itself, all editors sharing this machine's cores. Reports completions/s over the wall time from
a common start, p50/p95 latency per completion, and the batches Triton formed (its metrics
endpoint: requests answered / model executions).

    python benchmarks/triton_load.py [--editors 1,4,16] [--requests 8] [--model DIR]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import re
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from complete_latency import sample_positions

from dlm_lsp.remote.pytriton_server import LocalTriton
from dlm_lsp.stats import format_table, percentile
from dlm_lsp.triton_repo import RepoSettings, write_repository


def editor(index: int, mode: str, url: str | None, model: str | None, prompts: list,
           requests: int, start: mp.Barrier, results: mp.Queue) -> None:
    """One editor: load its engine, wait for the others, then complete `requests` times."""
    from dlm_lsp.engine import Engine
    from dlm_lsp.remote.failover import remote_engine
    from dlm_lsp.settings import Settings

    settings = Settings(model_dir=model, remote=url if mode == "triton" else None)
    engine = remote_engine(settings) if mode == "triton" else Engine(settings=settings)
    text, offset = prompts[index % len(prompts)]
    engine.complete_text(text, offset, "python")  # warm up (first-call allocations)
    start.wait()
    latencies, steps = [], []
    for k in range(requests):
        text, offset = prompts[(index * requests + k) % len(prompts)]
        began = time.perf_counter()
        result = engine.complete_text(text, offset, "python")  # no key: no caches
        latencies.append(time.perf_counter() - began)
        steps.append(result.steps)
    results.put((index, latencies, steps, time.perf_counter()))


def batches(metrics: str) -> tuple[int, int]:
    """(requests answered, executions) of dlm_complete from Triton's metrics text."""
    def counter(name: str) -> int:
        found = re.search(rf'{name}\{{model="dlm_complete",version="1"\}} (\d+)', metrics)
        return int(found.group(1)) if found else 0

    return counter("nv_inference_request_success"), counter("nv_inference_exec_count")


def run(mode: str, editors: int, args: argparse.Namespace, prompts: list,
        triton: LocalTriton | None) -> dict:
    """All editors at once; the figures of one row of the table."""
    ctx = mp.get_context("spawn")
    start, results = ctx.Barrier(editors + 1), ctx.Queue()
    url = triton.grpc_url if triton else None
    workers = [ctx.Process(target=editor, args=(i, mode, url, args.model, prompts,
                                                 args.requests, start, results))
               for i in range(editors)]
    for worker in workers:
        worker.start()
    before = batches(triton.metrics()) if triton else (0, 0)
    start.wait(timeout=600)
    began = time.perf_counter()
    rows = [results.get(timeout=1200) for _ in workers]
    wall = max(row[3] for row in rows) - began
    for worker in workers:
        worker.join()
    after = batches(triton.metrics()) if triton else (0, 0)
    latencies = [x * 1000 for row in rows for x in row[1]]
    served, executions = after[0] - before[0], after[1] - before[1]
    return {
        "mode": mode, "editors": editors, "completions": len(latencies),
        "per_s": len(latencies) / wall, "p50": percentile(latencies, 50),
        "p95": percentile(latencies, 95),
        "steps": sum(s for row in rows for s in row[2]) / max(1, len(latencies)),
        "batch": served / executions if executions else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--editors", default="1,4,16", help="comma-separated editor counts")
    parser.add_argument("--requests", type=int, default=8, help="completions per editor")
    parser.add_argument("--model", default=None, help="model directory (default: shipped)")
    parser.add_argument("--modes", default="triton,local")
    parser.add_argument("--instances", type=int, default=1, help="Triton model instances")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--max-queue-delay-us", type=int, default=2000)
    parser.add_argument("--root", default=sysconfig.get_paths()["stdlib"],
                        help="Python files to sample cursor positions from")
    args = parser.parse_args()
    samples = sample_positions(Path(args.root), 16, seed=0)
    prompts = [(text, len(text)) for _, text, _ in samples]
    counts = [int(n) for n in args.editors.split(",")]
    modes = args.modes.split(",")
    from dlm_lsp.modelcard import default_model_dir

    rows = []
    with tempfile.TemporaryDirectory(prefix="dlm-load-") as tmp:
        triton = None
        if "triton" in modes:
            repo = write_repository(args.model or default_model_dir(), Path(tmp) / "repo",
                                    RepoSettings(kind="cpu", instances=args.instances,
                                                 max_batch_size=args.max_batch_size,
                                                 max_queue_delay_us=args.max_queue_delay_us))
            triton = LocalTriton(repo, tmp).start()
        try:
            for editors in counts:
                for mode in modes:
                    row = run(mode, editors, args, prompts, triton if mode == "triton" else None)
                    rows.append(row)
                    print(f"{mode} x{editors}: {row['per_s']:.2f}/s p50 {row['p50']:.0f} ms "
                          f"p95 {row['p95']:.0f} ms batch {row['batch']}", file=sys.stderr)
        finally:
            if triton is not None:
                triton.stop()
    print(format_table(
        ["editors", "backend", "completions", "completions/s", "p50 ms", "p95 ms",
         "steps/completion", "requests/execution"],
        [(r["editors"], r["mode"], r["completions"], r["per_s"], r["p50"], r["p95"], r["steps"],
          r["batch"] if r["batch"] is not None else "-") for r in rows]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
