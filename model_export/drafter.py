"""The block-diffusion drafter (DFlash, Chen, Liang, Liu 2026, arXiv 2602.06036) on the frozen target.

The target (the imported autoregressive `Denoiser`) writes the text; the drafter only guesses
it, a block at a time, and the target checks the whole guess in one causal call (the agreeing
prefix plus the target's own next token is committed: the text is the target's greedy text
whatever the draft). A good drafter makes each target call commit more tokens.

How the drafter guesses:

* **Context = the target's own features.** The residual streams of K target layers (shallow to
  deep) at every context position are concatenated, projected to d_model and normed
  (`ContextFusion`): (B, S, K·d) → (B, S, d). The target computed them anyway while it read the
  context, so they cost one small matrix per token.
* **A block `[anchor, mask, ..., mask]`** of `block_size` positions: the anchor is the last
  committed token (the target's own next token, whose features the target has not computed
  yet), the masks stand for the B-1 tokens to guess. Inside the block attention is
  bidirectional.
* **`n_layers` drafter layers of the target's width** (`DrafterLayer`). Their queries come from
  the block only; their keys/values are [the projected context features ; the block's own], so
  every layer reads the target's features directly (the paper's "KV injection"), through the
  layer's own key/value projections. A block token sees every context position before its
  anchor and the whole block.
* **The target's embedding, final norm and tied head, frozen and shared.** They are passed in
  as `target` and never registered here, so the drafter's state dict holds its own parameters
  only (a learned mask embedding stands for `<|mask|>`, which the target never trained).
  Output: logits for block positions 1..B-1, position k guessing the token k after the anchor.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn

from .model import Attention, Block, Denoiser, DenoiserConfig, RMSNorm, Rotary


@dataclass
class DrafterConfig:
    target_layers: list[int] = field(default_factory=lambda: [2, 15, 29])  # target blocks read
    n_layers: int = 1  # drafter layers, each of the target's width
    block_size: int = 8  # anchor + block_size-1 guessed tokens
    # the target's shape (copied from its config by `for_target`)
    d_model: int = 576
    n_heads: int = 9
    n_kv_heads: int = 3
    head_dim: int = 64
    mlp_hidden: int = 1536
    norm_eps: float = 1e-5
    rope_base: float = 100000.0

    def layer_config(self) -> DenoiserConfig:
        """A target-style config for the drafter's layers (their attention and MLP shapes)."""
        return DenoiserConfig(vocab_size=1, n_layers=self.n_layers, n_heads=self.n_heads,
                              head_dim=self.head_dim, mlp_hidden=self.mlp_hidden,
                              rope_base=self.rope_base, norm_eps=self.norm_eps,
                              n_kv_heads=self.n_kv_heads)

    @classmethod
    def for_target(cls, target: DenoiserConfig, **fields) -> "DrafterConfig":
        return cls(d_model=target.d_model, n_heads=target.n_heads, n_kv_heads=target.kv_heads,
                   head_dim=target.head_dim, mlp_hidden=target.mlp_hidden,
                   norm_eps=target.norm_eps, rope_base=target.rope_base, **fields)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, fields: dict) -> "DrafterConfig":
        return cls(**fields)


class ContextFusion(nn.Module):
    """K target layers' states (B, S, K·d) → one context feature (B, S, d)."""

    def __init__(self, cfg: DrafterConfig):
        super().__init__()
        self.fc = nn.Linear(len(cfg.target_layers) * cfg.d_model, cfg.d_model, bias=False)
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.norm(self.fc(states))


class DrafterLayer(Block):
    """A target-shaped block whose keys/values are [context features ; block]: the context
    features go through this layer's own key/value projections (already normed by the fusion,
    as in the paper), the block through its input norm."""

    def forward(self, x, cos, sin, context, context_cos, context_sin, allowed):
        """x (B, N, d) block tokens; context (B, S, d); allowed (B, N, S+N)."""
        q, k, v = self.attn.project(self.attn_norm(x), cos, sin)
        _, context_k, context_v = self.attn.project(context, context_cos, context_sin)
        x = x + self.attn.attend_past(q, context_k, context_v, k, v, allowed)
        return x + self.mlp(self.mlp_norm(x))


class Drafter(nn.Module):
    def __init__(self, cfg: DrafterConfig):
        super().__init__()
        self.cfg = cfg
        layer_cfg = cfg.layer_config()
        self.fusion = ContextFusion(cfg)
        self.mask_embedding = nn.Parameter(torch.zeros(cfg.d_model))
        self.rotary = Rotary(cfg.head_dim, cfg.rope_base)
        self.layers = nn.ModuleList(DrafterLayer(layer_cfg) for _ in range(cfg.n_layers))
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
        nn.init.normal_(self.mask_embedding, std=0.02)
        # residual branches start at zero: the untrained drafter passes its inputs through to
        # the target's head (first loss ~16 nats here, against ~18 from a copy of the target's
        # last block and ~70 from random layers: the tied head is sharp on any direction)
        for layer in self.layers:
            nn.init.zeros_(layer.attn.proj.weight)
            nn.init.zeros_(layer.mlp.down.weight)

    @classmethod
    def for_target(cls, target: Denoiser, **fields) -> "Drafter":
        """A drafter shaped for `target` (its width, heads, MLP, RoPE)."""
        return cls(DrafterConfig.for_target(target.cfg, **fields))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def fuse(self, states: list[torch.Tensor]) -> torch.Tensor:
        """The target's states of `cfg.target_layers` (each (B, S, d)) → context (B, S, d)."""
        return self.fusion(torch.cat(states, dim=-1))

    def forward(self, target: Denoiser, anchor_ids, anchor_positions, context,
                context_positions, context_real=None):
        """Logits (B, N, block_size-1, V) for N blocks per row, all in one pass.

        anchor_ids/anchor_positions (B, N): each block's anchor token and its text position;
        context (B, S, d) fused features and context_positions (B, S); context_real (B, S)
        bool marks real (unpadded) context. Block n sees the context positions before its
        anchor and its own block_size tokens, never another block.
        """
        B, N = anchor_ids.shape
        L = self.cfg.block_size
        S = context.shape[1]
        offsets = torch.arange(L, device=anchor_ids.device)
        positions = (anchor_positions[:, :, None] + offsets).reshape(B, N * L)  # (B, N·L)
        # the target's frozen embedding, in the drafter's dtype
        anchors = target.embed(anchor_ids).to(self.mask_embedding.dtype)  # (B, N, d)
        masks = self.mask_embedding.to(anchors.dtype).expand(B, N, L - 1, -1)
        x = torch.cat([anchors[:, :, None], masks], dim=2).reshape(B, N * L, -1)  # (B, N·L, d)
        if context_real is None:
            context_real = torch.ones(B, S, dtype=torch.bool, device=context.device)
        before = context_positions[:, None, :] < anchor_positions[:, :, None]  # (B, N, S)
        sees_context = (before & context_real[:, None, :]).repeat_interleave(L, dim=1)
        block = torch.arange(N, device=x.device).repeat_interleave(L)  # (N·L,)
        same_block = (block[:, None] == block[None, :]).expand(B, -1, -1)  # (B, N·L, N·L)
        allowed = torch.cat([sees_context, same_block], dim=2)  # (B, N·L, S+N·L)
        cos, sin = self.rotary(positions, x.dtype)
        context = context.to(x.dtype)
        context_cos, context_sin = self.rotary(context_positions, x.dtype)
        for layer in self.layers:
            x = layer(x, cos, sin, context, context_cos, context_sin, allowed)
        x = x.reshape(B, N, L, -1)[:, :, 1:]  # (B, N, L-1, d): the guessed positions
        return target.logits(x.to(target.embed.weight.dtype))  # the target's norm and head


__all__ = ["ContextFusion", "Drafter", "DrafterConfig", "DrafterLayer"]
