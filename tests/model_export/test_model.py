"""The two-graph split (encode once, denoise the canvas) equals one block-masked forward."""

import pytest
import torch

from model_export.model import Denoiser, DenoiserConfig, block_mask

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


CAUSAL = DenoiserConfig(vocab_size=97, n_layers=3, n_heads=2, head_dim=16, mlp_hidden=48,
                        context_attention="causal")
BIDIRECTIONAL = DenoiserConfig(vocab_size=97, n_layers=3, n_heads=2, head_dim=16, mlp_hidden=48,
                               context_attention="bidirectional")


def _split_diff(cfg, seed):
    torch.manual_seed(seed)
    model = Denoiser(cfg).eval()
    context, ctx_pos, ctx_mask, canvas, can_pos = _inputs(seed=seed)
    S = context.shape[1]
    ids = torch.cat([context, canvas], 1)
    positions = torch.cat([ctx_pos, can_pos], 1)
    real = torch.cat([ctx_mask, torch.ones_like(canvas, dtype=torch.bool)], 1)
    is_canvas = torch.cat([torch.zeros_like(ctx_mask), torch.ones_like(canvas, dtype=torch.bool)], 1)
    with torch.no_grad():
        full = model(ids, positions, real, is_canvas, n_context=S)
        keys, values = model.encode(context, ctx_pos, ctx_mask.long())
        split = model.denoise(canvas, can_pos, keys, values, ctx_mask.long())
    return (full - split).abs().max().item()


def test_split_equals_forward_for_both_context_attentions():
    assert _split_diff(CAUSAL, 3) < 1e-5
    assert _split_diff(BIDIRECTIONAL, 4) < 1e-5


def test_causal_context_keys_ignore_later_tokens():
    torch.manual_seed(5)
    model = Denoiser(CAUSAL).eval()
    context, ctx_pos, ctx_mask, _, _ = _inputs(B=1, seed=5)
    changed = context.clone()
    changed[0, 7:] = (changed[0, 7:] + 1) % CAUSAL.vocab_size
    with torch.no_grad():
        a, _ = model.encode(context, ctx_pos, ctx_mask.long())
        b, _ = model.encode(changed, ctx_pos, ctx_mask.long())
    assert torch.equal(a[..., :7, :], b[..., :7, :])
    assert not torch.equal(a[..., 7:, :], b[..., 7:, :])


def test_incremental_encoding_equals_one_call():
    """Encoding a causal context in pieces at random split points equals encoding it whole,
    and the decoder's argmax over either is the same."""
    torch.manual_seed(6)
    model = Denoiser(CAUSAL).eval()
    g = torch.Generator().manual_seed(6)
    S = 40
    context = torch.randint(0, CAUSAL.vocab_size, (1, S), generator=g)
    positions = torch.arange(S)[None]
    mask = torch.ones(1, S, dtype=torch.long)
    canvas = torch.randint(0, CAUSAL.vocab_size, (1, 9), generator=g)
    canvas_positions = torch.arange(S, S + 9)[None]
    with torch.no_grad():
        whole_k, whole_v = model.encode(context, positions, mask)
        for trial in range(5):
            cuts = sorted(torch.randperm(S - 1, generator=g)[: 1 + trial].add(1).tolist())
            keys = values = None
            for start, end in zip([0] + cuts, cuts + [S]):
                past_mask = None if keys is None else torch.ones(1, keys.shape[3])
                k, v = model.encode(context[:, start:end], positions[:, start:end],
                                    mask[:, start:end], keys, values, past_mask)
                keys = k if keys is None else torch.cat([keys, k], dim=3)
                values = v if values is None else torch.cat([values, v], dim=3)
            assert (keys - whole_k).abs().max().item() < 1e-5
            assert (values - whole_v).abs().max().item() < 1e-5
            a = model.denoise(canvas, canvas_positions, keys, values, mask).argmax(-1)
            b = model.denoise(canvas, canvas_positions, whole_k, whole_v, mask).argmax(-1)
            assert torch.equal(a, b)


def test_block_diffusion_pass_equals_prefix_requests():
    """One BD3-LM pass over [clean; noisy] gives each block the logits the server would get
    for that block as a canvas after its prefix (context = file of clean tokens before it)."""
    from model_export.model import block_diffusion_mask

    torch.manual_seed(7)
    model = Denoiser(CAUSAL).eval()
    g = torch.Generator().manual_seed(7)
    N, size = 24, 8
    clean = torch.randint(0, CAUSAL.vocab_size, (1, N), generator=g)
    noisy = torch.where(torch.rand(1, N, generator=g) < 0.5, 1, clean)
    positions = torch.arange(N)[None]
    block = positions // size
    real = torch.ones(1, N, dtype=torch.bool)
    allowed = block_diffusion_mask(real, block)
    rows = torch.cat([torch.zeros(1, N, dtype=torch.bool), real], 1)
    with torch.no_grad():
        logits = model(torch.cat([clean, noisy], 1), torch.cat([positions, positions], 1),
                       allowed=allowed, rows=rows)
        for b in range(1, N // size):
            start, end = b * size, (b + 1) * size
            keys, values = model.encode(clean[:, :start], positions[:, :start],
                                        real[:, :start].long())
            want = model.denoise(noisy[:, start:end], positions[:, start:end], keys, values,
                                 real[:, :start].long())
            assert (logits[start:end] - want[0]).abs().max().item() < 1e-5


def test_layer_states_are_the_passes_intermediate_states():
    """`layer_states` returns the embedding (0), the stream after chosen blocks, and, for the
    last block, what `hidden` returns; asking for shallow layers does not change them."""
    torch.manual_seed(0)
    model = Denoiser(CFG).eval()
    context, ctx_pos, ctx_mask, _, _ = _inputs()
    allowed = block_mask(ctx_mask, torch.zeros_like(ctx_mask), causal=True)
    with torch.no_grad():
        embedding, first, last = model.layer_states(context, ctx_pos, allowed, [0, 1, 3])
        (first_alone,) = model.layer_states(context, ctx_pos, allowed, [1])
        final = model.hidden(context, ctx_pos, allowed)
    assert torch.equal(embedding, model.embed(context))
    assert torch.equal(first, first_alone)
    assert torch.equal(last, final)
    assert not torch.allclose(first, last)
    with pytest.raises(ValueError):
        model.layer_states(context, ctx_pos, allowed, [CFG.n_layers + 1])
