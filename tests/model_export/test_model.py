"""The two-graph split (encode once, denoise the canvas) equals one block-masked forward."""

import torch

from model_export.model import Denoiser, DenoiserConfig

CFG = DenoiserConfig(vocab_size=97, n_layers=3, n_heads=2, head_dim=16, mlp_hidden=48)


def _inputs(B=3, S=11, C=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    context = torch.randint(0, CFG.vocab_size, (B, S), generator=g)
    context_mask = torch.ones(B, S, dtype=torch.bool)
    for row in range(1, B):  # right padding
        context_mask[row, S - 3 * row:] = False
    context_positions = torch.arange(S).expand(B, S) * context_mask
    canvas = torch.randint(0, CFG.vocab_size, (B, C), generator=g)
    # the canvas sits inside the text: positions between prefix and suffix, not at the end
    canvas_positions = torch.arange(C).expand(B, C) + 3
    return context, context_positions, context_mask, canvas, canvas_positions


def test_split_equals_block_masked_forward():
    torch.manual_seed(0)
    model = Denoiser(CFG).eval()
    context, ctx_pos, ctx_mask, canvas, can_pos = _inputs()
    B, S = context.shape
    ids = torch.cat([context, canvas], 1)
    positions = torch.cat([ctx_pos, can_pos], 1)
    real = torch.cat([ctx_mask, torch.ones_like(canvas, dtype=torch.bool)], 1)
    is_canvas = torch.cat([torch.zeros_like(ctx_mask), torch.ones_like(canvas, dtype=torch.bool)], 1)
    with torch.no_grad():
        full = model(ids, positions, real, is_canvas, n_context=S)  # (B, C, V)
        keys, values = model.encode(context, ctx_pos, ctx_mask.long())
        split = model.denoise(canvas, can_pos, keys, values, ctx_mask.long())
    assert keys.shape == (CFG.n_layers, B, CFG.n_heads, S, CFG.head_dim)
    diff = (full - split).abs().max().item()
    assert diff < 1e-5, diff


def test_context_keys_do_not_depend_on_canvas():
    torch.manual_seed(1)
    model = Denoiser(CFG).eval()
    context, ctx_pos, ctx_mask, canvas, can_pos = _inputs(seed=1)
    S = context.shape[1]
    with torch.no_grad():
        a = model(torch.cat([context, canvas], 1), torch.cat([ctx_pos, can_pos], 1),
                  torch.cat([ctx_mask, torch.ones_like(canvas, dtype=torch.bool)], 1),
                  torch.cat([torch.zeros_like(ctx_mask), torch.ones_like(canvas, dtype=torch.bool)], 1))
        b = model(torch.cat([context, canvas.flip(1)], 1), torch.cat([ctx_pos, can_pos], 1),
                  torch.cat([ctx_mask, torch.ones_like(canvas, dtype=torch.bool)], 1),
                  torch.cat([torch.zeros_like(ctx_mask), torch.ones_like(canvas, dtype=torch.bool)], 1))
    real = ctx_mask[..., None]
    assert torch.equal((a[:, :S] * real), (b[:, :S] * real))


def test_padded_canvas_is_ignored():
    """A canvas padded in a training batch gives the same logits on its real positions."""
    torch.manual_seed(2)
    model = Denoiser(CFG).eval()
    context, ctx_pos, ctx_mask, canvas, can_pos = _inputs(B=1, seed=2)
    with torch.no_grad():
        keys, values = model.encode(context, ctx_pos, ctx_mask.long())
        plain = model.denoise(canvas, can_pos, keys, values, ctx_mask.long())
        padded_ids = torch.cat([canvas, torch.zeros(1, 5, dtype=torch.long)], 1)
        padded_pos = torch.cat([can_pos, torch.zeros(1, 5, dtype=torch.long)], 1)
        canvas_mask = torch.cat([torch.ones(1, 7, dtype=torch.bool), torch.zeros(1, 5, dtype=torch.bool)], 1)
        padded = model.denoise(padded_ids, padded_pos, keys, values, ctx_mask.long(), canvas_mask)
    assert (plain - padded[:, :7]).abs().max().item() < 1e-5
