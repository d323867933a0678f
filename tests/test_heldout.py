"""The held-out infilling set written from the corpus validation split."""

from __future__ import annotations

import json
from pathlib import Path

from dlm_lsp.measure.evaluate import load_tasks
from model_export.heldout import KINDS, heldout_tasks

SOURCE = (Path(__file__).parent / "data" / "bench_sample.py").read_text()


def _records(n: int = 6) -> list[dict]:
    return [{"path": f"/usr/lib/python3.11/pkg/mod{i}.py", "language": "python",
             "sha256": f"{i:016x}", "text": SOURCE.replace("Inventory", f"Inventory{i}")}
            for i in range(n)]


def test_every_kind_and_the_holes_rebuild_their_file():
    tasks = list(heldout_tasks(_records(), per_kind=3, seed=1))
    assert sorted({t["kind"] for t in tasks}) == sorted(KINDS)
    assert all(sum(t["kind"] == k for t in tasks) == 3 for k in KINDS)
    texts = {r["path"].split("python3.11/")[1]: r["text"] for r in _records()}
    for task in tasks:
        assert task["middle"].strip()
        assert task["prefix"] + task["middle"] + task["suffix"] in texts[task["path"]]
        if task["kind"] == "single-line":
            assert "\n" not in task["middle"]
        if task["kind"] == "multi-line":
            assert "\n" in task["middle"]


def test_the_set_is_a_function_of_the_split_and_the_seed():
    first = list(heldout_tasks(_records(), per_kind=4, seed=5))
    assert first == list(heldout_tasks(list(reversed(_records())), per_kind=4, seed=5))
    assert first != list(heldout_tasks(_records(), per_kind=4, seed=6))


def test_command_writes_a_file_eval_reads(tmp_path, capsys):
    from model_export.heldout import add_parser
    import argparse

    val = tmp_path / "val.jsonl"
    val.write_text("".join(json.dumps(r) + "\n" for r in _records()))
    out = tmp_path / "heldout.jsonl.gz"
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["heldout", "--corpus", str(val), "--out", str(out),
                              "--per-kind", "2"])
    assert args.func(args) == 0
    tasks = load_tasks(out)
    assert len(tasks) == 8 and {t.kind for t in tasks} == set(KINDS)
    assert "8 tasks from 6 validation files" in capsys.readouterr().out
