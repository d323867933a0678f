"""Checks of the GPU recipe that need no GPU: the data rate of one worker, and the rehearsal.

    scripts/gpu_train.sh data-rate --corpus runs/corpus2 --tokenizer runs/tokenizer2.json
    scripts/gpu_train.sh rehearse                    # the whole recipe on this CPU, ~4 min

`data-rate` times `stream.BatchStream` making the plan's batches in this one process (what
one DataLoader worker does) and sets it against the H200's step for the plan's model,
estimated from FLOPs. `rehearse` runs `prepare`, `train`, `poll`, `finish` as the device would
(each a `scripts/gpu_train.sh` process, its $OUT a local folder checked against the device's
limits), under the import guard of `gpu_guard.py`, then `unpack` and one completion.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from .gpu_plan import PLANS, REPO, parse_sets
from .gpu_here import WHEELS

H200_BF16_FLOPS = 790e12  # bf16 matrix product measured on the lent H200 (KINDS.md)


# -- data rate ----------------------------------------------------------------------------------


def model_params(plan: dict, vocab: int) -> tuple[int, int]:
    """(all parameters, parameters of one transformer block) of the plan's model."""
    import torch

    from .model import Denoiser, DenoiserConfig

    cfg = DenoiserConfig(vocab_size=vocab, n_layers=plan["n_layers"], n_heads=plan["n_heads"],
                         head_dim=plan["head_dim"], mlp_hidden=plan["mlp_hidden"])
    with torch.device("meta"):
        model = Denoiser(cfg)
    return model.num_params(), sum(p.numel() for p in model.blocks[0].parameters())


def step_flops(kind: str, batch, plan: dict, vocab: int, block_params: int) -> float:
    """Training FLOPs of one step on `batch` (3x the forward pass): the blocks' matrix products
    on every computed position (padding too), attention over the whole padded square (the
    masked fused kernel skips nothing), and the output head on the rows under loss (about half
    of the canvas: t ~ U(0, 1))."""
    d, layers = plan["n_heads"] * plan["head_dim"], plan["n_layers"]
    if kind == "blocks":
        rows, length = batch.ids.shape[0], 2 * batch.ids.shape[1]
        loss_rows = 0.5 * int(batch.real.sum())
    else:
        rows = batch.context_ids.shape[0]
        length = batch.context_ids.shape[1] + batch.canvas_ids.shape[1]
        loss_rows = 0.5 * int(batch.canvas_mask.sum())
    positions = rows * length
    forward = (2 * block_params * layers * positions + 4 * layers * rows * length**2 * d
               + 2 * d * vocab * loss_rows)
    return 3.0 * forward


def cmd_data_rate(args) -> int:
    """CPU seconds one data worker spends on each kind of batch of the plan (`BatchStream`'s
    own code: infill pools made, grouped by length and collated; block batches), the batches
    per CPU-second of the plan's mix, and the arithmetic against the H200's step for the
    plan's model (FLOPs of the measured batches at a share of the bf16 rate)."""
    import random

    import torch

    from .data import ExampleMaker
    from .stream import BatchStream, StreamPlan
    from .tokenizer import load_tokenizer, special_tokens
    from .train import example_settings, load_texts

    torch.set_num_threads(1)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    plan = parse_sets(PLANS[args.plan], args.set)
    tokenizer = load_tokenizer(args.tokenizer)
    vocab, specials = tokenizer.get_vocab_size(), special_tokens(tokenizer)
    texts, languages = load_texts(Path(args.corpus) / "train.jsonl.zst", args.max_files)
    settings = example_settings(argparse.Namespace(
        buckets=plan.get("buckets", "16,32,64,128"), max_context=plan["max_context"],
        prefix_tokens=0, suffix_tokens=plan["suffix_tokens"],
        long_context_rate=plan["long_context_rate"]))
    stream_plan = StreamPlan(batch_size=plan["batch_size"], block_rate=plan["block_rate"],
                             block_batch_size=plan["block_batch_size"],
                             block_tokens=plan["block_tokens"],
                             block_sizes=tuple(int(b) for b in str(plan["block_sizes"]).split(",")))
    stream = BatchStream(texts, languages, args.tokenizer, specials, settings, stream_plan,
                         seed=args.seed)
    stream._left_over = []
    maker = ExampleMaker(texts, languages, tokenizer, specials, settings)
    rng = random.Random(args.seed)
    params, block_params = model_params(plan, vocab)
    measured = {}
    for kind in ("infill", "blocks"):
        batches, examples, real, flops = 0, 0, 0, 0.0
        cpu = time.process_time()
        while time.process_time() - cpu < args.seconds / 2 or not batches:
            if kind == "infill":
                made = stream.infill_batches(maker, rng)  # one pool: made, grouped, collated
                examples += stream_plan.batch_size * stream_plan.pool_batches
            else:
                made = [stream.block_batch(maker, rng)]
                examples += stream_plan.block_batch_size
            for batch in made:
                batches, real = batches + 1, real + batch.tokens
                flops += step_flops(kind, batch, plan, vocab, block_params)
        cpu = time.process_time() - cpu
        rows = (stream_plan.block_batch_size if kind == "blocks"
                else examples / batches)  # an infill batch's mean rows (pad cap, left-overs)
        measured[kind] = {"examples_per_cpu_s": round(examples / cpu, 1),
                          "cpu_s_per_batch": round(cpu / examples * rows, 4),
                          "rows_per_batch": round(rows, 1),
                          "real_tokens_per_batch": round(real / batches),
                          "train_gflop_per_step": round(flops / batches / 1e9, 1)}
    r = plan["block_rate"]

    def mix(key):
        return (1 - r) * measured["infill"][key] + r * measured["blocks"][key]

    cpu_per_step, flops = mix("cpu_s_per_batch"), mix("train_gflop_per_step") * 1e9
    row = {"plan": args.plan, "params": params, "files": len(texts), "block_rate": r,
           **{k: v for k, v in measured.items()},
           "mix_batches_per_cpu_s": round(1 / cpu_per_step, 2),
           "mix_real_tokens_per_cpu_s": round(mix("real_tokens_per_batch") / cpu_per_step),
           "mix_train_gflop_per_step": round(flops / 1e9, 1)}
    for mfu in args.mfu:
        step_s = flops / (mfu * H200_BF16_FLOPS)
        feed = args.workers / cpu_per_step
        row[f"h200_at_{mfu:.0%}"] = {
            "step_ms": float(f"{1000 * step_s:.3g}"), "steps_per_s": round(1 / step_s, 1),
            "real_tokens_per_s": round(mix("real_tokens_per_batch") / step_s),
            f"{args.workers}_workers_batches_per_s": round(feed, 1),
            "workers_outrun_step": feed * step_s > 1.0,
            "workers_needed": float(f"{cpu_per_step / step_s:.3g}")}
    print(json.dumps(row, indent=1))
    return 0


# -- rehearsal ----------------------------------------------------------------------------------

NAME_OK = re.compile(r"^[A-Za-z0-9._-]+$")


def check_out(folder: Path) -> list[str]:
    """What a device command's $OUT would not bring back (README of the device tool)."""
    problems, files, size = [], 0, 0
    for path in folder.rglob("*"):
        relative = path.relative_to(folder)
        if not all(NAME_OK.match(part) for part in relative.parts):
            problems.append(f"{relative}: a name the device refuses")
        if path.is_file():
            files, size = files + 1, size + path.stat().st_size
            if len(relative.parts) > 3:
                problems.append(f"{relative}: more than 2 folders down")
            if path.stat().st_size > 16 * 2**20:
                problems.append(f"{relative}: over 16 MiB")
    if files > 8:
        problems.append(f"{files} files (at most 8)")
    if size > 64 * 2**20:
        problems.append(f"{size / 2**20:.1f} MiB (at most 64)")
    return problems


def rehearsal_corpus(target: Path, packages: tuple[str, ...]) -> Path:
    """A small corpus source: some of this Python's standard library packages."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for package in packages:
        for path in sorted((stdlib / package).glob("*.py")):
            destination = target / package / path.name
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, destination)
    return target


SAMPLE = "def mean(values):\n    total = 0\n    for value in values:\n        \n"


def cmd_rehearse(args) -> int:
    """The recipe end to end on this CPU with the tiny plan and a one-minute time box: wheels
    skipped, corpus from a few standard-library packages, each step's $OUT a local folder;
    then unpack, doctor and one completion. Prints each step's minutes."""
    from .gpu_guard import write_sitecustomize

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    source = rehearsal_corpus(work / "src", tuple(args.packages.split(",")))
    guard = work / "guard"
    write_sitecustomize(guard, [w.split("==")[0] for w in WHEELS])
    env = {**os.environ, "PYTHONPATH": str(guard), "PYTHONUNBUFFERED": "1"}
    env.pop("GPU_CALL_STARTED", None)  # each step a command of its own
    script = str(REPO / "scripts" / "gpu_train.sh")
    state = ["--work", str(work / "gpu")]
    steps = [
        ("prepare", ["--allow-cpu", "--no-wheels", "--vocab-size", "1024", "--val-permille", "100",
                     str(source)]),
        ("train", ["--plan", "rehearsal", "--deadline", str(args.train_deadline),
                   "--rescue-s", "8", "--every", "10"]),
        ("poll", ["--deadline", "300", "--every", "10"]),
        ("finish", ["--deadline", "420", "--export-args=--repeats 3 --em-examples 8",
                    f"--eval-args=--strategy parallel --limit {args.eval_limit}"]),
    ]
    timings, failed = {}, []
    for name, extra in steps:
        out = work / "OUT" / name
        out.mkdir(parents=True)
        started = time.monotonic()
        print(f"== {name}", flush=True)
        code = subprocess.call(["bash", script, name, *state, "--out", str(out), *extra],
                               env=env, cwd=REPO)
        timings[name] = round((time.monotonic() - started) / 60, 2)
        problems = check_out(out)
        if code or problems:
            failed.append(f"{name}: exit {code} {problems}")
            break
    if not failed:
        print("== unpack", flush=True)
        started = time.monotonic()
        code = subprocess.call(["bash", script, "unpack", *map(str, sorted((work / "OUT").glob(
            "*"))), "--out", str(work / "back")], cwd=REPO)
        timings["unpack"] = round((time.monotonic() - started) / 60, 2)
        if code:
            failed.append(f"unpack: exit {code}")
    completion, parity = None, None
    if not failed:  # parity here, against the weights the poll step rescued
        model = work / "back" / "result" / "model"
        result = subprocess.run([sys.executable, "-m", "model_export", "verify", str(model),
                                 "--checkpoint", str(work / "back" / "rescue" / "last.pt")],
                                capture_output=True, text=True, cwd=REPO, timeout=300)
        if result.returncode:
            failed.append(f"verify: {result.stderr[-800:]}")
        else:
            try:
                report = json.loads(result.stdout[result.stdout.index("{"):])
                parity = report.get("parity_cpu_stored_weights", report.get("parity_cpu"))
            except ValueError:
                parity = result.stdout[-300:]
    if not failed:
        sample = work / "sample.py"
        sample.write_text(SAMPLE)
        result = subprocess.run([sys.executable, "-m", "dlm_lsp", "complete", str(sample),
                                 "--line", "4", "--col", "9", "--json", "--model",
                                 str(work / "back" / "result" / "model")],
                                capture_output=True, text=True, cwd=REPO, timeout=300)
        if result.returncode:
            failed.append(f"complete: {result.stderr[-800:]}")
        else:
            completion = json.loads(result.stdout.strip().splitlines()[-1])
    report = {"ok": not failed, "failed": failed, "minutes": timings,
              "total_minutes": round(sum(timings.values()), 2), "completion": completion,
              "parity_here_vs_rescued_checkpoint": parity,
              "model": str(work / "back" / "result" / "model")}
    (work / "rehearsal.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    return 0 if not failed else 1


def add_parsers(sub, step) -> None:
    """The `data-rate` and `rehearse` steps of scripts/gpu_train.sh."""
    p = step("data-rate", cmd_data_rate, "anywhere: batches/s of one data worker vs the H200 "
             "step", deadline=False)
    p.add_argument("--corpus", default="runs/gpu/corpus")
    p.add_argument("--tokenizer", default="runs/gpu/tokenizer.json")
    p.add_argument("--max-files", type=int, default=3000)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--plan", choices=sorted(PLANS), default="gpu")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--workers", type=int, default=15)
    p.add_argument("--mfu", type=float, nargs="+", default=[0.2, 0.35],
                   help="shares of the H200's bf16 rate the step reaches")
    p.add_argument("--seed", type=int, default=0)
    p = step("rehearse", cmd_rehearse, "here: the whole recipe on this CPU, tiny (~4 min)",
             deadline=False)
    p.set_defaults(work="runs/gpu_rehearsal")
    p.add_argument("--packages", default="json,email,logging,importlib,asyncio,http,urllib",
                   help="standard-library packages the rehearsal corpus is made of")
    p.add_argument("--train-deadline", type=float, default=45,
                   help="the train command's deadline: training goes on into poll")
    p.add_argument("--eval-limit", type=int, default=20)
