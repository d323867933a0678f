"""Masked-diffusion training of the denoiser: CPU, one GPU, or several through torchrun (DDP).

    python -m model_export train --corpus runs/corpus --tokenizer runs/tokenizer.json --out runs/m
    torchrun --nproc_per_node 8 -m model_export train ...      # same code, DDP

AdamW with linear warmup and cosine decay (the schedule follows whichever of --max-steps and
--max-minutes is further along), bf16 autocast on CUDA and on CPUs with bf16 instructions,
batches made ahead in worker processes (`stream.py`: infill batches grouped by length, and
block-diffusion batches), the output head only on positions that carry loss, checkpoints
(`last.pt`, resumed when present), periodic validation (masked CE, `content_ce` on real code
tokens at fixed noise with and without the context, infill exact-match), `log.jsonl`,
`loss.png` and `summary.json` with `real_tokens_per_s`, `loss_tokens_per_s`, `pad_share` and
`data_wait_share`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from .corpus import corpus_stats, read_corpus
from .data import (Batch, BlockBatch, ExampleMaker, ExampleSettings,
                   block_noise_level, collate, edit_noise, mask_canvas, row_loss)
from .model import CONTEXT_ATTENTION, Denoiser, DenoiserConfig, block_diffusion_mask, block_mask
from .sampling import exact_match
from .stream import BatchStream, StreamPlan, batch_loader
from .tokenizer import load_tokenizer, special_tokens


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--corpus", default="runs/corpus", help="directory written by `corpus`")
    p.add_argument("--tokenizer", default="runs/tokenizer.json")
    p.add_argument("--out", default="runs/model", help="checkpoints, log.jsonl, loss.png")
    p.add_argument("--n-layers", type=int, default=4)
    p.add_argument("--n-heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--mlp-hidden", type=int, default=512)
    p.add_argument("--max-position", type=int, default=1024)
    p.add_argument("--max-context", type=int, default=512, help="file token + prefix + suffix")
    p.add_argument("--prefix-tokens", type=int, default=0,
                   help="most prefix tokens (default: max-context - 1 - suffix-tokens)")
    p.add_argument("--suffix-tokens", type=int, default=128, help="most suffix tokens")
    p.add_argument("--long-context-rate", type=float, default=0.2,
                   help="share of examples with full context budgets (the rest are short)")
    p.add_argument("--buckets", default="16,32,64,128", help="canvas lengths")
    p.add_argument("--batch-size", type=int, default=8, help="per process")
    p.add_argument("--lr", type=float, default=5e-4,
                   help="peak learning rate; at 2e-3 the 4.7 M model sat on the unigram plateau "
                   "(content_ce ~6.9) for 1,350 steps, at 5e-4 it leaves it within ~500")
    p.add_argument("--min-lr-ratio", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=100, help="warmup steps")
    p.add_argument("--max-steps", type=int, default=10_000)
    p.add_argument("--max-minutes", type=float, default=0, help="stop after this (0 = no limit)")
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--eval-batches", type=int, default=8)
    p.add_argument("--em-examples", type=int, default=32, help="validation infills per eval")
    p.add_argument("--em-max-steps", type=int, default=8, help="sampler steps per infill in eval")
    p.add_argument("--save-every", type=int, default=500)
    p.add_argument("--max-files", type=int, default=0, help="use at most this many files")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--device", default="", help="cpu | cuda (default: cuda when available)")
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"),
                   help="auto: bf16 autocast on CUDA and on CPUs with AVX-512 BF16 / AMX")
    p.add_argument("--workers", type=int, default=-1,
                   help="processes making batches ahead (-1: one per spare core, at most 15)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (GPU)")
    p.add_argument("--context-attention", default="causal", choices=CONTEXT_ATTENTION,
                   help="causal: model format 2, the server caches the context's keys/values")
    p.add_argument("--block-rate", type=float, default=0.0,
                   help="share of steps on block-diffusion batches (BD3-LM)")
    p.add_argument("--block-batch-size", type=int, default=8, help="block examples per batch")
    p.add_argument("--block-tokens", type=int, default=256, help="tokens per block example")
    p.add_argument("--block-sizes", default="16,32,64", help="block (canvas) lengths")
    p.add_argument("--pool-batches", type=int, default=32,
                   help="infill batches' worth of examples grouped by length at once")
    p.add_argument("--max-pad-share", type=float, default=0.1,
                   help="an infill batch closes before its padding passes this")
    p.add_argument("--t-min", type=float, default=1e-3,
                   help="masking levels t ~ U(t-min, t-max); the loss weighs masked tokens 1/t, "
                   "so a small t-min means rare, huge weights (BD3-LM clips the range)")
    p.add_argument("--t-max", type=float, default=1.0)
    p.add_argument("--edit-rate", type=float, default=0.0,
                   help="share of examples with edit noise (visible tokens replaced)")
    p.add_argument("--edit-share", type=float, default=0.1,
                   help="in those, the share of visible canvas tokens replaced")
    p.add_argument("--no-progress", action="store_true")


def example_settings(args) -> ExampleSettings:
    buckets = tuple(sorted(int(b) for b in str(args.buckets).split(",")))
    prefix = args.prefix_tokens or args.max_context - 1 - args.suffix_tokens
    return ExampleSettings(buckets=buckets, max_context=args.max_context, prefix_tokens=prefix,
                           suffix_tokens=args.suffix_tokens,
                           long_context_rate=args.long_context_rate)


def load_texts(path: Path, max_files: int = 0) -> tuple[list[str], list[str]]:
    texts, languages = [], []
    for record in read_corpus(path):
        texts.append(record["text"])
        languages.append(record["language"])
        if max_files and len(texts) >= max_files:
            break
    return texts, languages


def lr_at(progress: float, step: int, args) -> float:
    """Linear warmup, then cosine from lr to lr * min_lr_ratio over progress 0..1."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return args.lr * (args.min_lr_ratio + (1 - args.min_lr_ratio) * cosine)


def hardware(device: torch.device, world: int) -> str:
    if device.type == "cuda":
        return f"{world}x {torch.cuda.get_device_name(device)}"
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def use_bf16(device: torch.device, precision: str) -> bool:
    """bf16 autocast: on CUDA, and on CPUs with bf16 instructions (about 2x fp32 there)."""
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return True
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def first_text_id(specials) -> int:
    """The lowest id a random (edit-noise) token may take: above every special token."""
    return max(vars(specials).values()) + 1


def infill_pass(model, batch: Batch, noisy: torch.Tensor, rows: torch.Tensor, causal: bool):
    """Logits (N, V) of the canvas rows `rows` (B, C) from one block-masked pass over
    [context; canvas]."""
    ids = torch.cat([batch.context_ids, noisy], 1)  # (B, S+C)
    positions = torch.cat([batch.context_positions, batch.canvas_positions], 1)
    real = torch.cat([batch.context_mask, batch.canvas_mask], 1)
    is_canvas = torch.cat([torch.zeros_like(batch.context_mask),
                           torch.ones_like(batch.canvas_mask)], 1)
    allowed = block_mask(real, is_canvas, causal)
    return model(ids, positions, allowed=allowed,
                 rows=torch.cat([torch.zeros_like(batch.context_mask), rows], 1))


class Corruption:
    """The forward process of one training step: masking (and optional edit noise)."""

    def __init__(self, specials, vocab_size: int, edit_rate: float, edit_share: float,
                 t_min: float = 1e-3, t_max: float = 1.0):
        self.specials = specials
        self.low, self.high = first_text_id(specials), vocab_size
        self.edit_rate, self.edit_share = edit_rate, edit_share
        self.t_min, self.t_max = t_min, t_max

    def noise_level(self, blocks, real):
        """One t per block (block-diffusion batches), within the clipped range."""
        return block_noise_level(blocks, real, eps=self.t_min, t_max=self.t_max)

    def __call__(self, clean, canvas_mask, t=None):
        """(noisy ids, rows with loss, loss weights) for clean canvas ids (B, C)."""
        noisy, masked, t = mask_canvas(clean, canvas_mask, self.specials.mask, t=t,
                                       eps=self.t_min, t_max=self.t_max)
        edited = torch.zeros_like(masked)
        if self.edit_rate:
            noisy, edited = edit_noise(noisy, masked, canvas_mask, self.edit_rate,
                                       self.edit_share, self.low, self.high)
        t_tok = t[:, None].expand_as(clean) if t.dim() == 1 else t
        weights = torch.where(masked, 1.0 / t_tok, torch.ones_like(t_tok))
        return noisy, masked | edited, weights, masked


def infill_step(model, batch: Batch, corrupt: Corruption, causal: bool):
    """Loss of one infill batch and its count of masked real-code tokens."""
    noisy, rows, weights, masked = corrupt(batch.canvas_ids, batch.canvas_mask)
    logits = infill_pass(model, batch, noisy, rows, causal)
    loss = row_loss(logits, batch.canvas_ids, rows, weights, batch.canvas_mask.sum(1))
    content = masked & (batch.canvas_ids != corrupt.specials.end_of_span)
    return loss, int(content.sum())


def block_step(model, batch: BlockBatch, corrupt: Corruption):
    """Loss of one block-diffusion batch (BD3-LM: each block a canvas after its clean prefix,
    all in one pass over [clean; noisy]) and its count of masked tokens."""
    canvas_mask = batch.real & (batch.blocks >= 0)  # never the file token
    t = corrupt.noise_level(batch.blocks, batch.real)
    noisy, rows, weights, masked = corrupt(batch.ids, canvas_mask, t)
    ids = torch.cat([batch.ids, noisy], 1)  # (B, 2N)
    positions = torch.cat([batch.positions, batch.positions], 1)
    allowed = block_diffusion_mask(batch.real, batch.blocks)
    logits = model(ids, positions, allowed=allowed,
                   rows=torch.cat([torch.zeros_like(rows), rows], 1))
    loss = row_loss(logits, batch.ids, rows, weights, canvas_mask.sum(1))
    return loss, int(masked.sum())


class Validator:
    """Fixed validation examples and masks, so successive evaluations are comparable."""

    def __init__(self, maker: ExampleMaker, batches: int, batch_size: int, em_examples: int,
                 seed: int, em_max_steps: int = 8):
        self.em_max_steps = em_max_steps
        rng = random.Random(seed + 12345)
        self.maker = maker
        self.batches = [collate([maker.make(rng) for _ in range(batch_size)],
                                maker.specials.pad) for _ in range(batches)]
        self.em = [maker.make(rng) for _ in range(em_examples)]
        self.seed = seed

    @staticmethod
    def _summed_ce(model, device, autocast, batch: Batch, noisy, rows) -> tuple[float, int]:
        """Summed cross-entropy over the canvas positions `rows` (B, C), and their count."""
        batch, noisy, rows = batch.to(device), noisy.to(device), rows.to(device)
        with autocast:
            logits = infill_pass(model, batch, noisy, rows, model.cfg.causal)
        ce = torch.nn.functional.cross_entropy(logits.float(), batch.canvas_ids[rows],
                                               reduction="sum")
        return float(ce), int(rows.sum())

    @torch.no_grad()
    def loss(self, model, device, autocast) -> float:
        """Mean masked cross-entropy per masked token (unweighted) at random t."""
        gen = torch.Generator(device="cpu").manual_seed(self.seed)
        total, count = 0.0, 0
        specials = self.maker.specials
        for batch in self.batches:
            noisy, masked, _ = mask_canvas(batch.canvas_ids, batch.canvas_mask, specials.mask,
                                           generator=gen)
            ce, n = self._summed_ce(model, device, autocast, batch, noisy, masked)
            total, count = total + ce, count + n
        return total / max(count, 1)

    @torch.no_grad()
    def content_ce(self, model, device, autocast, t: float, context: bool = True) -> float:
        """Cross-entropy on masked *content* tokens (real code, not end-of-span padding) with
        each canvas token masked with probability `t` (fixed masks). Without `context`, the
        context is cut to the file token: the gap shows how much the model uses it."""
        gen = torch.Generator(device="cpu").manual_seed(self.seed + 1)
        specials = self.maker.specials
        total, count = 0.0, 0
        for batch in self.batches:
            t_row = torch.full((batch.canvas_ids.shape[0],), float(t))
            noisy, masked, _ = mask_canvas(batch.canvas_ids, batch.canvas_mask, specials.mask,
                                           generator=gen, t=t_row)
            rows = masked & (batch.canvas_ids != specials.end_of_span)
            if not context:
                batch = Batch(batch.context_ids[:, :1], batch.context_positions[:, :1],
                              batch.context_mask[:, :1], batch.canvas_ids,
                              batch.canvas_positions, batch.canvas_mask)
            ce, n = self._summed_ce(model, device, autocast, batch, noisy, rows)
            total, count = total + ce, count + n
        return total / max(count, 1)

    @torch.no_grad()
    def exact_match(self, model, device, threshold: float = 0.9, chunk: int = 16):
        """(exact-match rate over holes, mean denoiser steps per example) of the server's
        sampler run over the model (on its own device) through the PyTorch runtime."""
        from .torch_denoiser import TorchDenoiser

        return exact_match(TorchDenoiser(model, self.maker.specials), self.em,
                           self.maker.specials, threshold, self.em_max_steps, chunk)


def plot_log(log_path: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    train = [(r["step"], r["loss"]) for r in rows if r.get("kind") == "train"]
    val = [(r["step"], r["val_loss"]) for r in rows if r.get("kind") == "eval"]
    content = [(r["step"], r["content_ce_t015"]) for r in rows
               if r.get("kind") == "eval" and "content_ce_t015" in r]
    if not train:
        return
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(*zip(*train), label="train (1/t-weighted)", alpha=0.6)
    if val:
        ax.plot(*zip(*val), "o-", label="validation (masked CE)")
    if content:
        ax.plot(*zip(*content), "s-", label="validation content CE, t=0.15")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def default_workers(device: torch.device) -> int:
    """One batch-making process per spare core (at most 15); one on a small CPU machine."""
    cores = os.cpu_count() or 1
    if device.type == "cuda":
        return max(1, min(15, cores - 1))
    return 1 if cores >= 2 else 0


class Meter:
    """Throughput over the run: real (non-padding) tokens, tokens under loss, padding, and
    the time the step waited for its batch."""

    def __init__(self):
        self.real = self.loss = self.computed = 0
        self.wait = 0.0

    def add(self, batch, loss_tokens: int, wait: float) -> None:
        self.real += batch.tokens
        self.loss += loss_tokens
        self.computed += int(round(batch.tokens / max(1e-9, 1 - batch.pad_share)))
        self.wait += wait

    def row(self, seconds: float) -> dict:
        seconds = max(seconds, 1e-9)
        return {"real_tokens_per_s": round(self.real / seconds, 1),
                "loss_tokens_per_s": round(self.loss / seconds, 1),
                "pad_share": round(1 - self.real / max(1, self.computed), 4),
                "data_wait_share": round(self.wait / seconds, 4)}


def train(args) -> dict:
    """Run training; returns the final summary (also written to OUT/summary.json)."""
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device:
        device = torch.device(args.device)
    else:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
    if world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    main = rank == 0
    out = Path(args.out)
    if main:
        out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed + rank)

    tokenizer = load_tokenizer(args.tokenizer)
    specials = special_tokens(tokenizer)
    settings = example_settings(args)
    corpus = Path(args.corpus)
    texts, languages = load_texts(corpus / "train.jsonl.zst", args.max_files)
    val_texts, val_languages = load_texts(corpus / "val.jsonl.zst", args.max_files)
    validator = Validator(ExampleMaker(val_texts, val_languages, tokenizer, specials, settings),
                          args.eval_batches, args.batch_size, args.em_examples, args.seed,
                          args.em_max_steps)

    cfg = DenoiserConfig(vocab_size=tokenizer.get_vocab_size(), n_layers=args.n_layers,
                         n_heads=args.n_heads, head_dim=args.head_dim,
                         mlp_hidden=args.mlp_hidden, max_position=args.max_position,
                         context_attention=args.context_attention)
    model = Denoiser(cfg).to(device)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=args.lr, betas=(0.9, 0.95),
                                  fused=device.type == "cuda")
    step, tokens_seen, seconds = 0, 0, 0.0
    resume = out / "last.pt"
    if resume.is_file():
        state = torch.load(resume, map_location=device, weights_only=False)
        if DenoiserConfig.from_dict(state["config"]) != cfg:
            raise SystemExit(f"{resume} holds another model shape: use another --out")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        step, tokens_seen, seconds = state["step"], state["tokens_seen"], state["train_seconds"]
        if main:
            print(f"resumed from {resume} at step {step}")
    runner = torch.compile(model) if args.compile else model
    ddp = (torch.nn.parallel.DistributedDataParallel(
        runner, device_ids=[local_rank] if device.type == "cuda" else None)
        if world > 1 else runner)
    bf16 = use_bf16(device, args.precision)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext())
    workers = default_workers(device) if args.workers < 0 else args.workers
    plan = StreamPlan(batch_size=args.batch_size, block_rate=args.block_rate,
                      block_batch_size=args.block_batch_size, block_tokens=args.block_tokens,
                      block_sizes=tuple(int(b) for b in str(args.block_sizes).split(",")),
                      pool_batches=args.pool_batches, max_pad_share=args.max_pad_share)
    loader = batch_loader(BatchStream(texts, languages, args.tokenizer, specials, settings, plan,
                                      args.seed, rank, step),
                          workers, pin_memory=device.type == "cuda")
    corrupt = Corruption(specials, cfg.vocab_size, args.edit_rate, args.edit_share,
                         args.t_min, args.t_max)
    log_path = out / "log.jsonl"
    hw = hardware(device, world)

    def save(name: str) -> None:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "config": asdict(cfg), "step": step, "tokens_seen": tokens_seen,
                    "train_seconds": seconds, "hardware": hw,
                    # not the subcommand's function: unpickling it would need this __main__
                    "args": {k: v for k, v in vars(args).items() if not callable(v)},
                    "example_settings": asdict(settings),
                    "specials": vars(specials)}, out / f".{name}.tmp")
        # a reader (the GPU recipe's rescue, a snapshot copy) never sees a half-written file
        os.replace(out / f".{name}.tmp", out / name)

    def log(row: dict) -> None:
        with open(log_path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def evaluate() -> dict:
        model.eval()
        val_loss = validator.loss(model, device, autocast)
        content = {f"content_ce_t{name}": round(validator.content_ce(model, device, autocast, t), 4)
                   for name, t in (("015", 0.15), ("1", 1.0))}
        content["content_ce_t015_no_context"] = round(
            validator.content_ce(model, device, autocast, 0.15, context=False), 4)
        em, em_steps = validator.exact_match(model, device)
        model.train()
        row = {"kind": "eval", "step": step, "val_loss": round(val_loss, 4), **content,
               "val_exact_match": round(em, 4), "val_em_steps": round(em_steps, 2),
               "tokens_seen": tokens_seen, "seconds": round(seconds, 1)}
        log(row)
        return row

    if main:
        print(f"model {model.num_params() / 1e6:.2f}M params ({cfg.context_attention} context), "
              f"{len(texts)} train files, {len(val_texts)} val files, device {hw}, world {world}, "
              f"{'bf16' if bf16 else 'fp32'}, {workers} data workers")
    bar = tqdm(total=args.max_steps, initial=step, disable=not main or args.no_progress,
               dynamic_ncols=True)
    last_eval = None
    if main and step == 0:
        bar.write(json.dumps(evaluate()))  # the untrained baseline, for the curve
    started = time.time() - seconds  # evaluation is not training time
    model.train()
    loss_ema = None
    run, window = Meter(), Meter()  # this process's run (resumed runs count from here)
    run_started = window_started = time.time()
    while step < args.max_steps:
        seconds = time.time() - started
        progress = step / args.max_steps
        if args.max_minutes:
            progress = max(progress, seconds / (60 * args.max_minutes))
            stop = torch.tensor(float(progress >= 1.0))
            if world > 1:
                dist.broadcast(stop, 0)
            if stop.item():
                break
        lr = lr_at(progress, step, args)
        for group in optimizer.param_groups:
            group["lr"] = lr
        waited = time.time()
        kind, batch = next(loader)
        batch = batch.to(device)
        waited = time.time() - waited
        with autocast:
            if kind == "blocks":
                loss, loss_tokens = block_step(ddp, batch, corrupt)
            else:
                loss, loss_tokens = infill_step(ddp, batch, corrupt, cfg.causal)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        tokens_seen += batch.tokens * world
        for meter in (run, window):
            meter.add(batch, loss_tokens, waited)
        value = loss.item()
        loss_ema = value if loss_ema is None else 0.95 * loss_ema + 0.05 * value
        if main:
            bar.update(1)
            bar.set_postfix(loss=f"{loss_ema:.3f}", lr=f"{lr:.2e}")
            if step % 10 == 0:
                now = time.time()
                log({"kind": "train", "step": step, "loss": round(value, 4),
                     "loss_ema": round(loss_ema, 4), "lr": lr, "grad_norm": round(float(norm), 3),
                     "tokens_seen": tokens_seen, "seconds": round(now - started, 1),
                     **window.row(now - window_started)})
                window, window_started = Meter(), now
            if step % args.eval_every == 0:
                evaluated = time.time()
                last_eval = evaluate()
                bar.write(json.dumps(last_eval))
                # evaluation is not training: keep it out of the clock and the rates
                paused = time.time() - evaluated
                started += paused
                run_started += paused
                window_started += paused
            if step % args.save_every == 0:
                seconds = time.time() - started
                save("last.pt")
    bar.close()
    seconds = time.time() - started
    rates = run.row(time.time() - run_started)
    summary = {}
    if main:
        if last_eval is None or last_eval["step"] != step:
            last_eval = evaluate()
        save("last.pt")
        plot_log(log_path, out / "loss.png")
        summary = {
            "steps": step, "tokens_seen": tokens_seen, "train_seconds": round(seconds, 1),
            "hardware": hw, "world_size": world, "params": model.num_params(),
            "precision": "bf16" if bf16 else "fp32", "data_workers": workers,
            "context_attention": cfg.context_attention,
            **rates,
            "final_train_loss_ema": round(loss_ema or float("nan"), 4),
            "final_val_loss": last_eval["val_loss"],
            "content_ce": {k[len("content_ce_"):]: v for k, v in last_eval.items()
                           if k.startswith("content_ce_")},
            "val_exact_match": last_eval["val_exact_match"],
            "batch_size": args.batch_size * world, "lr": args.lr,
            "block_rate": args.block_rate, "edit_rate": args.edit_rate,
            "corpus": corpus_stats(corpus), "max_files": args.max_files,
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print(json.dumps({k: v for k, v in summary.items() if k != "corpus"}))
    if world > 1:
        dist.destroy_process_group()
    return summary


def load_checkpoint(path: str | Path, device: str = "cpu") -> tuple[Denoiser, dict]:
    """A trained model (eval mode) and its checkpoint dict."""
    state = torch.load(path, map_location=device, weights_only=False)
    model = Denoiser(DenoiserConfig.from_dict(state["config"]))
    model.load_state_dict(state["model"])
    model.eval()
    return model, state


def main_from_args(args) -> int:
    train(args)
    return 0


def add_validate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoints", nargs="+", help="checkpoints (.pt) to score on one example set")
    p.add_argument("--corpus", default="runs/corpus")
    p.add_argument("--tokenizer", default="runs/tokenizer.json")
    p.add_argument("--max-context", type=int, default=512)
    p.add_argument("--suffix-tokens", type=int, default=128)
    p.add_argument("--long-context-rate", type=float, default=0.1)
    p.add_argument("--buckets", default="16,32,64,128")
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))


def validate_from_args(args) -> int:
    """Score checkpoints on the same validation examples and masks: masked CE, and content_ce
    at t = 0.15 and t = 1 and at t = 0.15 without the context. One JSON line per checkpoint
    (with its training seconds and tokens), so runs of different loops compare fairly."""
    if args.threads:
        torch.set_num_threads(args.threads)
    args.prefix_tokens = 0
    tokenizer = load_tokenizer(args.tokenizer)
    specials = special_tokens(tokenizer)
    texts, languages = load_texts(Path(args.corpus) / "val.jsonl.zst")
    maker = ExampleMaker(texts, languages, tokenizer, specials, example_settings(args))
    validator = Validator(maker, args.batches, args.batch_size, 0, args.seed)
    device = torch.device("cpu")
    bf16 = use_bf16(device, args.precision)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()
    for path in args.checkpoints:
        model, state = load_checkpoint(path)
        row = {"checkpoint": str(path), "step": state["step"],
               "train_seconds": round(state["train_seconds"], 1),
               "tokens_seen": state["tokens_seen"],
               "context_attention": model.cfg.context_attention,
               "val_loss": round(validator.loss(model, device, autocast), 4)}
        for name, t, context in (("t015", 0.15, True), ("t1", 1.0, True),
                                 ("t015_no_context", 0.15, False)):
            row[f"content_ce_{name}"] = round(
                validator.content_ce(model, device, autocast, t, context), 4)
        print(json.dumps(row), flush=True)
    return 0
