"""`dlm-lsp triton-repo` writes a repository Triton can serve (served for real in
tests/test_triton_e2e.py)."""

from pathlib import Path

from dlm_lsp.cli import main
from dlm_lsp.modelcard import load_card
from tests.reliability.synthetic_model import build_synthetic_model


def test_triton_repo_writes_both_models_with_batching_and_instances(tmp_path: Path):
    model = build_synthetic_model(tmp_path / "model")
    out = tmp_path / "repo"
    assert main(["triton-repo", str(model), str(out), "--kind", "gpu", "--instances", "2",
                 "--max-batch-size", "8", "--max-queue-delay-us", "500"]) == 0
    config = (out / "dlm_complete" / "config.pbtxt").read_text()
    assert 'backend: "python"' in config and "max_batch_size: 8" in config
    assert "max_queue_delay_microseconds: 500" in config
    assert "count: 2 kind: KIND_GPU" in config
    assert config.count("allow_ragged_batch: true") == 4  # every variable-length input
    assert "CompleteModel as TritonPythonModel" in (out / "dlm_complete/1/model.py").read_text()
    served = load_card(out / "dlm_complete" / "1" / "model")  # every file the card names
    assert served.name == "synthetic"
    for name in ("model.json", "tokenizer.json"):
        assert (out / "dlm_card/1" / name).read_bytes() == (model / name).read_bytes()
    assert "CardModel as TritonPythonModel" in (out / "dlm_card/1/model.py").read_text()
    # writing again replaces the models, nothing else
    (out / "README").write_text("mine")
    assert main(["triton-repo", str(model), str(out)]) == 0
    assert "KIND_AUTO" in (out / "dlm_complete" / "config.pbtxt").read_text()
    assert (out / "README").read_text() == "mine"


def test_a_format2_model_keeps_its_shared_weights(tmp_path: Path):
    import json

    model = build_synthetic_model(tmp_path / "model")
    card = json.loads((model / "model.json").read_text())
    card.update(format=2, context_attention="causal", weights="weights.bin")
    (model / "model.json").write_text(json.dumps(card))
    (model / "weights.bin").write_bytes(b"\0" * 64)  # the repository copies, never reads it
    out = tmp_path / "repo"
    assert main(["triton-repo", str(model), str(out)]) == 0
    served = load_card(out / "dlm_complete" / "1" / "model")
    assert served.weights == "weights.bin" and served.causal
    assert (served.directory / "weights.bin").read_bytes() == b"\0" * 64
