"""A tiny config trained for a few hundred CPU steps: the validation loss falls."""

import argparse
import json

import pytest

from model_export.train import add_train_arguments, train


def train_args(tiny_corpus, tiny_tokenizer, out, *extra):
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    return parser.parse_args([
        "--corpus", str(tiny_corpus), "--tokenizer", str(tiny_tokenizer), "--out", str(out),
        "--n-layers", "2", "--n-heads", "2", "--head-dim", "16", "--mlp-hidden", "64",
        "--max-context", "96", "--suffix-tokens", "24", "--buckets", "16,32",
        "--batch-size", "16", "--lr", "3e-3", "--warmup", "20", "--max-steps", "300",
        "--eval-every", "100", "--eval-batches", "4", "--em-examples", "8",
        "--em-max-steps", "4", "--save-every", "100", "--threads", "1", "--no-progress",
        *extra,
    ])


def test_tiny_training_lowers_validation_loss(tiny_corpus, tiny_tokenizer, tmp_path):
    summary = train(train_args(tiny_corpus, tiny_tokenizer, tmp_path))
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, 100, 200, 300]
    first, last = evals[0]["val_loss"], evals[-1]["val_loss"]
    print("val loss by step:", [(r["step"], r["val_loss"]) for r in evals])
    assert last < 0.7 * first, evals
    assert summary["steps"] == 300 and summary["tokens_seen"] > 0
    assert (tmp_path / "loss.png").stat().st_size > 0
    assert (tmp_path / "last.pt").is_file()


def test_resume_continues_from_checkpoint(tiny_corpus, tiny_tokenizer, tmp_path):
    train(train_args(tiny_corpus, tiny_tokenizer, tmp_path, "--max-steps", "20",
                     "--eval-every", "1000", "--save-every", "10"))
    summary = train(train_args(tiny_corpus, tiny_tokenizer, tmp_path, "--max-steps", "30",
                               "--eval-every", "1000"))
    assert summary["steps"] == 30
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [10, 20, 30]


def test_block_diffusion_and_edit_noise_run_and_report_rates(tiny_corpus, tiny_tokenizer, tmp_path):
    """The fast pipeline's other paths: block-diffusion batches, edit noise, a data worker;
    the summary carries the throughput and content metrics the runs are judged by."""
    summary = train(train_args(tiny_corpus, tiny_tokenizer, tmp_path, "--max-steps", "40",
                               "--eval-every", "1000", "--block-rate", "0.5",
                               "--block-tokens", "64", "--block-sizes", "16,32",
                               "--edit-rate", "0.5", "--workers", "1"))
    for key in ("real_tokens_per_s", "loss_tokens_per_s", "pad_share", "data_wait_share"):
        assert summary[key] >= 0, key
    assert summary["real_tokens_per_s"] > summary["loss_tokens_per_s"] > 0
    assert set(summary["content_ce"]) == {"t015", "t1", "t015_no_context"}
    assert summary["final_train_loss_ema"] == summary["final_train_loss_ema"]  # not NaN
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert all("pad_share" in r for r in rows if r["kind"] == "train")


def test_validate_scores_checkpoints_on_one_example_set(tiny_corpus, tiny_tokenizer, tmp_path,
                                                         capsys):
    from model_export.__main__ import main

    train(train_args(tiny_corpus, tiny_tokenizer, tmp_path, "--max-steps", "10",
                     "--eval-every", "1000"))
    argv = ["validate", str(tmp_path / "last.pt"), str(tmp_path / "last.pt"), "--corpus",
            str(tiny_corpus), "--tokenizer", str(tiny_tokenizer), "--max-context", "96",
            "--suffix-tokens", "24", "--buckets", "16,32", "--batches", "2", "--threads", "1"]
    capsys.readouterr()
    assert main(argv) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 2 and rows[0] == rows[1]  # same examples, same masks
    assert rows[0]["step"] == 10 and rows[0]["context_attention"] == "causal"
    assert 0 < rows[0]["content_ce_t015"] < 20
