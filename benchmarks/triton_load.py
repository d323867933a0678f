"""Load: N simulated editors against one Triton server, beside N editors each with a local model.

Each editor is its own process with its own engine, as each user runs their own dlm-lsp: it
plans, tokenizes and postprocesses locally and asks for `--requests` block and line completions
one after another (a closed loop: one request in flight per editor, bounded). In "triton" mode
its engine sends each layout to one tritonserver (pytriton's bundled binary, loopback, the
repository `dlm-lsp triton-repo` writes, dynamic batching); in "local" mode it runs the model
itself, all editors sharing this machine's cores. Reports completions/s over the wall time from
a common start, p50/p95 latency per completion, and the batches Triton formed (its metrics
endpoint: requests answered / model executions).

    python benchmarks/triton_load.py [--editors 1,4,16] [--requests 8]
                                     [--model DIR | --random-format2]

"triton-unbatched" is the same server with `max_batch_size: 1`: what dynamic batching bought.
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
from dlm_lsp.measure.stats import format_table, percentile
from dlm_lsp.remote.triton_repo import RepoSettings, write_repository


def random_format2_model(directory: Path) -> Path:
    """A format-2 (causal, padded-canvas batches) model of the shipped model's size and
    tokenizer with random weights: the cost of a trained one, for load only (its completions
    are noise; every request takes the card's max_steps)."""
    import json
    import shutil

    import numpy as np
    import torch

    from dlm_lsp.modelcard import GraphFiles, ModelCard, default_model_dir, load_card
    from model_export.export import WEIGHTS_FILE, export_graphs, share_weights
    from model_export.model import Denoiser, DenoiserConfig

    shipped = load_card(default_model_dir())
    directory.mkdir(parents=True)
    shutil.copy2(shipped.path(shipped.tokenizer), directory / "tokenizer.json")
    torch.manual_seed(0)
    cfg = DenoiserConfig(vocab_size=shipped.vocab_size, n_layers=shipped.n_layers,
                         n_heads=shipped.n_heads, head_dim=shipped.head_dim,
                         max_position=shipped.max_position, context_attention="causal")
    encoder, decoder = export_graphs(Denoiser(cfg).eval(), shipped.special_tokens, directory)
    share_weights([encoder, decoder], directory / WEIGHTS_FILE, np.float16)
    card = ModelCard(
        name="random-format2", version="0", vocab_size=cfg.vocab_size, n_layers=cfg.n_layers,
        n_heads=cfg.n_heads, head_dim=cfg.head_dim, special_tokens=shipped.special_tokens,
        canvas_buckets=shipped.canvas_buckets, max_context=shipped.max_context,
        max_position=shipped.max_position, sampler=shipped.sampler,
        graphs={"cpu": GraphFiles(encoder=encoder.name, decoder=decoder.name)},
        context_attention="causal", weights=WEIGHTS_FILE)
    (directory / "model.json").write_text(json.dumps(card.to_json(), indent=2) + "\n")
    return directory


def editor(index: int, mode: str, url: str | None, model: str | None, prompts: list,
           requests: int, start: mp.Barrier, results: mp.Queue) -> None:
    """One editor: load its engine, wait for the others, then complete `requests` times."""
    from dlm_lsp.engine import Engine
    from dlm_lsp.remote.failover import remote_engine
    from dlm_lsp.settings import Settings

    settings = Settings(model_dir=model, remote=url)
    engine = remote_engine(settings) if url else Engine(settings=settings)
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
    parser.add_argument("--modes", default="triton,triton-unbatched,local",
                        help="triton: dynamic batching; triton-unbatched: the same server "
                        "with max_batch_size 1; local: a model per editor")
    parser.add_argument("--instances", type=int, default=1, help="Triton model instances")
    parser.add_argument("--max-batch-size", type=int, default=16)
    parser.add_argument("--max-queue-delay-us", type=int, default=2000)
    parser.add_argument("--random-format2", action="store_true",
                        help="load-test a random-weight format-2 model of the shipped size "
                        "(padded canvases: one decoder call per step for the whole batch)")
    parser.add_argument("--root", default=sysconfig.get_paths()["stdlib"],
                        help="Python files to sample cursor positions from")
    args = parser.parse_args()
    samples = sample_positions(Path(args.root), 16, seed=0)
    prompts = [(text, len(text)) for _, text, _ in samples]
    counts = [int(n) for n in args.editors.split(",")]
    modes = args.modes.split(",")
    from dlm_lsp.modelcard import default_model_dir

    rows = []
    servers: dict[str, LocalTriton] = {}
    with tempfile.TemporaryDirectory(prefix="dlm-load-") as tmp:
        if args.random_format2:
            args.model = str(random_format2_model(Path(tmp) / "format2"))
        try:
            for mode in modes:  # every server up before any editor starts
                if mode.startswith("triton"):
                    batch = args.max_batch_size if mode == "triton" else 1
                    folder = Path(tmp) / mode
                    folder.mkdir()
                    repo = write_repository(
                        args.model or default_model_dir(), folder / "repo",
                        RepoSettings(kind="cpu", instances=args.instances, max_batch_size=batch,
                                     max_queue_delay_us=args.max_queue_delay_us))
                    servers[mode] = LocalTriton(repo, folder).start()
            for editors in counts:  # modes interleaved: the machine's load hits them alike
                for mode in modes:
                    row = run(mode, editors, args, prompts, servers.get(mode))
                    rows.append(row)
                    print(f"{mode} x{editors}: {row['per_s']:.2f}/s p50 {row['p50']:.0f} ms "
                          f"p95 {row['p95']:.0f} ms batch {row['batch']}", file=sys.stderr)
        finally:
            for server in servers.values():
                server.stop()
    print(format_table(
        ["editors", "backend", "completions", "completions/s", "p50 ms", "p95 ms",
         "steps/completion", "requests/execution"],
        [(r["editors"], r["mode"], r["completions"], r["per_s"], r["p50"], r["p95"], r["steps"],
          r["batch"] if r["batch"] is not None else "-") for r in rows]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
