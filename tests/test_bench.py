"""`dlm-lsp bench`: cursor sampling, scoring, and a small real run over stdio."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dlm_lsp.measure.client import utf16_offset, utf16_position
from dlm_lsp.measure.samples import KINDS, cut_sample, exact_match, sample_positions

from tests.reliability.synthetic_model import build_synthetic_model  # noqa: E402

DATA = Path(__file__).parent / "data"
SAMPLE_FILE = DATA / "bench_sample.py"


def synthetic_model(directory: Path) -> Path:
    """The reliability tests' tiny deterministic model (fast answers, real ONNX runtime)."""
    return build_synthetic_model(directory)


def test_utf16_positions_round_trip_with_emoji_and_cjk():
    text = "a = '😀漢'\nb = 1\n"
    for offset in range(len(text) + 1):
        line, character = utf16_position(text, offset)
        assert utf16_offset(text, line, character) == offset
    assert utf16_position(text, text.index("'", 5)) == (0, 8)  # 😀 is two UTF-16 units


def test_samples_cover_every_kind_and_rebuild_the_file():
    text = SAMPLE_FILE.read_text()
    samples = sample_positions([SAMPLE_FILE], 16, seed=3)
    assert len(samples) == 16
    assert {s.kind for s in samples} == set(KINDS)
    for sample in samples:
        assert sample.original == text
        assert sample.expected.strip()
        assert exact_match(sample, sample.offset, sample.offset, sample.expected)
        assert not exact_match(sample, sample.offset, sample.offset, "pass")


def test_samples_are_fixed_by_the_seed():
    first = sample_positions([SAMPLE_FILE], 8, seed=7)
    again = sample_positions([SAMPLE_FILE], 8, seed=7)
    assert first == again


def test_block_opener_sample_puts_the_cursor_on_an_indented_new_line():
    text = SAMPLE_FILE.read_text()
    lines = text.split("\n")
    index = next(i for i, line in enumerate(lines) if line.strip() == "def total(self) -> int:")
    import random

    sample = cut_sample(text, str(SAMPLE_FILE), "block-opener", index, random.Random(0))
    assert sample.text[: sample.offset].endswith("def total(self) -> int:\n        ")
    assert sample.expected.startswith("count = 0") and sample.expected.endswith("return count")


@pytest.mark.timeout(120)
def test_bench_runs_the_real_server_and_reports(tmp_path):
    model = synthetic_model(tmp_path / "model")
    plot, out = tmp_path / "bench.png", tmp_path / "requests.jsonl"
    command = [sys.executable, "-m", "dlm_lsp", "bench", str(SAMPLE_FILE), "--model", str(model),
               "-n", "4", "--warmup", "1", "--typing", "3", "--typing-samples", "2",
               "--json", "--plot", str(plot), "--out", str(out), "--no-progress"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=110)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert report["requests"] == 4 and report["warmup"] == 1
    assert report["provider"] in ("CPU", "CUDA")
    assert set(report["results"]) == {"card", "left_to_right"}
    for strategy, scopes in report["results"].items():
        overall = scopes["all"]
        assert overall["requests"] == 4
        latency = overall["latency_ms"]
        assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
        assert overall["steps"] >= 1 and overall["tokens_per_s"] > 0
        assert 0 <= overall["exact_match"] <= 1
        assert set(scopes) - {"all"} <= {"line", "statement", "block", "none"}
    assert report["comparison"]["all"]["speedup_p50"] > 0
    typing = report["typing"]
    assert typing["keystrokes"] > 0 and 0 <= typing["cached_share"] <= 1
    assert all(len(values) == 3 and values[0] > 0 for values in report["rss_mb"].values())
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 8 + typing["keystrokes"]
    assert {"latency_ms", "steps", "tokens", "scope", "cached", "exact_match"} <= set(rows[0])


def test_tokens_per_call_counts_the_decodings_calls_not_the_rerankings():
    """A request's suffix-reranking calls (candidates and their scoring) are in its steps,
    not in the draft-and-check loop's tokens per call."""
    from dlm_lsp.measure.report import Measurement, summarize_measurements

    def request(steps, rerank, tokens):
        return Measurement(strategy="card", kind="k", path="p", latency_ms=1.0, server_ms=1.0,
                           steps=steps, tokens=tokens, scope="line", cached=False,
                           suggested=True, exact_match=False, rerank_steps=rerank)

    row = summarize_measurements([request(10, 6, 8), request(4, None, 8)])["card"]["line"]
    assert row["tokens_per_call"] == 2.0  # 16 tokens over 4 + 4 decoding calls
    assert row["steps"] == 7.0 and row["rerank_steps"] == 6.0
