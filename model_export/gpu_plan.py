"""What the GPU recipe's steps share: where the repository and each step's files are, and the
training plans (`model_export train` flags) with the two helpers that edit and spell them.

gpu.py (the steps there), gpu_here.py (the steps here) and gpu_checks.py (data rate, rehearsal)
all read these; this module imports none of them.
"""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# `model_export train` flags of the H200 run (`train --set KEY=VALUE` changes one). About
# 17 M parameters (8 x 384, MLP 1024, vocab 8192), causal context (model format 2), bf16,
# compiled, 15 data workers; half the steps block-diffusion batches (BD3-LM, ~half the tokens
# under loss), the other half infill batches shaped like the server's requests.
# lr: on this CPU (4 K-token batches) 5e-4 left the unigram plateau in ~500 steps where 2e-3 had
# not in 1,350; the H200's batches are ~9x larger, which tolerates more: 1e-3, not yet run there.
GPU_PLAN = {
    "n_layers": 8, "n_heads": 6, "head_dim": 64, "mlp_hidden": 1024,
    "max_context": 1024, "max_position": 2048, "suffix_tokens": 128, "long_context_rate": 0.1,
    "batch_size": 256, "block_rate": 0.5, "block_batch_size": 32, "block_tokens": 512,
    "block_sizes": "16,32,64", "edit_rate": 0.0,
    "lr": 1e-3, "warmup": 300, "max_minutes": 15, "max_steps": 10_000_000,
    "eval_every": 3000, "eval_batches": 4, "em_examples": 32, "save_every": 1000,
    "workers": 15, "precision": "bf16", "compile": True, "context_attention": "causal",
}
# The rehearsal on a CPU: same flags, a tiny model, a one-minute time box.
REHEARSAL_PLAN = {
    **GPU_PLAN,
    "n_layers": 2, "n_heads": 2, "head_dim": 16, "mlp_hidden": 64,
    "max_context": 128, "max_position": 256, "suffix_tokens": 32,
    "batch_size": 16, "block_batch_size": 4, "block_tokens": 64, "block_sizes": "16,32",
    "warmup": 10, "max_minutes": 1, "eval_every": 100, "eval_batches": 1, "em_examples": 4,
    "save_every": 20, "workers": 1, "precision": "auto", "compile": False, "threads": 1,
}
PLANS = {"gpu": GPU_PLAN, "rehearsal": REHEARSAL_PLAN}


def paths(work: Path) -> dict[str, Path]:
    """Where each step keeps its files under WORK."""
    return {"site": work / "site", "corpus": work / "corpus", "tokenizer": work / "tokenizer.json",
            "run": work / "run", "export": work / "export", "outbox": work / "outbox",
            "rescue": work / "rescue", "plan": work / "train_plan.json",
            "pid": work / "train.pid", "train_out": work / "train.out", "logs": work / "logs"}


def plan_flags(plan: dict) -> list[str]:
    """`model_export train` flags of a plan: key_name → --key-name; True → a bare flag."""
    flags = []
    for key, value in plan.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif value is not False and value is not None:
            flags += [flag, str(value)]
    return flags


def parse_sets(base: dict, sets: list[str]) -> dict:
    """The plan with each KEY=VALUE applied (VALUE read as JSON when it parses)."""
    plan = dict(base)
    for item in sets:
        key, _, value = item.partition("=")
        key = key.strip().replace("-", "_")
        try:
            plan[key] = json.loads(value)
        except json.JSONDecodeError:
            plan[key] = value
    return plan
