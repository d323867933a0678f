"""A simple parallel sampler in PyTorch, for validation exact-match during training/export.

The server's sampler (`dlm_lsp.sampler`) is the real one; this is the same idea, vectorised over
a batch: start from an all-mask canvas, each step predict every masked position and commit those
whose probability reaches `threshold`, at least the most confident one per row (LLaDA's
confidence-based low-confidence remasking, without remasking).
"""

from __future__ import annotations

import torch

from dlm_lsp.modelcard import SpecialTokens

from .data import Batch


def banned_ids(specials: SpecialTokens) -> list[int]:
    """Tokens a canvas must never contain: mask, pad and file."""
    return [specials.mask, specials.pad, specials.file]


@torch.no_grad()
def infill(model, batch: Batch, specials: SpecialTokens, threshold: float = 0.9,
           max_steps: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fill every canvas of the batch. Returns (canvas ids (B, C), steps per row (B,))."""
    keys, values = model.encode(batch.context_ids, batch.context_positions, batch.context_mask)
    canvas = torch.where(batch.canvas_mask, specials.mask, specials.pad)  # (B, C)
    steps = torch.zeros(canvas.shape[0], dtype=torch.long, device=canvas.device)
    banned = torch.tensor(banned_ids(specials), device=canvas.device)
    limit = max_steps or canvas.shape[1]
    for _ in range(limit):
        masked = (canvas == specials.mask) & batch.canvas_mask  # (B, C)
        active = masked.any(1)  # (B,)
        if not active.any():
            break
        logits = model.denoise(canvas, batch.canvas_positions, keys, values, batch.context_mask,
                               batch.canvas_mask).float()
        logits[..., banned] = float("-inf")
        conf, pred = logits.softmax(-1).max(-1)  # (B, C)
        conf = torch.where(masked, conf, torch.full_like(conf, -1.0))
        commit = masked & (conf >= threshold)
        best = conf.argmax(1)  # (B,)
        rows = torch.arange(canvas.shape[0], device=canvas.device)
        commit[rows, best] |= masked[rows, best]
        canvas = torch.where(commit, pred, canvas)
        steps += active.long()
    # anything still masked after max_steps: take the last prediction
    still = (canvas == specials.mask) & batch.canvas_mask
    if still.any():
        logits = model.denoise(canvas, batch.canvas_positions, keys, values, batch.context_mask,
                               batch.canvas_mask).float()
        logits[..., banned] = float("-inf")
        canvas = torch.where(still, logits.argmax(-1), canvas)
    return canvas, steps


def until_end(ids: list[int], end_of_span: int) -> list[int]:
    """A canvas as text tokens: everything before the first end-of-span."""
    return ids[: ids.index(end_of_span)] if end_of_span in ids else ids


def exact_matches(canvas: torch.Tensor, examples, end_of_span: int) -> tuple[int, int]:
    """(holes filled exactly, holes) for a batch of filled canvases and their examples."""
    hits = total = 0
    rows = canvas.tolist()
    for row, example in zip(rows, examples):
        for start, length in example.holes:
            got = until_end(row[start: start + length], end_of_span)
            want = until_end(example.canvas_ids[start: start + length], end_of_span)
            hits += got == want
            total += 1
    return hits, total
