"""The GPU recipe: train the shipped model on the lent H200 in one lease, one command per step.

    scripts/gpu_train.sh wheels      here, before the lease       ~1 min, no device time
    scripts/gpu_train.sh prepare     there (carry .whl)           ~2.5 min (+ 1-2 machine start)
    scripts/gpu_train.sh train       there: starts the trainer    9.3 min (polls to its deadline)
    scripts/gpu_train.sh poll        there: until training ends   ≤ 9.3 min (~7 in the plan)
    scripts/gpu_train.sh finish      there: export, verify, eval  ~4 min, results in $OUT
    scripts/gpu_train.sh unpack DIR  here: checks and reassembles what came back, runs doctor

(`wheels` and `unpack` live in gpu_here.py; `data-rate` and `rehearse` in gpu_checks.py; the
plans and the paths under WORK that they all read, in gpu_plan.py.)

The lease is 30 minutes of device time in all (start-up and the gaps between calls included),
at most 10 minutes a command, and the machine keeps its files only ~30 s after a command: call
the next step at once. Training runs under `setsid`, so it outlives the command that started it;
`train` and `poll` print its log (`real_tokens_per_s`, `loss_tokens_per_s`, `data_wait_share`,
`content_ce`) until their own deadline. Each of them also returns a *rescue* parcel: the latest
checkpoint's weights (float16) with the tokenizer and corpus statistics, enough to export a
model directory here should the machine be lost before `finish`.

Everything is kept under WORK (default runs/gpu, gitignored, kept between warm calls); what a
command returns goes to $OUT as parcels (`parcel.py`: parts ≤ 15 MiB with SHA-256 checksums).
`rehearse` runs the same commands on this CPU with a tiny plan and a one-minute time box, under
an import guard that refuses every package the GPU machine lacks (`gpu_guard.py`).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from . import parcel
from .gpu_plan import PLANS, REPO, parse_sets, paths, plan_flags

# The device command's start: deadlines count from here. Steps chained in one command
# (`export GPU_CALL_STARTED=$(date +%s); ... prepare && ... train`) share the first one's.
STARTED = float(os.environ.get("GPU_CALL_STARTED") or time.time())
HELDOUT = "benchmarks/heldout.jsonl.gz"


# -- plumbing -----------------------------------------------------------------------------------


def left_s(deadline: float) -> float:
    """Seconds until this command's deadline."""
    return deadline - (time.time() - STARTED)


def say(message: str) -> None:
    print(f"[{time.time() - STARTED:6.0f}s] {message}", flush=True)


def child_env(work: Path) -> dict[str, str]:
    """The environment of every step's Python: the carried wheels and the repo importable."""
    env = dict(os.environ)
    extra = [str(paths(work)["site"].resolve()), str(REPO)]
    env["PYTHONPATH"] = os.pathsep.join([p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                                         if p] + extra)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_logged(name: str, argv: list[str], work: Path, timeout: float, tail: int = 12) -> int:
    """Run `python ARGV` to completion (or `timeout`), output to WORK/logs/NAME.log; print its
    last lines. Returns the exit status (124 on timeout)."""
    log = paths(work)["logs"] / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    say(f"{name}: python {' '.join(argv)}")
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, *argv], stdout=out, stderr=subprocess.STDOUT,
                                   env=child_env(work), cwd=REPO, start_new_session=True)
        try:
            code = process.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait()
            code = 124
    lines = log.read_text(errors="replace").splitlines()
    for line in lines[-tail:]:
        print("    " + line[:200])
    say(f"{name}: exit {code} after {time.monotonic() - started:.0f}s (log {log})")
    return code


# -- there: prepare -----------------------------------------------------------------------------


def install_wheels(work: Path) -> int:
    wheels = sorted((REPO / ".whl").glob("*.whl"))
    if not wheels:
        say("no .whl/ here: nothing to install (name .whl in the call's carry)")
        return 0
    site = paths(work)["site"]
    return subprocess.call([sys.executable, "-m", "pip", "install", "-q", "--no-index",
                            "--no-deps", "--no-compile", "--no-cache-dir", "--upgrade",
                            "--target", str(site), *map(str, wheels)])


def machine_report(work: Path) -> dict:
    """Python, torch, CUDA device, cores, and whether the recipe's imports work."""
    probe = ("import json, os, sys, torch, tree_sitter, zstandard, onnxruntime, tokenizers\n"
             "cuda = torch.cuda.is_available()\n"
             "print(json.dumps({'python': sys.version.split()[0], 'torch': torch.__version__,"
             " 'cuda': cuda, 'gpu': torch.cuda.get_device_name(0) if cuda else None,"
             " 'cores': os.cpu_count(), 'onnxruntime': onnxruntime.__version__}))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            env=child_env(work), cwd=REPO, timeout=300)
    if result.returncode:
        return {"error": result.stderr.strip()[-600:]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def cmd_prepare(args) -> int:
    """Install the carried wheels, build the corpus from this machine's Python (held-out files
    excluded), train the tokenizer. Steps whose output exists are skipped (re-run safe)."""
    work = Path(args.work)
    p = paths(work)
    work.mkdir(parents=True, exist_ok=True)
    if args.wheels and install_wheels(work):
        return 1
    report = machine_report(work)
    say(f"machine: {json.dumps(report)}")
    if "error" in report:
        return 1
    if not report["cuda"] and not args.allow_cpu:
        say("NO CUDA DEVICE: stop here (or --allow-cpu)")
        return 1
    deadline = args.deadline
    if not (p["corpus"] / "stats.json").is_file():
        argv = ["-m", "model_export", "corpus", *map(str, args.roots), "--out",
                str(p["corpus"]), "--exclude-heldout", HELDOUT,
                "--val-permille", str(args.val_permille)]
        if args.max_project_bytes:
            argv += ["--max-project-bytes", str(args.max_project_bytes)]
        if run_logged("corpus", argv, work, left_s(deadline) - 60):
            return 1
    stats = json.loads((p["corpus"] / "stats.json").read_text())
    say(f"corpus: {stats['files']} files, {sum(stats['bytes'].values()) / 1e6:.0f} MB")
    if not p["tokenizer"].is_file():
        if run_logged("tokenizer", ["-m", "model_export", "tokenizer", "--corpus",
                                    str(p["corpus"]), "--out", str(p["tokenizer"]),
                                    "--vocab-size", str(args.vocab_size)],
                      work, left_s(deadline) - 10, tail=4):
            return 1
    (work / "prepare.json").write_text(json.dumps({"machine": report, "corpus_files":
                                                   stats["files"], "corpus_bytes":
                                                   stats["bytes"]}, indent=1) + "\n")
    say("prepared: run `train` now")
    return 0


# -- there: train, poll -------------------------------------------------------------------------


def trainer_pid(work: Path) -> int | None:
    """The background trainer's process id while it runs, else None."""
    pid_file = paths(work)["pid"]
    if not pid_file.is_file():
        return None
    pid = int(pid_file.read_text())
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    try:  # a finished child of this process lingers as a zombie until reaped
        if os.waitpid(pid, os.WNOHANG) != (0, 0):
            return None
    except ChildProcessError:
        pass
    stat = Path(f"/proc/{pid}/stat")
    if stat.is_file() and stat.read_text().split(")")[-1].split()[0] == "Z":
        return None
    return pid


def start_trainer(work: Path, plan: dict, extra: list[str]) -> int:
    """Start `model_export train` in a session of its own (it outlives this command)."""
    p = paths(work)
    argv = [sys.executable, "-m", "model_export", "train", "--corpus", str(p["corpus"]),
            "--tokenizer", str(p["tokenizer"]), "--out", str(p["run"]), "--no-progress",
            *plan_flags(plan), *extra]
    p["plan"].write_text(json.dumps({"plan": plan, "extra": extra, "argv": argv[1:]}, indent=1))
    with open(p["train_out"], "a") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, env=child_env(work), cwd=REPO,
                                   start_new_session=True)
    p["pid"].write_text(str(process.pid))
    say(f"trainer started (pid {process.pid}): python {' '.join(argv[1:])}")
    return process.pid


def gpu_line() -> str:
    """Utilisation and memory of the GPU, from nvidia-smi ('' without one)."""
    if not shutil.which("nvidia-smi"):
        return ""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return f" gpu {out}" if out else ""


class LogWatch:
    """Reads new rows of the trainer's log.jsonl and prints a compact line now and then."""

    def __init__(self, log: Path, every_s: float):
        self.log, self.every_s = log, every_s
        self.offset, self.window, self.last_print = 0, [], 0.0
        self.first = True  # rows an earlier command printed: only the latest evaluation

    def read(self) -> None:
        if not self.log.is_file():
            return
        with open(self.log) as f:
            f.seek(self.offset)
            data = f.read()
        complete = data[: data.rfind("\n") + 1]
        self.offset += len(complete.encode())
        evals = []
        for line in complete.splitlines():
            row = json.loads(line)
            if row.get("kind") == "eval":
                evals.append(row)
            elif row.get("kind") == "train":
                self.window.append(row)
        if self.first and self.window:
            self.window = self.window[-5:]
            evals = evals[-1:]
        self.first = False
        for row in evals:
            print("  eval " + json.dumps({k: v for k, v in row.items() if k != "kind"}),
                  flush=True)

    def report(self, force: bool = False) -> None:
        now = time.monotonic()
        if not self.window or (not force and now - self.last_print < self.every_s):
            return
        rows, last = self.window, self.window[-1]

        def mean(key):
            return sum(r.get(key, 0) for r in rows) / len(rows)

        say(f"step {last['step']} loss_ema {last['loss_ema']} lr {last['lr']:.2e} "
            f"real_tokens_per_s {mean('real_tokens_per_s'):,.0f} "
            f"loss_tokens_per_s {mean('loss_tokens_per_s'):,.0f} "
            f"data_wait_share {mean('data_wait_share'):.3f} pad_share {mean('pad_share'):.3f} "
            f"tokens_seen {last['tokens_seen']:.3g} train_s {last['seconds']}{gpu_line()}")
        self.window, self.last_print = [], now


def watch(work: Path, deadline: float, every_s: float) -> str:
    """Poll the trainer until it exits or the deadline nears: 'done', 'failed' or 'running'."""
    p = paths(work)
    logwatch = LogWatch(p["run"] / "log.jsonl", every_s)
    banner = False
    while True:
        logwatch.read()
        if not banner and logwatch.window and p["train_out"].is_file():
            # the trainer's own first lines: model size, files, device, precision, workers
            lines = p["train_out"].read_text(errors="replace").splitlines()
            for line in [x for x in lines if x.startswith(("model ", "resumed "))][-1:]:
                say("trainer: " + line[:300])
            banner = True
        logwatch.report()
        if trainer_pid(work) is None:
            logwatch.read()
            logwatch.report(force=True)
            if (p["run"] / "summary.json").is_file():
                summary = json.loads((p["run"] / "summary.json").read_text())
                say("training done: " + json.dumps({k: v for k, v in summary.items()
                                                    if k != "corpus"}))
                return "done"
            tail = p["train_out"].read_text(errors="replace").splitlines()[-25:]
            say("TRAINER EXITED WITHOUT summary.json; the end of train.out:\n  "
                + "\n  ".join(tail))
            return "failed"
        if left_s(deadline) < 15:
            logwatch.report(force=True)
            say("deadline near: training goes on; run `poll` next")
            return "running"
        time.sleep(min(10.0, max(1.0, left_s(deadline) - 14)))


def rescue(work: Path, out: Path | None) -> None:
    """Pack the latest checkpoint's weights (float16, no optimizer), the tokenizer and the
    corpus statistics as parcel `rescue` and deliver it: enough to export here."""
    import torch

    p = paths(work)
    checkpoint = p["run"] / "last.pt"
    if out is None or not checkpoint.is_file():
        return
    state = None
    for _ in range(5):  # the trainer may be writing it: wait until it stands still
        before = checkpoint.stat().st_mtime
        time.sleep(1.0)
        if checkpoint.stat().st_mtime != before:
            continue
        try:
            state = torch.load(checkpoint, map_location="cpu", weights_only=False)
            break
        except Exception as exc:  # a half-written file
            say(f"rescue: {checkpoint} not readable yet ({type(exc).__name__})")
    if state is None:
        say("rescue: skipped")
        return
    state.pop("optimizer", None)
    state["model"] = {k: v.half() if v.is_floating_point() else v
                      for k, v in state["model"].items()}
    state["rescued"] = "float16 weights, no optimizer"
    p["rescue"].mkdir(parents=True, exist_ok=True)
    torch.save(state, p["rescue"] / "last.pt")
    val = p["corpus"] / "val.jsonl.zst"
    members = {"last.pt": p["rescue"] / "last.pt", "log.jsonl": p["run"] / "log.jsonl",
               "summary.json": p["run"] / "summary.json", "loss.png": p["run"] / "loss.png",
               "tokenizer.json": p["tokenizer"],
               "tokenizer.stats.json": p["tokenizer"].with_suffix(".stats.json"),
               "corpus/stats.json": p["corpus"] / "stats.json", "train_plan.json": p["plan"]}
    if val.is_file() and val.stat().st_size < 8 * 2**20:
        members["corpus/val.jsonl.zst"] = val
    manifest = parcel.pack("rescue", members, p["outbox"])
    say(f"rescue: step {state['step']}, {manifest['bytes'] / 2**20:.1f} MiB")
    deliver(work, out)


def deliver(work: Path, out: Path | None) -> None:
    if out is None:
        return
    sent, left = parcel.deliver(paths(work)["outbox"], out)
    say(f"to $OUT: {', '.join(sent) or 'nothing'}"
        + (f"; left for `fetch`: {', '.join(left)}" if left else ""))


def out_dir(args) -> Path | None:
    value = args.out or os.environ.get("OUT")
    return Path(value) if value else None


def cmd_train(args) -> int:
    """Start the trainer in the background (unless it runs or ran already), then poll."""
    work = Path(args.work)
    p = paths(work)
    if not p["tokenizer"].is_file():
        say("no tokenizer: run `prepare` first")
        return 1
    plan = parse_sets(PLANS[args.plan], args.set)
    if trainer_pid(work) is not None:
        say("the trainer runs already: polling it")
    elif (p["run"] / "summary.json").is_file():
        say("training finished already: run `finish`")
        return 0
    else:
        start_trainer(work, plan, args.extra)
    begun = time.time()
    state = watch(work, args.deadline - args.rescue_s, args.every)
    if (state == "failed" and plan.get("compile") and args.eager_fallback
            and time.time() - begun < 300):
        # torch.compile is the likeliest early failure on a new machine: go on without it,
        # once, in the minutes left (the failed run's files are kept aside)
        failed = work / "run.failed-compile"
        shutil.rmtree(failed, ignore_errors=True)
        if p["run"].exists():
            p["run"].rename(failed)
        used = (time.time() - begun) / 60
        plan = {**plan, "compile": False,
                "max_minutes": round(max(1.0, plan["max_minutes"] - used), 1)}
        say(f"RESTARTING WITHOUT --compile for {plan['max_minutes']} minutes")
        start_trainer(work, plan, args.extra)
        state = watch(work, args.deadline - args.rescue_s, args.every)
    if args.rescue:
        safe_rescue(work, out_dir(args))
    return 1 if state == "failed" else 0


def cmd_poll(args) -> int:
    """Keep polling the trainer until it ends (or this command's deadline nears)."""
    work = Path(args.work)
    state = watch(work, args.deadline - args.rescue_s, args.every)
    if args.rescue:
        safe_rescue(work, out_dir(args))
    return 1 if state == "failed" else 0


def safe_rescue(work: Path, out: Path | None) -> None:
    """The rescue parcel, best effort: a failure here must not hide the poll's outcome."""
    try:
        rescue(work, out)
    except Exception as exc:
        say(f"rescue failed: {type(exc).__name__}: {exc}")


# -- there: finish ------------------------------------------------------------------------------


def cmd_finish(args) -> int:
    """Export the model directory (parity checked), verify it, run the held-out eval, and pack
    the model directory with the run's log, loss.png, summary and eval results into $OUT."""
    work = Path(args.work)
    p = paths(work)
    out = out_dir(args)
    if out is None:
        say("no $OUT and no --out: nowhere to put the results")
        return 1
    if trainer_pid(work) is not None:
        say("the trainer still runs: waiting for it")
        if watch(work, args.deadline - 240, args.every) != "done":
            return 1
    checkpoint = p["run"] / "last.pt"
    if not checkpoint.is_file():
        say(f"no {checkpoint}: nothing to export")
        return 1
    plan = json.loads(p["plan"].read_text())["plan"] if p["plan"].is_file() else {}
    reserve = 45  # seconds kept for packing and delivering
    export = ["-m", "model_export", "export", "--checkpoint", str(checkpoint),
              "--tokenizer", str(p["tokenizer"]), "--corpus", str(p["corpus"]),
              "--out", str(p["export"]), "--version", args.version, "--note", args.note,
              *args.export_args]
    if "max_context" in plan and "--max-context" not in args.export_args:
        export += ["--max-context", str(plan["max_context"])]
    exported = run_logged("export", export, work, left_s(args.deadline) - reserve - 60,
                          tail=8) == 0
    if exported and left_s(args.deadline) > reserve + 30:
        run_logged("verify", ["-m", "model_export", "verify", str(p["export"]),
                              "--checkpoint", str(checkpoint)],
                   work, min(120, left_s(args.deadline) - reserve - 20), tail=20)
    if exported and left_s(args.deadline) > reserve + 30:
        evaluate = ["-m", "dlm_lsp", "eval", HELDOUT, "--model", str(p["export"]), "--json",
                    "--no-tests", "--no-progress", "--out", str(work / "eval_tasks.jsonl"),
                    *args.eval_args]
        code = run_logged("eval", evaluate, work, left_s(args.deadline) - reserve, tail=3)
        if code == 0:
            shutil.copy(p["logs"] / "eval.log", work / "eval.json")
    members = {f"model/{f.name}": f for f in sorted(p["export"].glob("*")) if f.is_file()}
    run = {name: p["run"] / name for name in ("log.jsonl", "loss.png", "summary.json")}
    run |= {"eval.json": work / "eval.json", "eval_tasks.jsonl": work / "eval_tasks.jsonl",
            "train_plan.json": p["plan"], "prepare.json": work / "prepare.json",
            "train.out": p["train_out"]}
    run |= {f"{name}.log": p["logs"] / f"{name}.log" for name in ("export", "verify", "eval",
                                                                  "corpus", "tokenizer")}
    members |= {f"run/{name}": path for name, path in run.items()}
    manifest = parcel.pack("result", members, p["outbox"])
    say(f"result: {len(manifest['members'])} files, {manifest['bytes'] / 2**20:.1f} MiB "
        f"(missing: {', '.join(manifest['missing']) or 'none'})")
    deliver(work, out)
    if (work / "eval.json").is_file():
        say("held-out eval: " + (work / "eval.json").read_text()[-1500:])
    return 0 if exported else 1


def cmd_fetch(args) -> int:
    """Deliver parcel parts that did not fit the last command's limits."""
    work = Path(args.work)
    deliver(work, out_dir(args))
    return 0


# -- command line -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from . import gpu_checks
    from .gpu_here import cmd_unpack, cmd_wheels

    parser = argparse.ArgumentParser(
        prog="scripts/gpu_train.sh",
        description=__doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="step", required=True, metavar="STEP")

    def step(name, func, help_text, deadline=True):
        p = sub.add_parser(name, help=help_text, description=func.__doc__)
        p.add_argument("--work", default="runs/gpu", help="state between commands (gitignored)")
        if deadline:
            p.add_argument("--deadline", type=float, default=560,
                           help="seconds after the command's start to be done by (the device "
                           "stops a command at 600)")
            p.add_argument("--out", default=None, help="where results go (default: $OUT)")
            p.add_argument("--every", type=float, default=60, help="seconds between log lines")
        p.set_defaults(func=func)
        return p

    p = step("wheels", cmd_wheels, "here: download the wheels the GPU machine lacks (~1 min)",
             deadline=False)
    p = step("prepare", cmd_prepare, "there: install wheels, corpus, tokenizer (~2.5 min)")
    p.add_argument("roots", nargs="*", type=lambda r: str(Path(r).resolve()),
                   help="corpus roots (default: stdlib + site-packages)")
    p.add_argument("--max-project-bytes", type=int, default=40_000_000)
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--val-permille", type=int, default=20, help="validation share of files")
    p.add_argument("--allow-cpu", action="store_true", help="go on without a CUDA device")
    p.add_argument("--wheels", action=argparse.BooleanOptionalAction, default=True,
                   help="install the wheels carried in .whl/ (the rehearsal skips them)")
    for name, func, text in (("train", cmd_train, "there: start training, poll (9.3 min)"),
                             ("poll", cmd_poll, "there: poll until training ends (≤ 9.3 min)")):
        p = step(name, func, text)
        p.add_argument("--rescue", action=argparse.BooleanOptionalAction, default=True,
                       help="return the latest weights (float16) at the end")
        p.add_argument("--rescue-s", type=float, default=25,
                       help="seconds kept before the deadline for the rescue parcel")
        if name == "train":
            p.add_argument("--plan", choices=sorted(PLANS), default="gpu")
            p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                           help="change one training flag of the plan, e.g. max_minutes=16")
            p.add_argument("--eager-fallback", action=argparse.BooleanOptionalAction,
                           default=True, help="restart once without --compile if it fails")
            p.add_argument("extra", nargs="*", help="more `model_export train` flags, after --")
    p = step("finish", cmd_finish, "there: export, verify, held-out eval, pack (~4 min)")
    p.add_argument("--version", default="0.2.0-h200")
    p.add_argument("--note", default="trained on one H200 by scripts/gpu_train.sh")
    p.add_argument("--export-args", type=shlex.split, default=["--em-examples", "32"],
                   help="more `model_export export` flags, one string")
    p.add_argument("--eval-args", type=shlex.split, default=["--strategy", "parallel"],
                   help="`dlm-lsp eval` flags, one string")
    step("fetch", cmd_fetch, "there: deliver parcel parts left over by the last command")
    p = step("unpack", cmd_unpack, "here: check and reassemble what came back, run doctor",
             deadline=False)
    p.add_argument("folders", nargs="+", help="folders the files came back to")
    p.add_argument("--out", default="runs/gpu_back", help="where to unpack")
    p.add_argument("--export-rescue", action="store_true",
                   help="with only a rescue parcel: export a model directory from it")
    p.add_argument("--no-doctor", action="store_true")
    gpu_checks.add_parsers(sub, step)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("work", "out"):  # the steps run from the repository root
        if getattr(args, name, None):
            setattr(args, name, str(Path(getattr(args, name)).resolve()))
    if getattr(args, "folders", None):
        args.folders = [str(Path(f).resolve()) for f in args.folders]
    os.chdir(REPO)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
