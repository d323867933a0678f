"""`python -m model_export` explains every step and works without the optional heldout module."""

import subprocess
import sys

import pytest

from model_export.__main__ import build_parser, main


def test_help_lists_every_step(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for step in ("corpus", "tokenizer", "train", "export", "verify", "heldout"):
        assert step in out


@pytest.mark.parametrize("step", ["corpus", "tokenizer", "train", "export", "verify"])
def test_each_step_has_help(step, capsys):
    with pytest.raises(SystemExit):
        main([step, "--help"])
    assert len(capsys.readouterr().out) > 200


def test_cli_survives_a_missing_heldout_module(monkeypatch):
    import model_export

    monkeypatch.setitem(sys.modules, "model_export.heldout", None)  # import raises ImportError
    monkeypatch.delattr(model_export, "heldout", raising=False)
    parser = build_parser()
    args = parser.parse_args(["heldout"])
    assert args.func(args) == 2


def test_module_entry_point():
    result = subprocess.run([sys.executable, "-m", "model_export", "--help"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "tokenizer" in result.stdout
