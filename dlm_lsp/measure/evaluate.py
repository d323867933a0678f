"""`dlm-lsp eval FILE.jsonl[.gz]`: infilling quality against denoiser calls.

Two task formats are read, one JSON object a line (gzip when the name ends in .gz):

* HumanEval-infilling: ``task_id, entry_point, prompt, suffix, canonical_solution, test``;
  the hole sits between ``prompt`` and ``suffix`` and ``canonical_solution`` is what it hides.
* plain FIM: ``prefix, suffix, middle`` (optional ``task_id``, ``language``, ``kind``,
  ``test``, ``entry_point``), as `python -m model_export heldout` writes.

Each task is filled as the server fills a hole — `dlm/fill`'s `Engine.fill_text` on prefix +
suffix, one empty range at the cursor, or with ``--path complete`` an inline completion's
`Engine.complete_text` at the cursor — under every sampler configuration of the sweep (and the
wire settings of ``--set``; ``--ablate`` turns completion rules off), and scored:

* exact match of the middle after dropping trailing whitespace on every line and at the end;
* pass@1 (one greedy sample) when the task has a test: prefix + fill + suffix + test +
  ``check(entry_point)`` runs in `dlm_lsp.measure.sandbox` — the only place generated code runs.

A configuration is a strategy ("parallel" or "left_to_right": one commit per step, what an
autoregressive decoder would do with these weights), a step cap, a confidence threshold and a
canvas-length policy ("auto": the planner's bucket; "oracle": the bucket that holds the true
middle, which needs `Engine.fill_text(..., canvas_lengths=...)`). Per-task outcomes go to a
jsonl file; the summary is a table, ``--json``, and ``--plot`` (quality against steps).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from ..sampler import ONE_AT_A_TIME, STRATEGIES
from .sandbox import SandboxLimits, isolation_report, run_python
from .scoring import exact_match, similarity
from .stats import format_table, mean, progress, read_jsonl, summarize, write_jsonl

log = logging.getLogger(__name__)

CANVAS_POLICIES = ("auto", "oracle")


# -- tasks ------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Task:
    """One hole to fill: the text around it, what it hides, and optionally a test."""

    task_id: str
    prefix: str
    suffix: str
    middle: str
    language_id: str = "python"
    kind: str = "unknown"  # single-line, multi-line, random-span, syntax-node, humaneval...
    test: str | None = None  # defines check(candidate), HumanEval style
    entry_point: str | None = None


def task_from_record(record: dict[str, Any], number: int, source: str = "") -> Task:
    """A Task from either format; ValueError naming what is missing."""
    where = f"{source}:{number}" if source else f"record {number}"
    if "prompt" in record and "canonical_solution" in record:
        prefix, middle = record["prompt"], record["canonical_solution"]
        kind = record.get("kind", "humaneval")
    elif "prefix" in record and "middle" in record:
        prefix, middle = record["prefix"], record["middle"]
        kind = record.get("kind", "fim")
    else:
        raise ValueError(f"{where}: neither HumanEval-infilling (prompt, suffix, "
                         "canonical_solution) nor FIM (prefix, suffix, middle)")
    suffix = record.get("suffix")
    if not all(isinstance(v, str) for v in (prefix, middle, suffix)):
        raise ValueError(f"{where}: prefix/prompt, suffix and middle must be strings")
    test = record.get("test") or None
    entry_point = record.get("entry_point") or None
    return Task(
        task_id=str(record.get("task_id", f"task/{number}")),
        prefix=prefix,
        suffix=suffix,
        middle=middle,
        language_id=str(record.get("language", "python")),
        kind=str(kind),
        test=test if isinstance(test, str) else None,
        entry_point=entry_point if isinstance(entry_point, str) else None,
    )


def load_tasks(path: str | Path, limit: int | None = None) -> list[Task]:
    """The tasks of a .jsonl/.jsonl.gz file in either format, at most `limit`."""
    tasks = []
    for number, record in enumerate(read_jsonl(path), 1):
        tasks.append(task_from_record(record, number, str(path)))
        if limit is not None and len(tasks) >= limit:
            break
    return tasks


# -- scoring ----------------------------------------------------------------------------------


def generated_middle(task: Task, edit: tuple[int, int, str] | None) -> str:
    """What the fill puts between prefix and suffix.

    An edit may reach past the hole into the suffix (it replaces an auto-inserted closer); the
    replaced suffix text is then folded back so the middle compares like for like.
    """
    if edit is None:
        return ""
    start, end, text = edit
    consumed = task.suffix[: max(0, end - start)]
    if consumed and text.endswith(consumed):
        return text[: len(text) - len(consumed)]
    return text if not consumed else text + "\x00" + consumed  # cannot match: flags it


def program_for(task: Task, middle: str) -> str | None:
    """The program whose success is pass@1 (HumanEval's harness), None without a test."""
    if not task.test:
        return None
    program = task.prefix + middle + task.suffix + "\n\n" + task.test + "\n"
    if task.entry_point:
        program += f"\ncheck({task.entry_point})\n"
    return program


# -- sweep ------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Config:
    """One point of the sampler sweep; None = the model card's recommendation."""

    strategy: str = "parallel"
    max_steps: int | None = None
    threshold: float | None = None
    canvas: str = "auto"

    @property
    def label(self) -> str:
        parts = [self.strategy]
        if self.strategy == "parallel":
            parts.append("thr=card" if self.threshold is None else f"thr={self.threshold:g}")
        parts.append(f"steps={'card' if self.max_steps is None else self.max_steps}")
        parts.append(f"canvas={self.canvas}")
        return " ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def sweep(strategies: Sequence[str], steps: Sequence[int | None],
          thresholds: Sequence[float | None], canvases: Sequence[str]) -> list[Config]:
    """Every combination; left_to_right ignores the threshold, and its 'card' step cap means
    the whole canvas one token a step (a smaller cap makes the last step commit the rest)."""
    configs: list[Config] = []
    for canvas in canvases:
        for strategy in strategies:
            if strategy in ONE_AT_A_TIME:
                for cap in steps:
                    configs.append(Config(strategy=strategy, max_steps=cap, canvas=canvas))
                continue
            for cap in steps:
                for threshold in thresholds:
                    configs.append(Config(strategy=strategy, max_steps=cap,
                                          threshold=threshold, canvas=canvas))
    return list(dict.fromkeys(configs))


@dataclass
class Outcome:
    """One task under one configuration."""

    task_id: str
    kind: str
    config: Config
    middle: str
    expected: str
    exact_match: bool
    similarity: float
    steps: int
    tokens: int
    elapsed_s: float
    passed: bool | None = None  # None: the task has no test
    sandbox: str | None = None  # the sandbox outcome when a test ran
    error: str | None = None
    generated: str | None = None  # the model's text at the hole before postprocessing
    emptied_by: str | None = None  # an empty answer: the postprocess filter that emptied it

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["config"] = self.config.to_json()
        return out


PATHS = ("fill", "complete")
ABLATIONS = ("dedent", "overlap", "repeat", "statement", "rest-of-line", "token-cuts")


def ablate(rules: Sequence[str]) -> None:
    """Turn completion rules off in this process (a measurement, not a setting):
    "dedent" (a blank line's first line may not dedent), "overlap" (no cut where the
    completion reaches the suffix), "repeat" (no cut of a runaway line pattern),
    "statement" (a blank line before code at its level gets a block, not one statement),
    "rest-of-line" (a mid-line hole is not cut where it writes the rest of its line),
    "token-cuts" (a line that adds syntax errors is dropped whole, never cut inside)."""
    from .. import plan, postprocess

    if "statement" in rules:
        plan.ONE_STATEMENT_RULE = "never"
    if "rest-of-line" in rules:
        postprocess._meets_rest_of_line = lambda *args, **kwargs: None
    if "token-cuts" in rules:
        postprocess._token_cuts = lambda line: []

    gone = set()
    if "overlap" in rules:
        gone.add(postprocess.cut_at_suffix_overlap)
    if "repeat" in rules:
        gone.add(postprocess.cut_runaway_repetition)
    postprocess.FILTERS = tuple(f for f in postprocess.FILTERS if f not in gone)
    postprocess.CONTENT_FILTERS = tuple(f for f in postprocess.CONTENT_FILTERS if f not in gone)
    if "dedent" in rules:
        plan.enclosing_levels = lambda *args, **kwargs: []


class Filler:
    """Fills one hole per call through the Engine, under one sweep configuration at a time.

    `path` is which server request the fill goes through: "fill" (`dlm/fill`:
    `Engine.fill_text`, one gap at the cursor) or "complete" (inline completion:
    `Engine.complete_text` at the cursor, the plan and stop rules an editor's request gets).
    """

    def __init__(self, engine: Any, path: str = "fill") -> None:
        if path not in PATHS:
            raise ValueError(f"path {path!r}: expected one of {', '.join(PATHS)}")
        self.engine = engine
        self.settings = engine.settings
        self.path = path

    def configure(self, config: Config) -> None:
        """Take a configuration's sampler settings for the next fills (one loaded model)."""
        max_steps = config.max_steps
        if config.strategy in ONE_AT_A_TIME and max_steps is None:
            max_steps = max(self.engine.card.canvas_buckets)  # every token its own step
        self.settings = dataclasses.replace(
            self.engine.settings, strategy=config.strategy, max_steps=max_steps,
            threshold=config.threshold,
        )
        self.config = config

    def __call__(self, task: Task) -> tuple[tuple[int, int, str] | None, int, int, float]:
        """(edit, steps, tokens, seconds) for the task's hole; `last` keeps what the fill
        had before postprocessing (`why_empty`)."""
        text = task.prefix + task.suffix
        at = len(task.prefix)
        kwargs: dict[str, Any] = {}
        if self.config.canvas == "oracle":
            true_length = self.engine.count_tokens(task.middle) + 1  # + end-of-span
            kwargs["canvas_lengths"] = [self.engine.card.bucket_for(true_length)]
        started = time.perf_counter()
        if self.path == "complete":
            if kwargs:
                raise ValueError("an oracle canvas length needs the fill path")
            done = self.engine.complete_text(text, at, task.language_id, settings=self.settings)
            elapsed = time.perf_counter() - started
            c = done.completion
            edit = None if c is None else (c.start, c.end, c.text)
            self.last = (done.plan, done.generated, text)
            return edit, done.steps, done.tokens, elapsed
        result = self.engine.fill_text(text, [(at, at)], task.language_id,
                                       settings=self.settings, **kwargs)
        elapsed = time.perf_counter() - started
        edit = result.edits[0] if result.edits else None
        self.last = (result.plan, result.generated[0] if result.generated else None, text)
        if edit is not None and edit[0] != at:  # a hole moved by the planner: keep its place
            log.debug("%s: edit at %d, hole at %d", task.task_id, edit[0], at)
        return edit, result.steps, getattr(result, "tokens", 0), elapsed


def why_empty(plan: Any, generated: str | None, text: str, language_id: str) -> str:
    """Which step left nothing of the model's text at the hole: "healing" (the canvas did
    not re-spell the healed-off text), "model" (only whitespace), a postprocess filter's name,
    or "rerank" (the greedy text survives postprocessing; the reranked winner was empty)."""
    from .. import postprocess
    from ..languages import syntax_for

    if generated is None:
        return "healing"
    if not generated.strip():
        return "model"
    completion, steps = postprocess.trace(plan, 0, generated, text=text,
                                          syntax=syntax_for(language_id))
    if completion is not None and completion.text.strip():
        return "rerank"
    return steps[-1][0] if steps else "model"


def evaluate_task(task: Task, config: Config, fill: Callable[[Task], tuple],
                  limits: SandboxLimits, run_tests: bool = True) -> Outcome:
    """Fill one task under one configuration and score it."""
    try:
        edit, steps, tokens, elapsed = fill(task)
    except Exception as exc:  # a failing task is an outcome, not the end of the run
        log.warning("%s: fill failed: %s", task.task_id, exc)
        return Outcome(task.task_id, task.kind, config, "", task.middle, False, 0.0, 0, 0, 0.0,
                       passed=False if task.test else None, error=f"{type(exc).__name__}: {exc}")
    middle = generated_middle(task, edit)
    outcome = Outcome(
        task_id=task.task_id, kind=task.kind, config=config, middle=middle,
        expected=task.middle, exact_match=exact_match(middle, task.middle),
        similarity=round(similarity(middle, task.middle), 4), steps=steps, tokens=tokens,
        elapsed_s=round(elapsed, 5),
    )
    last = getattr(fill, "last", None)
    if last is not None:
        plan, outcome.generated, text = last
        if not middle.strip() and plan is not None:
            outcome.emptied_by = why_empty(plan, outcome.generated, text, task.language_id)
    program = program_for(task, middle) if run_tests else None
    if program is not None:
        result = run_python(program, limits)
        outcome.passed = result.passed
        outcome.sandbox = result.outcome
    return outcome


def summarize_outcomes(outcomes: Iterable[Outcome]) -> list[dict[str, Any]]:
    """Per configuration: quality (exact match, similarity, pass@1) against steps and time."""
    groups: dict[Config, list[Outcome]] = {}
    for outcome in outcomes:
        groups.setdefault(outcome.config, []).append(outcome)
    rows = []
    for config, group in groups.items():
        tested = [o for o in group if o.passed is not None]
        kinds: dict[str, list[Outcome]] = {}
        for o in group:
            kinds.setdefault(o.kind, []).append(o)
        rows.append({
            "config": config.to_json(),
            "label": config.label,
            "tasks": len(group),
            "exact_match": mean([float(o.exact_match) for o in group]),
            "similarity": mean([o.similarity for o in group]),
            "pass_at_1": mean([float(bool(o.passed)) for o in tested]) if tested else None,
            "tested": len(tested),
            "steps": summarize([o.steps for o in group]),
            "latency_ms": summarize([o.elapsed_s * 1000 for o in group]),
            "tokens_per_s": (sum(o.tokens for o in group) / s
                             if (s := sum(o.elapsed_s for o in group)) > 0 else None),
            "errors": sum(o.error is not None for o in group),
            "by_kind": {
                kind: {"tasks": len(items),
                       "exact_match": mean([float(o.exact_match) for o in items]),
                       "similarity": mean([o.similarity for o in items]),
                       "empty": mean([float(not o.middle.strip()) for o in items]),
                       "emptied_by": _counts(o.emptied_by for o in items
                                             if not o.middle.strip()),
                       "latency_p50_ms": summarize([o.elapsed_s * 1000 for o in items])["p50"],
                       "steps": mean([o.steps for o in items])}
                for kind, items in sorted(kinds.items())
            },
        })
    return rows


def _counts(values: Iterable[str | None]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for value in values:
        key = value or "unknown"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def render_table(rows: list[dict[str, Any]]) -> str:
    """The summary as a terminal table."""
    headers = ["config", "tasks", "exact%", "sim%", "pass@1%", "steps", "p50 ms", "p95 ms",
               "tok/s"]
    body = []
    for row in rows:
        body.append([
            row["label"], row["tasks"],
            None if row["exact_match"] is None else 100 * row["exact_match"],
            None if row["similarity"] is None else 100 * row["similarity"],
            None if row["pass_at_1"] is None else 100 * row["pass_at_1"],
            row["steps"]["mean"], row["latency_ms"]["p50"], row["latency_ms"]["p95"],
            row["tokens_per_s"],
        ])
    table = format_table(headers, body, digits=1)
    kinds = sorted({k for row in rows for k in row["by_kind"]})
    if len(kinds) > 1:
        for metric, name in (("exact_match", "exact%"), ("similarity", "sim%"),
                             ("empty", "empty%")):
            headers = ["config"] + [f"{k} {name}" for k in kinds]
            body = [[row["label"]] + [
                None if k not in row["by_kind"] or row["by_kind"][k].get(metric) is None
                else 100 * row["by_kind"][k][metric]
                for k in kinds] for row in rows]
            table += "\n\n" + format_table(headers, body, digits=1)
    for row in rows:
        why = [f"{kind}: " + ", ".join(f"{k} {n}" for k, n in item["emptied_by"].items())
               for kind, item in row["by_kind"].items() if item.get("emptied_by")]
        if why:
            table += f"\n\nempty answers of {row['label']}, emptied by: " + "; ".join(why)
    return table


def plot(rows: list[dict[str, Any]], path: str | Path) -> None:
    """Quality (exact match, pass@1) against mean denoiser calls, one point per config."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for metric, axis, title in (("exact_match", axes[0], "exact match"),
                                ("pass_at_1", axes[1], "pass@1")):
        for strategy in STRATEGIES:
            points = sorted(
                (row["steps"]["mean"], row[metric], row["label"]) for row in rows
                if row["config"]["strategy"] == strategy and row[metric] is not None
                and row["steps"]["mean"] is not None
            )
            if not points:
                continue
            xs, ys, labels = zip(*points)
            axis.plot(xs, [100 * y for y in ys], "o-" if strategy == "parallel" else "s--",
                      label=strategy.replace("_", "-"))
            for x, y, label in points:
                axis.annotate(label.split(" ", 1)[1], (x, 100 * y), fontsize=6,
                              xytext=(3, 3), textcoords="offset points")
        axis.set_xscale("log")
        axis.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        axis.set_ylim(-3, 103)
        axis.set_xlabel("denoiser calls per task (mean)")
        axis.set_ylabel(f"{title} (%)")
        axis.set_title(title)
        axis.grid(alpha=0.3)
        if axis.lines:
            axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# -- command line -----------------------------------------------------------------------------


def _number_list(kind: Callable[[str], Any]) -> Callable[[str], list]:
    def parse(text: str) -> list:
        values = []
        for item in text.split(","):
            item = item.strip()
            values.append(None if item in ("card", "default") else kind(item))
        return values
    return parse


def _choice_list(choices: Sequence[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        values = [v.strip() for v in text.split(",") if v.strip()]
        for value in values:
            if value not in choices:
                raise argparse.ArgumentTypeError(f"{value!r}: expected {', '.join(choices)}")
        return values
    return parse


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `eval` subcommand."""
    parser = subparsers.add_parser(
        "eval",
        help="infilling quality against denoiser calls on a HumanEval-infilling or FIM file",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("file", type=Path, help="tasks, .jsonl or .jsonl.gz")
    parser.add_argument("--limit", type=int, default=None, help="first N tasks only")
    parser.add_argument("--strategy", type=_choice_list(STRATEGIES),
                        default=["parallel", "left_to_right"],
                        help="comma list (default: parallel,left_to_right side by side)")
    parser.add_argument("--steps", type=_number_list(int), default=[None],
                        help="comma list of step caps; 'card' = the model's (default)")
    parser.add_argument("--threshold", type=_number_list(float), default=[None],
                        help="comma list of confidence thresholds; 'card' = the model's")
    parser.add_argument("--canvas", type=_choice_list(CANVAS_POLICIES), default=["auto"],
                        help="canvas length policy: auto (planner) and/or oracle (true length)")
    parser.add_argument("--path", choices=PATHS, default="fill",
                        help="the server request each task goes through: fill (dlm/fill, "
                        "the default) or complete (inline completion at the cursor)")
    parser.add_argument("--threads", type=int, default=0,
                        help="ONNX Runtime threads (0: one per physical core)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                        help="a setting as on the wire (camelCase), e.g. suffixRerank=4; "
                        "repeatable")
    parser.add_argument("--ablate", type=_choice_list(ABLATIONS), default=[],
                        help="comma list of completion rules to turn off, to measure what "
                        "each is worth: " + ", ".join(ABLATIONS))
    parser.add_argument("--no-tests", action="store_true", help="skip pass@1 (no sandbox runs)")
    parser.add_argument("--no-heal", action="store_true",
                        help="turn token healing off (measure what it is worth)")
    parser.add_argument("--timeout", type=float, default=10.0, help="sandbox seconds per test")
    parser.add_argument("--memory-mb", type=int, default=1024, help="sandbox address space")
    parser.add_argument("--out", type=Path, default=None,
                        help="per-task outcomes, jsonl (default: eval-results.jsonl)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--plot", type=Path, default=None, help="write quality-vs-steps PNG")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)
    return parser


def run_eval(tasks: list[Task], configs: list[Config], fill: Filler | Any, *,
             limits: SandboxLimits, run_tests: bool = True,
             show_progress: bool = True) -> list[Outcome]:
    """Every task under every configuration, in configuration order."""
    outcomes = []
    for config in configs:
        fill.configure(config)
        bar = progress(tasks, total=len(tasks), desc=config.label, enabled=show_progress)
        for task in bar:
            outcomes.append(evaluate_task(task, config, fill, limits, run_tests))
    return outcomes


def run(args: argparse.Namespace) -> int:
    """`dlm-lsp eval`: exit 0 on a finished run, 2 on unusable input or model."""
    from ..engine import Engine
    from ..modelcard import ModelError
    from ..settings import Settings

    try:
        tasks = load_tasks(args.file, args.limit)
    except (OSError, ValueError) as exc:
        print(f"dlm-lsp eval: {exc}", file=sys.stderr)
        return 2
    if not tasks:
        print(f"dlm-lsp eval: {args.file} has no tasks", file=sys.stderr)
        return 2
    from ..settings import parse_settings

    base = Settings(device=getattr(args, "device", None) or "auto",
                    threads=getattr(args, "threads", 0),
                    token_healing=not getattr(args, "no_heal", False))
    raw: dict[str, Any] = {}
    for item in getattr(args, "set", []):
        key, _, value = item.partition("=")
        try:
            raw[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            raw[key.strip()] = value
    if getattr(args, "ablate", None):
        ablate(args.ablate)
    settings, problems = parse_settings(raw, base)
    if problems:
        print("dlm-lsp eval: " + "; ".join(problems), file=sys.stderr)
        return 2
    try:
        engine = Engine(getattr(args, "model", None), settings)
    except ModelError as exc:
        print(f"dlm-lsp eval: {exc}", file=sys.stderr)
        return 2
    fill = Filler(engine, getattr(args, "path", "fill"))
    configs = sweep(args.strategy, args.steps, args.threshold, args.canvas)
    limits = SandboxLimits(timeout_s=args.timeout, cpu_s=max(1, int(args.timeout)),
                           memory_mb=args.memory_mb)
    started = time.perf_counter()
    outcomes = run_eval(tasks, configs, fill, limits=limits, run_tests=not args.no_tests,
                        show_progress=not args.no_progress and sys.stderr.isatty())
    rows = summarize_outcomes(outcomes)
    out = args.out or Path("eval-results.jsonl")
    write_jsonl(out, (o.to_json() for o in outcomes))
    header = {
        "file": str(args.file),
        "tasks": len(tasks),
        "model": engine.card.name,
        "model_version": engine.card.version,
        "provider": engine.provider,
        "path": fill.path,
        "settings": raw,
        "ablated": list(getattr(args, "ablate", [])),
        "sandbox": isolation_report() if any(t.test for t in tasks) and not args.no_tests
        else None,
        "seconds": round(time.perf_counter() - started, 2),
        "results": str(out),
    }
    if args.plot:
        plot(rows, args.plot)
    if args.json:
        print(json.dumps({**header, "configs": rows}, indent=2))
    else:
        print(f"model {header['model']} {header['model_version']} on {header['provider']}; "
              f"{len(tasks)} tasks from {args.file} through {fill.path}"
              f"{' ' + json.dumps(raw) if raw else ''}; {header['seconds']} s")
        if header["sandbox"]:
            print("sandbox: " + ", ".join(k for k, v in header["sandbox"].items() if v))
        print(render_table(rows))
        print(f"per-task outcomes: {out}" + (f"; plot: {args.plot}" if args.plot else ""))
    return 0
