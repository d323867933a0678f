"""`dlm-lsp eval`: task readers, scoring, pass@1 through the sandbox, and a small real run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dlm_lsp.measure.evaluate import (
    Config, Task, evaluate_task, generated_middle, load_tasks, program_for, summarize_outcomes,
    sweep, task_from_record,
)
from dlm_lsp.measure.sandbox import SandboxLimits
from dlm_lsp.measure.scoring import exact_match, normalize

from tests.reliability.synthetic_model import build_synthetic_model  # noqa: E402

DATA = Path(__file__).parent / "data"
LIMITS = SandboxLimits(timeout_s=5.0, cpu_s=5, memory_mb=512)


def synthetic_model(directory: Path) -> Path:
    """The reliability tests' tiny deterministic model (fast answers, real ONNX runtime)."""
    return build_synthetic_model(directory)


def test_reads_humaneval_infilling_and_fim_gz():
    humaneval = load_tasks(DATA / "humaneval_tiny.jsonl")
    assert [t.task_id for t in humaneval] == ["tiny/0", "tiny/1", "tiny/2"]
    assert humaneval[1].middle.startswith("        if char") and humaneval[1].test
    assert humaneval[1].entry_point == "count_vowels" and humaneval[1].kind == "humaneval"
    fim = load_tasks(DATA / "fim_tiny.jsonl.gz")
    assert [t.kind for t in fim] == ["single-line", "multi-line"]
    assert fim[0].test is None and fim[0].language_id == "python"
    assert len(load_tasks(DATA / "humaneval_tiny.jsonl", limit=2)) == 2


def test_a_record_in_neither_format_is_named():
    with pytest.raises(ValueError, match="record 4"):
        task_from_record({"code": "x"}, 4)


def test_exact_match_ignores_only_trailing_whitespace():
    assert normalize("a  \n  b\t\n\n") == "a\n  b"
    assert exact_match("return x  \n", "return x")
    assert not exact_match("return  x", "return x")
    assert not exact_match("  return x", "return x")


def test_generated_middle_folds_back_replaced_closers():
    task = Task(task_id="t", prefix="f(", suffix=")\n", middle="a, b")
    assert generated_middle(task, (2, 2, "a, b")) == "a, b"
    assert generated_middle(task, (2, 3, "a, b)")) == "a, b"  # replaced the auto-closed ')'
    assert generated_middle(task, None) == ""
    assert not exact_match(generated_middle(task, (2, 3, "a, b")), "a, b")


def _oracle(task):
    at = len(task.prefix)
    return (at, at, task.middle), 1, 3, 0.001


def _wrong(task):
    at = len(task.prefix)
    return (at, at, "    return None\n"), 2, 4, 0.002


def test_pass_at_1_runs_the_program_in_the_sandbox():
    tasks = load_tasks(DATA / "humaneval_tiny.jsonl")
    config = Config()
    right = [evaluate_task(t, config, _oracle, LIMITS) for t in tasks]
    assert all(o.exact_match and o.passed and o.sandbox == "passed" for o in right)
    wrong = evaluate_task(tasks[0], config, _wrong, LIMITS)
    assert not wrong.exact_match and wrong.passed is False and wrong.sandbox == "failed"
    program = program_for(tasks[0], tasks[0].middle)
    assert program.rstrip().endswith("check(add)")


def test_a_filler_that_raises_is_an_outcome():
    def broken(task):
        raise RuntimeError("boom")

    task = load_tasks(DATA / "humaneval_tiny.jsonl")[0]
    outcome = evaluate_task(task, Config(), broken, LIMITS)
    assert outcome.error == "RuntimeError: boom" and outcome.passed is False


def test_summary_and_sweep():
    configs = sweep(["parallel", "left_to_right"], [4, None], [0.5, None], ["auto"])
    assert sum(c.strategy == "parallel" for c in configs) == 4
    assert [c.max_steps for c in configs if c.strategy == "left_to_right"] == [4, None]
    tasks = load_tasks(DATA / "humaneval_tiny.jsonl")
    outcomes = [evaluate_task(t, configs[0], _oracle, LIMITS, run_tests=False) for t in tasks]
    (row,) = summarize_outcomes(outcomes)
    assert row["tasks"] == 3 and row["exact_match"] == 1.0 and row["pass_at_1"] is None
    assert row["steps"]["mean"] == 1 and row["by_kind"]["humaneval"]["tasks"] == 3


@pytest.mark.timeout(120)
def test_eval_command_end_to_end(tmp_path, capsys):
    from dlm_lsp.cli import main

    model = synthetic_model(tmp_path / "model")
    out, plot = tmp_path / "results.jsonl", tmp_path / "eval.png"
    code = main(["eval", str(DATA / "humaneval_tiny.jsonl"), "--model", str(model),
                 "--steps", "card,4", "--json", "--out", str(out), "--plot", str(plot),
                 "--no-progress", "--timeout", "5"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tasks"] == 3 and report["provider"] in ("CPU", "CUDA")
    assert report["sandbox"]["net_namespace"] in (True, False)
    strategies = [row["config"]["strategy"] for row in report["configs"]]
    assert strategies.count("parallel") == 2 and strategies.count("left_to_right") == 2
    for row in report["configs"]:
        assert row["tasks"] == 3 and row["tested"] == 3 and row["errors"] == 0
        assert 0 <= row["exact_match"] <= 1 and 0 <= row["pass_at_1"] <= 1
        assert row["steps"]["mean"] >= 1
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 12
    fields = {"task_id", "config", "middle", "exact_match", "passed", "steps", "sandbox"}
    assert fields <= set(rows[0])
    assert plot.read_bytes()[:4] == b"\x89PNG"


def test_eval_command_rejects_a_bad_file(tmp_path, capsys):
    from dlm_lsp.cli import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prefix": "x"}\nnot json\n')
    assert main(["eval", str(bad)]) == 2
    assert "bad.jsonl" in capsys.readouterr().err


def test_eval_through_inline_completion_with_settings_and_an_ablation(tmp_path, capsys):
    from dlm_lsp import postprocess
    from dlm_lsp.cli import main

    model = synthetic_model(tmp_path / "model")
    out = tmp_path / "results.jsonl"
    filters = postprocess.FILTERS
    try:
        code = main(["eval", str(DATA / "humaneval_tiny.jsonl"), "--model", str(model),
                     "--strategy", "left_to_right", "--path", "complete", "--threads", "1",
                     "--set", "inlineSuffixRerank=0", "--ablate", "repeat", "--no-tests",
                     "--json", "--out", str(out), "--no-progress"])
        assert postprocess.cut_runaway_repetition not in postprocess.FILTERS
    finally:
        postprocess.FILTERS = filters
        postprocess.CONTENT_FILTERS = (postprocess.cut_at_suffix_overlap,
                                       postprocess.cut_runaway_repetition)
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["path"] == "complete" and report["settings"] == {"inlineSuffixRerank": 0}
    assert report["ablated"] == ["repeat"]
    (row,) = report["configs"]
    assert row["tasks"] == 3 and row["errors"] == 0
    for kind in row["by_kind"].values():
        assert {"exact_match", "similarity", "empty", "latency_p50_ms"} <= set(kind)
    assert main(["eval", str(DATA / "humaneval_tiny.jsonl"), "--model", str(model),
                 "--set", "suffixRerank=-1", "--no-progress"]) == 2
