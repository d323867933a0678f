"""A segment encoded on its own and moved by rotation equals the segment encoded in place:
the property the FIM layout's cached suffix rests on."""

import numpy as np
import torch

from dlm_lsp.rope import rotate_keys
from model_export.model import Denoiser, DenoiserConfig


def test_a_self_attending_segment_moves_by_rotation_alone():
    torch.manual_seed(0)
    cfg = DenoiserConfig(vocab_size=100, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16,
                         mlp_hidden=32, rope_base=10000.0)
    model = Denoiser(cfg).eval()
    ids = torch.randint(4, 100, (1, 12))
    mask = torch.ones(1, 12, dtype=torch.long)
    with torch.no_grad():
        at_zero = model.encode(ids, torch.arange(12)[None], mask)
        at_37 = model.encode(ids, torch.arange(37, 49)[None], mask)
    moved = rotate_keys(at_zero[0].numpy(), 37, cfg.rope_base)
    assert np.abs(moved - at_37[0].numpy()).max() < 1e-4
    assert np.abs(at_zero[1].numpy() - at_37[1].numpy()).max() < 1e-4  # values do not move
    back = rotate_keys(moved, -37, cfg.rope_base)
    assert np.abs(back - at_zero[0].numpy()).max() < 1e-4


def test_per_key_deltas():
    rng = np.random.default_rng(0)
    keys = rng.standard_normal((2, 3, 5, 8)).astype(np.float32)
    deltas = np.array([0, 1, 2, 3, 4])
    each = np.stack([rotate_keys(keys[..., i : i + 1, :], int(d), 500.0)[..., 0, :]
                     for i, d in enumerate(deltas)], axis=-2)
    assert np.allclose(rotate_keys(keys, deltas, 500.0), each, atol=1e-6)
