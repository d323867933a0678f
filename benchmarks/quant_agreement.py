"""How far a quantized model directory is from its float32 checkpoint, on real code.

For real positions of validation files (the corpus's validation split when it is here, else
fixed standard-library packages), the prefix (up to --prefix tokens) is encoded and the next
--canvas tokens of the real text are fed teacher-forced through the decoder as the server
lays them out (a shifted model reads each canvas one place to the right). Reported: argmax
agreement per canvas position with the float32 PyTorch model, and each one's next-token
accuracy against the real text.

    python benchmarks/quant_agreement.py --model dlm_lsp/models/default \
        --checkpoint runs/smollm2/base.pt --positions 64
"""

from __future__ import annotations

import argparse
import json
import sysconfig
import time
from pathlib import Path

import numpy as np
import torch

from dlm_lsp.layout import build_layout
from dlm_lsp.modelcard import load_card
from dlm_lsp.runtime import OnnxDenoiser
from model_export.torch_denoiser import TorchDenoiser
from model_export.train import load_checkpoint

STDLIB = Path(sysconfig.get_paths()["stdlib"])


def validation_texts(corpus: Path) -> list[str]:
    path = corpus / "val.jsonl.zst"
    if path.is_file():
        from model_export.train import load_texts

        return load_texts(path)[0]
    return [p.read_text() for package in ("json", "email", "logging", "importlib")
            for p in sorted((STDLIB / package).glob("*.py"))]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--checkpoint", required=True,
                   help="the float32 PyTorch checkpoint, or a model directory to compare with")
    p.add_argument("--corpus", default="runs/corpus", type=Path)
    p.add_argument("--positions", type=int, default=64)
    p.add_argument("--prefix", type=int, default=256)
    p.add_argument("--canvas", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    torch.set_num_threads(args.threads)
    card = load_card(args.model)
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(card.path(card.tokenizer)))
    onnx_runtime = OnnxDenoiser(card, "cpu", args.threads)
    if Path(args.checkpoint).is_dir():  # another model directory as the reference
        torch_runtime = OnnxDenoiser(load_card(args.checkpoint), "cpu", args.threads)
    else:
        model, state = load_checkpoint(args.checkpoint)
        torch_runtime = TorchDenoiser(model, card.special_tokens)
    rng = np.random.default_rng(args.seed)
    texts = [t for t in validation_texts(args.corpus) if len(t) > 2000]
    agree = total = right_onnx = right_torch = 0
    started = time.perf_counter()
    for _ in range(args.positions):
        ids = tokenizer.encode(texts[int(rng.integers(len(texts)))],
                               add_special_tokens=False).ids
        if len(ids) < args.prefix + args.canvas + 1:
            continue
        cut = int(rng.integers(args.prefix, len(ids) - args.canvas))
        prefix, truth = ids[cut - args.prefix : cut], np.array(ids[cut : cut + args.canvas])
        layout = build_layout([prefix, []], [args.canvas], card.special_tokens.file,
                              shift=card.shift)
        positions = np.array(layout.canvas_positions[0])
        inputs, input_positions = layout.decoder_inputs(truth, positions)
        preds = []
        for runtime in (onnx_runtime, torch_runtime):
            state_ = runtime.encode(layout)
            pred_ids, _, _ = runtime.denoise_step(state_, inputs[None], input_positions[None])
            preds.append(np.asarray(pred_ids[0]))
        agree += int((preds[0] == preds[1]).sum())
        right_onnx += int((preds[0] == truth).sum())
        right_torch += int((preds[1] == truth).sum())
        total += args.canvas
    report = {"model": str(args.model), "checkpoint": args.checkpoint, "positions": total,
              "argmax_agreement": round(agree / total, 4),
              "next_token_accuracy_onnx": round(right_onnx / total, 4),
              "next_token_accuracy_torch": round(right_torch / total, 4),
              "seconds": round(time.perf_counter() - started, 1)}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
