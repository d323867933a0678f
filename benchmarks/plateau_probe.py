"""How fast does the denoiser's body leave the unigram plateau? A few hundred steps, no pipeline.

The training loop's `content_ce` sat at ~6.9 nats (a unigram model of the validation text gets
~6.8) for 1,350 steps of the first long CPU run. This probe trains the same `Denoiser` on plain
runs of corpus text, without the example maker, the block mask or the data workers, so that one
question is answered at a time:

* ``--objective ar``: next-token prediction under a causal mask — the control: does the body
  learn at all at this learning rate and batch?
* ``--objective mdlm``: full-sequence masked diffusion (every token a canvas token, t ~ U(0, 1),
  1/t weights; ``--unweighted`` drops them), scored on fixed validation runs at t = 0.15.

It prints the validation cross-entropy every 50 steps. What its first version found (the same
objectives, validation runs drawn one per seed; 2 threads, bf16, 16 x 256 tokens a step, 300
steps): AR 5.41; masked diffusion 6.90 at lr 2e-3, 6.61 at lr 5e-4; with 64-token runs (64 x 64)
6.58 at 2e-3, 6.39 at 5e-4, 6.67 at 2e-4, 7.41 at 8e-3. Zero-initialised q/k/v biases (a
content-free positional key) and dropping the 1/t weights did not help (7.2-7.3 at step 200).

    python benchmarks/plateau_probe.py --objective mdlm --lr 5e-4 --steps 300
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model_export.data import mask_canvas, row_loss  # noqa: E402
from model_export.model import Denoiser, DenoiserConfig  # noqa: E402
from model_export.tokenizer import load_tokenizer, special_tokens  # noqa: E402
from model_export.train import load_texts  # noqa: E402


def runs_of(texts, tokenizer, length: int, rng: random.Random):
    """Endless `length`-token runs of corpus text, each from a line start."""
    while True:
        text = texts[rng.randrange(len(texts))]
        start = rng.randrange(len(text))
        start = text.rfind("\n", 0, start) + 1 if start else 0
        ids = tokenizer.encode(text[start: start + length * 6], add_special_tokens=False).ids
        if len(ids) >= length:
            yield ids[:length]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--objective", choices=("ar", "mdlm"), default="mdlm")
    p.add_argument("--unweighted", action="store_true", help="mdlm: plain mean CE, no 1/t")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seq", type=int, default=256, help="tokens per run")
    p.add_argument("--batch", type=int, default=16, help="runs per step")
    p.add_argument("--corpus", default="runs/corpus2")
    p.add_argument("--tokenizer", default="runs/tokenizer2.json")
    p.add_argument("--files", type=int, default=3000, help="training files loaded")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    texts, _ = load_texts(Path(args.corpus) / "train.jsonl.zst", args.files)
    val_texts, _ = load_texts(Path(args.corpus) / "val.jsonl.zst", 300)
    tokenizer = load_tokenizer(args.tokenizer)
    mask_id = special_tokens(tokenizer).mask
    T = args.seq
    val_stream = runs_of(val_texts, tokenizer, T, random.Random(1))
    val = torch.tensor([next(val_stream) for _ in range(max(8, 8192 // T))])
    train_stream = runs_of(texts, tokenizer, T, random.Random(0))

    torch.manual_seed(0)
    cfg = DenoiserConfig(vocab_size=tokenizer.get_vocab_size(), max_position=max(1024, T))
    model = Denoiser(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95),
                                  weight_decay=0.1)
    positions = torch.arange(T)[None]
    causal = torch.ones(T, T, dtype=torch.bool).tril()[None]
    everyone = torch.ones(1, T, T, dtype=torch.bool)

    def loss_of(ids: torch.Tensor, fixed_t: float | None = None, seed: int | None = None):
        b = ids.shape[0]
        if args.objective == "ar":
            h = model.hidden(ids, positions.expand(b, -1), causal.expand(b, -1, -1))
            return F.cross_entropy(model.logits(h[:, :-1]).float().flatten(0, 1),
                                   ids[:, 1:].flatten())
        gen = None if seed is None else torch.Generator().manual_seed(seed)
        t = None if fixed_t is None else torch.full((b,), fixed_t)
        noisy, masked, t = mask_canvas(ids, torch.ones_like(ids, dtype=torch.bool), mask_id,
                                       generator=gen, t=t)
        h = model.hidden(noisy, positions.expand(b, -1), everyone.expand(b, -1, -1))
        logits = model.logits(h[masked])
        if fixed_t is not None or args.unweighted:
            return F.cross_entropy(logits.float(), ids[masked])
        weights = (1 / t)[:, None].expand(b, T)  # the training loss: 1/t per masked token
        return row_loss(logits, ids, masked, weights, torch.full((b,), T))

    began = time.time()
    for step in range(args.steps + 1):
        if step % 50 == 0 or step == args.steps:
            with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
                score = loss_of(val, fixed_t=0.15, seed=1).item()
            print(f"step {step} val {score:.3f} ({time.time() - began:.0f} s)", flush=True)
        if step == args.steps:
            break
        ids = torch.tensor([next(train_stream) for _ in range(args.batch)])
        for group in optimizer.param_groups:
            group["lr"] = args.lr * min(1.0, (step + 1) / 50)  # 50 warmup steps
        with torch.autocast("cpu", torch.bfloat16):
            loss = loss_of(ids)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
