"""`dlm-lsp bench --scenario typing`: line picking, and a small real run of both servers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dlm_lsp.measure.bench_typing import pick_lines

from tests.causal_model import build_exported_model  # noqa: E402

SAMPLE_FILE = Path(__file__).parent / "data" / "bench_sample.py"


def test_picked_lines_are_code_lines_removed_from_their_documents():
    lines = pick_lines([SAMPLE_FILE], 5, seed=3, min_line=10)
    original = SAMPLE_FILE.read_text()
    assert len(lines) == 5
    for typed in lines:
        assert typed.text[: typed.offset] + typed.line + typed.text[typed.offset:] == original
        assert typed.line.strip() == typed.line and len(typed.line) >= 16
        assert not typed.line.startswith("#")
        assert typed.text[: typed.offset].count("\n") >= 10
        before = typed.text[typed.text.rfind("\n", 0, typed.offset) + 1 : typed.offset]
        assert before.strip() == ""  # the indentation stays, as an editor would put it


@pytest.mark.timeout(180)
def test_typing_bench_runs_both_servers_and_reports(tmp_path):
    pytest.importorskip("onnx")
    model = build_exported_model(tmp_path / "model")
    out = tmp_path / "keystrokes.jsonl"
    command = [sys.executable, "-m", "dlm_lsp", "bench", str(SAMPLE_FILE), "--model", str(model),
               "--scenario", "typing", "--lines", "2", "--max-keystrokes", "6", "--json",
               "--out", str(out), "--no-progress"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=170)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    cache, plain = report["typing"]["cache"], report["typing"]["no-cache"]
    assert cache["lines"] == plain["lines"] == 2
    assert cache["keystrokes"] == plain["keystrokes"] == 12
    assert plain["encoded_share_mean"] == 1.0  # without the cache all of it, every keystroke
    assert cache["encoded_share_mean"] < 0.9 and cache["model_runs"] > 0
    assert cache["context_tokens_mean"] == plain["context_tokens_mean"]
    assert 0 < cache["keystroke_ms"]["p50"] <= cache["keystroke_ms"]["p95"]
    assert cache["cold_ms"]["n"] == 2 and report["typing"]["cache_vs_no_cache_p50"] > 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 * 2 * 7  # two servers, two lines, a cold request and six keystrokes
