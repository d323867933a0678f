"""Moving encoded keys along the text: RoPE's rotation applied to keys already rotated.

A key stored after RoPE at position p is its content rotated by p. Rotating it by δ more gives
exactly the key the same content has at p + δ (rotations compose). A text segment that attends
only to itself (the suffix encoded on its own, causal: docs/INTERFACES.md, "The FIM layout")
has hidden states that depend on positions only through differences inside the segment, so its
keys at positions s..s+n-1 are its keys encoded at 0..n-1 rotated by s, and its values do not
depend on positions at all. That is what lets a suffix encoded once stay valid while the
prefix before it grows: only a rotation moves it, no encoder call.

Rotate-half convention, as `model_export.model.apply_rope` and the exported graphs use.
"""

from __future__ import annotations

import numpy as np


def inverse_frequencies(head_dim: int, base: float) -> np.ndarray:
    """(D/2,) the RoPE frequencies, float64."""
    return 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))


def rotate_keys(keys: np.ndarray, delta: int | np.ndarray, base: float) -> np.ndarray:
    """`keys` (..., S, D), post-RoPE, moved by `delta` positions (a scalar, or (S,) per
    key): the keys the same content has `delta` positions later (earlier when negative)."""
    D = keys.shape[-1]
    angles = np.multiply.outer(np.asarray(delta, np.float64), inverse_frequencies(D, base))
    angles = np.broadcast_to(angles, (*np.shape(delta), D // 2))
    cos = np.concatenate([np.cos(angles), np.cos(angles)], -1).astype(keys.dtype)
    sin = np.concatenate([np.sin(angles), np.sin(angles)], -1).astype(keys.dtype)
    if np.ndim(delta):  # one angle per key: broadcast over (..., S, D)
        cos, sin = cos[..., :, :], sin[..., :, :]
    half = D // 2
    rotated = np.concatenate([-keys[..., half:], keys[..., :half]], -1)
    return keys * cos + rotated * sin
