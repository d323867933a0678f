"""Train the DFlash drafter (model_export/drafter.py) on the frozen target: `train-drafter`.

One step:

1. windows of the corpus's TRAIN split (a random stretch of `--window` tokens of a file, files
   in a seeded order; validation files never come here);
2. the target reads them causally in bf16 without gradients and hands over the residual
   streams of `--layers` (the drafter's context) and its last block's;
3. `--blocks-per-window` random anchors per window (the paper's recipe: many blocks per
   sequence, one pass); each block is `[anchor, mask x B-1]`, seeing the window's positions
   before its anchor;
4. labels: with `--labels greedy` (default) the target's own greedy next token at each block
   position given the text before it (its teacher-forced argmax, from the states of step 2:
   one head product per label, no extra pass); `--labels text` takes the text's next tokens.
   Acceptance is the target's greedy tokens, so greedy labels teach what is checked; they
   differ from the text where the text leaves the target's greedy path;
5. cross-entropy weighted toward the block's first positions, w_k = exp(-(k-1)/gamma): a
   guess after a wrong one is never accepted;
6. AdamW on the drafter's parameters only, under bf16 autocast.

Resumable: `--out/last.pt` (drafter, optimizer, step, tokens, RNG states, data position) every
`--checkpoint-minutes` and on SIGTERM/SIGINT; `--resume` goes on from it. Validation tau (tokens
per target call of the speculative loop, `model_export.speculative`) on cursors of VALIDATION
files at the start and at every checkpoint, for the drafter, prompt lookup alone and the two
combined; the curve goes to `--out/curve.jsonl`, the step log to `--out/log.jsonl`.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dlm_lsp.draft import PromptLookup

from .corpus import read_corpus
from .drafter import Drafter, DrafterConfig
from .model import Denoiser, DenoiserConfig, block_mask
from .speculative import (GreedyReference, TargetSession, confident_drafter_else_lookup,
                          drafter_proposer, greedy_reference, lookup_then, replay,
                          tokens_per_call)

def load_target(path: Path, dtype=torch.bfloat16) -> Denoiser:
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    target = Denoiser(DenoiserConfig.from_dict(checkpoint["config"]))
    target.load_state_dict(checkpoint["model"])
    return target.to(dtype).eval().requires_grad_(False)


def position_weights(block_size: int, gamma: float) -> torch.Tensor:
    """w_k = exp(-(k-1)/gamma) for the guessed positions k = 1..B-1, (B-1,)."""
    k = torch.arange(1, block_size, dtype=torch.float32)
    return torch.exp(-(k - 1) / gamma)


class TrainWindows:
    """Stretches of training files, in a seeded order that a checkpoint can resume: `state()`
    is the order's seed, the position in it and the RNG that cuts windows."""

    def __init__(self, texts: list[str], encode, window: int, min_tokens: int, seed: int):
        self.texts, self.encode = texts, encode
        self.window, self.min_tokens = window, min_tokens
        self.seed, self.epoch, self.position = seed, 0, 0
        self.rng = random.Random(seed)
        self._order()

    def _order(self):
        order = list(range(len(self.texts)))
        random.Random(self.seed * 1000 + self.epoch).shuffle(order)
        self.order = order

    def state(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position,
                "rng": self.rng.getstate()}

    def load_state(self, state: dict) -> None:
        self.seed, self.epoch, self.position = state["seed"], state["epoch"], state["position"]
        self.rng.setstate(_tuples(state["rng"]))
        self._order()

    def next(self) -> list[int]:
        while True:
            if self.position >= len(self.order):
                self.epoch, self.position = self.epoch + 1, 0
                self._order()
            text = self.texts[self.order[self.position]]
            self.position += 1
            # a stretch of ~6 characters per token from a random line start (no need to
            # tokenize a whole 200 kB file for 512 tokens)
            span = self.window * 6
            start = 0
            if len(text) > span:
                start = self.rng.randrange(len(text) - span)
                newline = text.find("\n", start)
                start = newline + 1 if newline >= 0 else start
            ids = self.encode(text[start : start + span])[: self.window]
            if len(ids) >= self.min_tokens:
                return ids


def _tuples(value):
    """JSON/pickle round trips turn random.getstate()'s tuples into lists."""
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


def sample_anchors(lengths: list[int], count: int, block_size: int, min_context: int,
                   generator: torch.Generator) -> torch.Tensor:
    """(B, count) anchor positions: each row's anchors drawn without replacement from
    [min_context, length - block_size] (so every label of the block lies in the window)."""
    rows = []
    for length in lengths:
        low, high = min_context, length - block_size
        span = high - low + 1
        pick = torch.randperm(span, generator=generator)[:count] + low
        if len(pick) < count:  # a short window: repeat anchors rather than pad
            pick = pick[torch.arange(count) % len(pick)]
        rows.append(pick)
    return torch.stack(rows)


def block_labels(ids: torch.Tensor, final: torch.Tensor | None, anchors: torch.Tensor,
                 block_size: int, target: Denoiser) -> torch.Tensor:
    """(B, N, L-1) labels of block positions 1..L-1: the text's tokens after the anchor, or,
    with the target's last-block states `final` (B, T, d), its greedy next token at each of
    them given the text before (the target's output at position p predicts p+1)."""
    k = torch.arange(1, block_size)
    at = anchors[:, :, None] + k  # (B, N, L-1) text positions guessed
    if final is None:
        return torch.gather(ids, 1, at.flatten(1)).view_as(at)
    before = (at - 1).flatten(1)  # the position whose output predicts each label
    states = torch.gather(final, 1, before[:, :, None].expand(-1, -1, final.shape[-1]))
    return target.logits(states).argmax(-1).view_as(at)


class Trainer:
    def __init__(self, args, target: Denoiser, drafter: Drafter, windows: TrainWindows,
                 references: list[GreedyReference], out: Path):
        self.args, self.target, self.drafter = args, target, drafter
        self.windows, self.references, self.out = windows, references, out
        self.layers = drafter.cfg.target_layers
        self.optimizer = torch.optim.AdamW(drafter.parameters(), lr=args.lr,
                                           weight_decay=args.weight_decay, betas=(0.9, 0.95))
        self.device = target.embed.weight.device
        self.weights = position_weights(drafter.cfg.block_size, args.gamma).to(self.device)
        self.generator = torch.Generator().manual_seed(args.seed)
        self.step = self.tokens = self.blocks = 0
        self.train_seconds = 0.0
        self.stop = False

    # ---- checkpoints -------------------------------------------------------------------
    def save(self, path: Path) -> None:
        state = {
            "drafter": self.drafter.state_dict(), "config": self.drafter.cfg.to_dict(),
            "optimizer": self.optimizer.state_dict(), "step": self.step,
            "tokens_seen": self.tokens, "blocks_seen": self.blocks,
            "train_seconds": self.train_seconds, "data": self.windows.state(),
            "rng": {"torch": torch.get_rng_state(), "generator": self.generator.get_state()},
            "target": str(self.args.target), "labels": self.args.labels,
            "args": {k: v for k, v in vars(self.args).items() if k != "func"},
        }
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(path)

    def load(self, path: Path) -> None:
        state = torch.load(path, map_location="cpu", weights_only=False)
        self.drafter.load_state_dict(state["drafter"])  # (onto the drafter's device)
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.tokens = state["step"], state["tokens_seen"]
        self.blocks, self.train_seconds = state["blocks_seen"], state["train_seconds"]
        self.windows.load_state(state["data"])
        torch.set_rng_state(state["rng"]["torch"])
        self.generator.set_state(state["rng"]["generator"])

    # ---- one step ----------------------------------------------------------------------
    def lr(self) -> float:
        warmup = self.args.warmup
        return self.args.lr * min(1.0, (self.step + 1) / warmup) if warmup else self.args.lr

    def train_step(self) -> dict:
        args, target, drafter = self.args, self.target, self.drafter
        L = drafter.cfg.block_size
        rows = [self.windows.next() for _ in range(args.windows_per_step)]
        lengths = [len(r) for r in rows]
        T = max(lengths)
        device = self.device
        ids = torch.tensor([r + [0] * (T - len(r)) for r in rows], device=device)  # (B, T)
        real = torch.tensor([[i < n for i in range(T)] for n in lengths], device=device)
        positions = torch.arange(T, device=device).expand(len(rows), T)
        with torch.no_grad():
            wanted = list(self.layers) + ([target.cfg.n_layers] if args.labels == "greedy" else [])
            allowed = block_mask(real, torch.zeros_like(real), causal=True)
            states = target.layer_states(ids, positions, allowed, wanted)
            context = torch.cat(states[: len(self.layers)], dim=-1)  # (B, T, K·d) bf16
            anchors = sample_anchors(lengths, args.blocks_per_window, L, args.min_context,
                                     self.generator).to(device)  # (B, N)
            final = states[-1] if args.labels == "greedy" else None
            labels = block_labels(ids, final, anchors, L, target)  # (B, N, L-1)
            text = block_labels(ids, None, anchors, L, target)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            fused = drafter.fuse([context])
            logits = drafter(target, torch.gather(ids, 1, anchors), anchors, fused, positions,
                             real)  # (B, N, L-1, V)
        ce = F.cross_entropy(logits.float().flatten(0, 2), labels.flatten(),
                             reduction="none").view_as(labels)  # (B, N, L-1)
        loss = (ce * self.weights).sum(-1).mean() / self.weights.sum()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(drafter.parameters(), args.clip)
        self.optimizer.step()
        with torch.no_grad():
            right = logits.argmax(-1) == labels  # (B, N, L-1)
            accepted = right.long().cumprod(-1).sum(-1).float()  # guesses before the first miss
        self.step += 1
        self.tokens += sum(lengths)
        self.blocks += anchors.numel()
        return {"loss": loss.item(), "acc1": right[..., 0].float().mean().item(),
                "accepted": accepted.mean().item(), "grad_norm": float(grad_norm),
                "greedy_is_text": (labels == text).float().mean().item(),
                "tokens": sum(lengths)}

    # ---- validation --------------------------------------------------------------------
    def evaluate(self) -> dict:
        self.drafter.eval()
        started = time.time()
        taus = evaluate_tau(self.target, self.drafter, self.references)
        self.drafter.train()
        return {**taus, "eval_seconds": round(time.time() - started, 1)}

    def record_curve(self, recent_loss: float | None) -> None:
        point = {"minutes": round(self.train_seconds / 60, 2), "step": self.step,
                 "tokens_seen": self.tokens, "blocks_seen": self.blocks,
                 "recent_loss": recent_loss, **self.evaluate(),
                 "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        _log(self.out / "curve.jsonl", point)
        print("curve " + json.dumps(point), flush=True)


def evaluate_tau(target: Denoiser, drafter: Drafter, references: list[GreedyReference],
                 draft_length: int | None = None) -> dict:
    """Mean tokens per target call over the cursors' greedy references (`replay`) for: the
    drafter, prompt lookup alone, lookup-then-drafter (lookup when it matches >= 2 tokens,
    else the drafter), and confident-drafter-else-lookup (the drafter when its first guess
    is >= 0.5 probable, else lookup if it has a draft). Drafts are block_size-1 long."""
    draft_length = draft_length or drafter.cfg.block_size - 1
    lookup = PromptLookup()
    drafter_propose = drafter_proposer(drafter)
    proposers = {
        "drafter": drafter_propose,
        "lookup": lambda session, history, length: lookup.draft(history, length),
        "lookup_then_drafter": lookup_then(lookup, drafter_propose),
        "confident_drafter_else_lookup": confident_drafter_else_lookup(drafter_propose, lookup),
    }
    results = {name: [replay(reference, propose, draft_length) for reference in references]
               for name, propose in proposers.items()}
    out = {f"tau_{name}": round(tokens_per_call(r), 3) for name, r in results.items()}
    out["accept_rate_drafter"] = round(sum(d.accepted for d in results["drafter"]) /
                                       max(1, sum(d.drafted for d in results["drafter"])), 3)
    out["cursors"] = len(references)
    out["new_tokens"] = len(references[0].continuation) if references else 0
    return out


def greedy_references(target: Denoiser, cursors: list[list[int]], n_new: int,
                      layers: list[int], cache: Path | None = None,
                      tag: str = "") -> list[GreedyReference]:
    """The target's greedy continuations of the validation cursors with its states (the
    drafter's context), computed once and kept in `cache` (they depend on the target, the
    cursors and the layers only, never on the drafter; `tag` names the target)."""
    key = {"cursors": cursors, "n_new": n_new, "layers": list(layers), "tag": tag}
    if cache is not None and cache.is_file():
        saved = torch.load(cache, map_location="cpu", weights_only=False)
        if saved["key"] == key:
            references = []
            for prompt, continuation, states in saved["references"]:
                session = TargetSession(target, layers)
                session.states, session.length = states.to(target.embed.weight.device), \
                    states.shape[1]
                references.append(GreedyReference(prompt, continuation, session))
            return references
    references = [greedy_reference(target, prompt, n_new, layers) for prompt in cursors]
    if cache is not None:
        torch.save({"key": key, "references": [(r.prompt, r.continuation, r.session.states.cpu())
                                               for r in references]}, cache)
    return references


def validation_cursors(texts: list[str], encode, count: int, prefix_tokens: int,
                       n_new: int, seed: int) -> list[list[int]]:
    """Prompts cut from validation files: the text up to the start of a body line (after its
    indentation, as after pressing Enter), its last `prefix_tokens` tokens; one cursor per
    file, files and lines chosen by `seed`, each with at least `n_new` tokens after it."""
    rng = random.Random(seed)
    order = list(range(len(texts)))
    rng.shuffle(order)
    cursors = []
    for index in order:
        text = texts[index]
        starts, offset = [], 0
        for line in text.splitlines(keepends=True):
            stripped = line.lstrip(" \t")
            if line[:1] in " \t" and stripped.strip() and not stripped.startswith("#"):
                starts.append(offset + len(line) - len(stripped))
            offset += len(line)
        starts = [s for s in starts if s > 4 * prefix_tokens and len(text) - s > 8 * n_new]
        if not starts:
            continue
        cut = rng.choice(starts)
        cursors.append(encode(text[:cut])[-prefix_tokens:])
        if len(cursors) == count:
            break
    return cursors


CURVE_COLUMNS = ("tau_drafter", "tau_lookup", "tau_lookup_then_drafter",
                 "tau_confident_drafter_else_lookup", "accept_rate_drafter")


def curve_table(points: list[dict]) -> str:
    """The curve (curve.jsonl's records) as a markdown table for model_export/README.md."""
    head = ["train min", "step", "tokens", "loss", "drafter", "lookup", "lookup→drafter",
            "confident→lookup", "drafts accepted"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for p in points:
        loss = "–" if p.get("recent_loss") is None else f"{p['recent_loss']:.2f}"
        cells = [f"{p['minutes']:.1f}", str(p["step"]), f"{p['tokens_seen']:,}", loss]
        cells += [f"{p[c]:.3f}" if c != "accept_rate_drafter" else f"{p[c]:.1%}"
                  for c in CURVE_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _log(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def add_train_drafter_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default="runs/smollm2/base.pt", help="the imported target")
    p.add_argument("--tokenizer", default="runs/smollm2/tokenizer.json")
    p.add_argument("--corpus", default="runs/corpus")
    p.add_argument("--out", default="runs/drafter")
    p.add_argument("--resume", action="store_true", help="go on from --out/last.pt")
    p.add_argument("--layers", default="2,15,29",
                   help="target layers read (0: embedding, N: after block N), shallow to deep")
    p.add_argument("--n-layers", type=int, default=1, help="drafter layers")
    p.add_argument("--block-size", type=int, default=8)
    p.add_argument("--window", type=int, default=512, help="tokens per training window")
    p.add_argument("--min-context", type=int, default=16, help="context before an anchor")
    p.add_argument("--windows-per-step", type=int, default=2)
    p.add_argument("--blocks-per-window", type=int, default=16)
    p.add_argument("--labels", choices=("greedy", "text"), default="greedy")
    p.add_argument("--gamma", type=float, default=4.0, help="loss decay over block positions")
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--checkpoint-minutes", type=float, default=10.0)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--max-minutes", type=float, default=0, help="stop after (0: never)")
    p.add_argument("--max-steps", type=int, default=0, help="stop after (0: never)")
    p.add_argument("--eval-cursors", type=int, default=48)
    p.add_argument("--eval-prefix", type=int, default=480, help="prompt tokens per cursor")
    p.add_argument("--eval-tokens", type=int, default=48, help="greedy tokens per cursor")
    p.add_argument("--no-eval", action="store_true", help="no validation tau")
    p.add_argument("--curve", action="store_true",
                   help="print --out/curve.jsonl as a markdown table and stop")
    p.add_argument("--eval-only", action="store_true",
                   help="only the validation tau of --out/last.pt (or the untrained drafter)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu, or cuda on a lent GPU (untried there)")
    p.add_argument("--seed", type=int, default=0)


def train_drafter(args) -> dict:
    if args.curve:
        path = Path(args.out) / "curve.jsonl"
        print(curve_table([json.loads(line) for line in open(path) if line.strip()]))
        return {}
    torch.set_num_threads(args.threads)
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(args.tokenizer))

    def encode(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False).ids

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    target = load_target(Path(args.target)).to(args.device)
    layers = [int(x) for x in str(args.layers).split(",")]
    torch.manual_seed(args.seed)
    drafter = Drafter.for_target(target, target_layers=layers, n_layers=args.n_layers,
                                 block_size=args.block_size).to(args.device)
    corpus = Path(args.corpus)
    val_texts = [r["text"] for r in read_corpus(corpus / "val.jsonl.zst")]
    cursors = validation_cursors(val_texts, encode, args.eval_cursors, args.eval_prefix,
                                 args.eval_tokens, args.seed)
    references = [] if args.no_eval else greedy_references(
        target, cursors, args.eval_tokens, layers, out / "eval_references.pt", str(args.target))
    train_texts = [] if args.eval_only else \
        [r["text"] for r in read_corpus(corpus / "train.jsonl.zst")]
    windows = TrainWindows(train_texts, encode, args.window,
                           args.min_context + args.block_size + 1, args.seed)
    trainer = Trainer(args, target, drafter, windows, references, out)
    last = out / "last.pt"
    if args.resume and last.is_file():
        trainer.load(last)
        print(f"resumed from {last} at step {trainer.step}, {trainer.tokens} tokens, "
              f"{trainer.train_seconds / 60:.1f} min", flush=True)
    elif args.resume and not args.eval_only:
        print(f"nothing to resume at {last}: starting", flush=True)
    params = drafter.num_params()
    print(json.dumps({"drafter_params": params, "fp16_mb": round(params * 2 / 1e6, 2),
                      "layers": layers, "train_files": len(train_texts),
                      "val_cursors": len(cursors)}), flush=True)
    if args.eval_only:
        taus = trainer.evaluate()
        print(json.dumps(taus), flush=True)
        return taus

    def stop(signum, frame):
        trainer.stop = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if trainer.step == 0 and not args.no_eval:
        trainer.record_curve(None)
    drafter.train()
    session_start = time.time()
    last_checkpoint = time.time()
    recent: list[dict] = []
    recent_loss = None
    while not trainer.stop:
        started = time.time()
        metrics = trainer.train_step()
        trainer.train_seconds += time.time() - started
        recent.append({**metrics, "seconds": time.time() - started})
        if trainer.step % args.log_every == 0:
            seconds = sum(m["seconds"] for m in recent)
            record = {"step": trainer.step, "tokens_seen": trainer.tokens,
                      "minutes": round(trainer.train_seconds / 60, 2),
                      "tokens_per_s": round(sum(m["tokens"] for m in recent) / seconds, 1),
                      "lr": trainer.lr(),
                      **{k: round(sum(m[k] for m in recent) / len(recent), 4)
                         for k in ("loss", "acc1", "accepted", "grad_norm", "greedy_is_text")}}
            _log(out / "log.jsonl", record)
            print(json.dumps(record), flush=True)
            recent_loss = record["loss"]
            recent = []
        done = (args.max_steps and trainer.step >= args.max_steps) or \
            (args.max_minutes and time.time() - session_start >= args.max_minutes * 60)
        if done or trainer.stop or time.time() - last_checkpoint >= args.checkpoint_minutes * 60:
            trainer.save(last)
            print(f"checkpoint {last} at step {trainer.step}", flush=True)
            if not args.no_eval and not trainer.stop:
                trainer.record_curve(recent_loss)
            last_checkpoint = time.time()
        if done:
            break
    return {"step": trainer.step, "tokens_seen": trainer.tokens}


def main_from_args(args) -> int:
    train_drafter(args)
    return 0


__all__ = ["TrainWindows", "Trainer", "add_train_drafter_arguments", "block_labels",
           "curve_table",
           "evaluate_tau", "load_target", "position_weights", "sample_anchors",
           "train_drafter", "validation_cursors"]


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    add_train_drafter_arguments(parser)
    sys.exit(main_from_args(parser.parse_args()))
