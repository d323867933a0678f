"""A transformer denoiser for masked-diffusion infilling.

One set of weights, three ways to run it:

* `Denoiser.forward(ids, positions, real, is_canvas)` — one pass over ``[context; canvas]`` with
  the *block* attention mask: a context token attends to context tokens only; a canvas token
  attends to the context and to every canvas token. This is what training uses
  (`forward_masked` takes any mask: block-diffusion training builds its own).
* `Denoiser.encode(context)` → per-layer post-RoPE keys and values of the context. Because the
  context never looks at the canvas, these do not depend on it: compute them once per request.
* `Denoiser.denoise(canvas, keys, values)` → logits for every canvas position. Each step runs
  only the canvas tokens against the cached context keys/values.

How the context attends to itself is the model's `context_attention`:

* ``"bidirectional"`` (model format 1): every context token sees every other one, so one typed
  character changes every context key.
* ``"causal"`` (format 2): a context token sees itself and the context tokens before it in text
  order, as in an autoregressive LM and as block diffusion (BD3-LM, Fast-dLLM v2) treats finished
  blocks. The keys/values of an unchanged head of the context stay exact, so `encode` can extend
  an encoded context with new tokens (`past_keys`/`past_values`) instead of starting over.

`encode` + `denoise` equal `forward` exactly (up to float rounding), and encoding a causal context
in pieces equals encoding it at once; tests/model_export proves both.
Architecture: RoPE, RMSNorm (pre-norm), a SwiGLU gated MLP, tied input/output embeddings.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


CONTEXT_ATTENTION = ("causal", "bidirectional")
CANVAS_ATTENTION = ("bidirectional", "causal")


@dataclass
class DenoiserConfig:
    vocab_size: int = 8192  # tokenizer vocabulary, special tokens included
    n_layers: int = 4  # transformer blocks
    n_heads: int = 4  # query heads
    head_dim: int = 64  # width of one head; d_model = n_heads * head_dim
    mlp_hidden: int = 512  # inner width of the gated MLP
    max_position: int = 1024  # position ids must stay below this (RoPE works beyond, untrained)
    rope_base: float = 10000.0  # RoPE frequency base
    norm_eps: float = 1e-5  # RMSNorm epsilon
    context_attention: str = "causal"  # "causal" (format 2) or "bidirectional" (format 1)
    n_kv_heads: int = 0  # key/value heads (grouped-query attention); 0: as many as n_heads
    # how canvas tokens see each other: "bidirectional" (a denoiser), or "causal" (an imported
    # autoregressive model served as it is: canvas token i sees canvas tokens <= i)
    canvas_attention: str = "bidirectional"
    # the output at position i predicts token i+1 (an AR model's head, kept by block-diffusion
    # adaptation); the layout then feeds each hole the token before it (`dlm_lsp.layout`)
    shift: bool = False

    def __post_init__(self):
        if self.context_attention not in CONTEXT_ATTENTION:
            raise ValueError(f"context_attention must be one of {CONTEXT_ATTENTION}")
        if self.canvas_attention not in CANVAS_ATTENTION:
            raise ValueError(f"canvas_attention must be one of {CANVAS_ATTENTION}")
        if self.n_heads % self.kv_heads:
            raise ValueError("n_heads must be a multiple of n_kv_heads")

    @property
    def kv_heads(self) -> int:
        """Key/value heads: the contract's H in keys[L,B,H,S,D]."""
        return self.n_kv_heads or self.n_heads

    @property
    def causal(self) -> bool:
        return self.context_attention == "causal"

    @property
    def d_model(self) -> int:
        return self.n_heads * self.head_dim

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, fields: dict) -> "DenoiserConfig":
        """A config from a checkpoint; checkpoints from before format 2 were bidirectional."""
        return cls(**{"context_attention": "bidirectional", **fields})


class RMSNorm(nn.Module):
    """Root-mean-square norm, computed in float32 so an fp16 graph cannot overflow."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return x32.type_as(x) * self.weight


class Rotary(nn.Module):
    """Rotary position embedding tables computed from explicit position ids."""

    def __init__(self, head_dim: int, base: float):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # (D/2,)

    def forward(self, positions: torch.Tensor, dtype: torch.dtype):
        freqs = positions.float()[..., None] * self.inv_freq  # (B, T, D/2)
        emb = torch.cat([freqs, freqs], dim=-1)  # (B, T, D)
        cos = emb.cos()[:, None].to(dtype)  # (B, 1, T, D)
        sin = emb.sin()[:, None].to(dtype)
        return cos, sin


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, T, D) by position (rotate-half convention)."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, cfg: DenoiserConfig):
        super().__init__()
        self.n_heads, self.kv_heads, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        # one projection: queries (n_heads), then keys and values (kv_heads each)
        self.qkv = nn.Linear(cfg.d_model, (cfg.n_heads + 2 * cfg.kv_heads) * cfg.head_dim,
                             bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)

    def project(self, x, cos, sin):
        """Queries (B, H, T, D), keys and values (B, Hkv, T, D) of x; queries and keys after
        RoPE."""
        B, T, _ = x.shape
        D, H, Hkv = self.head_dim, self.n_heads, self.kv_heads
        q, k, v = self.qkv(x).split([H * D, Hkv * D, Hkv * D], dim=-1)
        q = q.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, Hkv, D).transpose(1, 2)  # (B, Hkv, T, D)
        v = v.view(B, T, Hkv, D).transpose(1, 2)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def group_queries(self, q, allowed):
        """Queries (B, H, Tq, D) and their mask (B, 1|Tq, Tk) as (B, Hkv, group·Tq, D) and
        (B, 1, group·Tq, Tk): grouped-query attention without copying keys/values — the
        `group` query heads that share key/value head j (heads j·group ... j·group+group-1)
        attend as one head with group × Tq queries."""
        B, H, T, D = q.shape
        if allowed.shape[1] == 1:  # one row for every query
            allowed = allowed.expand(-1, T, -1)
        group = self.n_heads // self.kv_heads
        q = q.reshape(B, self.kv_heads, group * T, D)
        allowed = allowed[:, None].expand(-1, group, -1, -1).reshape(B, 1, group * T, -1)
        return q, allowed

    def merge_heads(self, out, shape):
        """(B, Hkv, group·Tq, D) attention output → the projection's (B, Tq, d_model)."""
        B, H, T, D = shape
        out = out.reshape(B, H, T, D)
        return self.proj(out.transpose(1, 2).reshape(B, T, H * D))

    def attend(self, q, k, v, allowed):
        """Attention of q (B,H,Tq,D) over k/v (B,Hkv,Tk,D); allowed: bool (B,1|Tq,Tk).

        Every query row must allow at least one key (a row of nothing is NaN): the mask
        builders let each token see itself.
        """
        grouped, mask = self.group_queries(q, allowed)
        # the fused kernel (flash / memory-efficient) is exact under any boolean mask
        out = F.scaled_dot_product_attention(grouped, k, v, attn_mask=mask)
        return self.merge_heads(out, q.shape)

    def attend_past(self, q, past_k, past_v, k, v, allowed):
        """`attend` over the cached keys/values `past_k`/`past_v` (B, Hkv, P, D) followed by
        q's own `k`/`v` (B, Hkv, T, D), without concatenating them: the scores of the two
        parts are joined instead (T × (P+T) numbers, not P × D ones), which spares copying a
        whole cached context for every block of every denoise step. `allowed` (B,1|T,P+T)."""
        grouped, mask = self.group_queries(q, allowed)
        grouped = grouped * q.shape[-1] ** -0.5
        scores = torch.cat([grouped @ past_k.transpose(-1, -2), grouped @ k.transpose(-1, -2)],
                           dim=-1)
        probs = scores.masked_fill(~mask, float("-inf")).softmax(-1)  # (B,Hkv,gT,P+T)
        P = past_k.shape[2]
        out = probs[..., :P] @ past_v + probs[..., P:] @ v  # (B, Hkv, group·Tq, D)
        return self.merge_heads(out, q.shape)


class GatedMLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x))."""

    def __init__(self, cfg: DenoiserConfig):
        super().__init__()
        self.gate = nn.Linear(cfg.d_model, cfg.mlp_hidden, bias=False)
        self.up = nn.Linear(cfg.d_model, cfg.mlp_hidden, bias=False)
        self.down = nn.Linear(cfg.mlp_hidden, cfg.d_model, bias=False)

    def forward(self, x):
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, cfg: DenoiserConfig):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = GatedMLP(cfg)

    def forward(self, x, cos, sin, allowed, past_keys=None, past_values=None, mlp: bool = True):
        """x (B, T, d) attends, under `allowed` (B, 1|T, P+T), to keys/values of `past_keys`/
        `past_values` (B, H, P, D) — cached context, when given — followed by its own. Returns
        (x after the block, its own keys, its own values); `mlp=False` skips the MLP half when
        only the keys/values are wanted (the encoder's last block)."""
        q, k, v = self.attn.project(self.attn_norm(x), cos, sin)
        if mlp:
            if past_keys is None:
                x = x + self.attn.attend(q, k, v, allowed)
            else:
                x = x + self.attn.attend_past(q, past_keys, past_values, k, v, allowed)
            x = x + self.mlp(self.mlp_norm(x))
        return x, k, v


class Denoiser(nn.Module):
    def __init__(self, cfg: DenoiserConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.rotary = Rotary(cfg.head_dim, cfg.rope_base)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.apply(self._init)
        for block in self.blocks:  # GPT-2 style scaled init of residual projections
            std = 0.02 / math.sqrt(2 * cfg.n_layers)
            nn.init.normal_(block.attn.proj.weight, std=std)
            nn.init.normal_(block.mlp.down.weight, std=std)

    @staticmethod
    def _init(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Tied output head: (B, T, d_model) → (B, T, V)."""
        return self.norm(h) @ self.embed.weight.t()

    def forward(self, ids, positions, real=None, is_canvas=None, n_context: int | None = None,
                *, allowed=None, rows=None):
        """One pass with the block mask. ids/positions (B,T) int64; real, is_canvas (B,T) bool.

        Returns logits (B, T, V), or only of tokens from `n_context` on when it is given (the
        canvas, when the batch is laid out as [context; canvas]). Training passes its own mask
        `allowed` (B, T, T) and the bool `rows` (B, T) that carry loss, and gets their logits
        (N, V) only: the output head over the vocabulary costs as much as the body at small
        sizes. (Through `forward`, so that DDP sees the call.)
        """
        if allowed is None:
            allowed = block_mask(real, is_canvas, self.cfg.causal,
                                 self.cfg.canvas_attention == "causal")  # (B, T, T)
        x = self.hidden(ids, positions, allowed)
        if rows is not None:
            return self.logits(x[rows])  # (N, V)
        if n_context is not None:
            x = x[:, n_context:]
        return self.logits(x)

    def hidden(self, ids, positions, allowed) -> torch.Tensor:
        """Final hidden states (B, T, d) of one pass under an explicit mask `allowed` (B,T,T)."""
        x = self.embed(ids)  # (B, T, d)
        cos, sin = self.rotary(positions, x.dtype)
        for block in self.blocks:
            x, _, _ = block(x, cos, sin, allowed)
        return x

    def layer_states(self, ids, positions, allowed, layers) -> list[torch.Tensor]:
        """The residual stream (B, T, d) after each block in `layers` (0: the embedding, L: the
        last block, before the final norm), in the order asked, from one pass under `allowed`
        (B, 1|T, T). Blocks after the deepest one asked are not run. (A drafter reads a few
        layers' states of the frozen target as its context: `model_export/drafter.py`.)"""
        layers = list(layers)
        if not layers or min(layers) < 0 or max(layers) > self.cfg.n_layers:
            raise ValueError(f"layers must lie in 0..{self.cfg.n_layers}")
        x = self.embed(ids)  # (B, T, d)
        cos, sin = self.rotary(positions, x.dtype)
        states = {0: x}
        for index, block in enumerate(self.blocks[: max(layers)], start=1):
            x, _, _ = block(x, cos, sin, allowed)
            states[index] = x
        return [states[layer] for layer in layers]

    def encode(self, input_ids, position_ids, attention_mask, past_keys=None, past_values=None,
               past_mask=None):
        """Context → post-RoPE keys and values, each (L, B, H, S, D).

        With `past_keys`/`past_values` (L, B, H, P, D) and `past_mask` (B, P) of a context
        encoded before (causal models only), the S new tokens continue it: they attend to the
        past and, causally, to each other; the result holds the new tokens' keys/values only,
        to be appended to the past. The last block's MLP is never needed (only its
        keys/values are), so it is skipped.
        """
        real = attention_mask.bool()  # (B, S)
        S = real.shape[1]
        if self.cfg.causal:
            order = torch.arange(S, device=real.device)
            allowed = real[:, None, :] & (order[None, :] <= order[:, None])[None]  # (B, S, S)
            allowed = allowed | torch.eye(S, dtype=torch.bool, device=real.device)[None]
        else:
            if past_keys is not None:
                raise ValueError("a bidirectional context cannot be extended: encode it whole")
            allowed = real[:, None, :]  # (B, 1, S)
        if past_keys is not None:
            past = past_mask.bool()[:, None, :].expand(-1, S, -1)  # (B, S, P)
            allowed = torch.cat([past, allowed], dim=2)  # (B, S, P+S)
        x = self.embed(input_ids)  # (B, S, d)
        cos, sin = self.rotary(position_ids, x.dtype)
        keys, values = [], []
        for index, block in enumerate(self.blocks):
            past = (None, None) if past_keys is None else (past_keys[index], past_values[index])
            x, k, v = block(x, cos, sin, allowed, *past, mlp=index + 1 < len(self.blocks))
            keys.append(k)
            values.append(v)
        return torch.stack(keys), torch.stack(values)  # (L, B, H, S, D)

    def denoise(self, canvas_ids, canvas_positions, keys, values, context_mask, canvas_mask=None):
        """Canvas (B, C) against cached context keys/values (L, B, H, S, D) → logits (B, C, V).

        `canvas_mask` (B, C) bool marks real canvas tokens when a batch pads canvases (training);
        the runtime never pads a canvas and leaves it None.
        """
        if canvas_mask is None:
            canvas_mask = torch.ones_like(canvas_ids, dtype=torch.bool)
        allowed = torch.cat([context_mask.bool(), canvas_mask], dim=1)[:, None, :]  # (B,1,S+C)
        if self.cfg.canvas_attention == "causal":  # canvas token i sees canvas tokens <= i
            C = canvas_ids.shape[1]
            order = torch.arange(C, device=canvas_ids.device)
            earlier = (order[None, :] <= order[:, None])[None]  # (1, C, C)
            context = allowed[:, :, : -C].expand(-1, C, -1)  # (B, C, S)
            allowed = torch.cat([context, allowed[:, :, -C:] & earlier], dim=2)  # (B, C, S+C)
        x = self.embed(canvas_ids)  # (B, C, d)
        cos, sin = self.rotary(canvas_positions, x.dtype)
        for index, block in enumerate(self.blocks):
            x, _, _ = block(x, cos, sin, allowed, keys[index], values[index])
        return self.logits(x)  # (B, C, V)


def block_mask(real: torch.Tensor, is_canvas: torch.Tensor, causal: bool,
               causal_canvas: bool = False) -> torch.Tensor:
    """Who may attend to whom in one [context; canvas] pass: (B, T, T) bool, query × key.

    Query i may see key j iff j is a real token and either i is canvas (and, with
    `causal_canvas`, j is context or a canvas token not after i), or j is context and
    (bidirectional, or j is not after i: a causal context is laid out in text order). Each
    token always sees itself, so padding rows are never empty.
    """
    T = real.shape[1]
    eye = torch.eye(T, dtype=torch.bool, device=real.device)[None]
    not_after = torch.ones(T, T, dtype=torch.bool, device=real.device).tril()[None]
    context_key = ~is_canvas[:, None, :]  # (B, 1, T)
    if causal:
        context_key = context_key & not_after
    canvas_query = is_canvas[:, :, None]  # (B, T, 1)
    if causal_canvas:
        canvas_query = canvas_query & (context_key | not_after)
    return (real[:, None, :] & (canvas_query | context_key)) | eye


def block_diffusion_mask(real: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
    """BD3-LM's mask over ``[clean x; noisy x]`` (both (B, N), so the pass is (B, 2N, 2N)).

    The clean half is a causal context. A noisy token of block b sees the clean tokens of
    blocks before b (its prefix, as the server's context) and the noisy tokens of block b (its
    canvas), never the clean copy of its own block. `block` (B, N) numbers the blocks in text
    order; one pass trains every block of the sequence as a canvas against its prefix.
    """
    B, N = real.shape
    order = torch.arange(N, device=real.device)
    causal = (order[None, :] <= order[:, None])[None]  # (1, N, N)
    clean_clean = real[:, None, :] & causal
    noisy_clean = real[:, None, :] & (block[:, None, :] < block[:, :, None])
    noisy_noisy = real[:, None, :] & (block[:, None, :] == block[:, :, None])
    top = torch.cat([clean_clean, torch.zeros_like(clean_clean)], dim=2)
    bottom = torch.cat([noisy_clean, noisy_noisy], dim=2)
    eye = torch.eye(2 * N, dtype=torch.bool, device=real.device)[None]
    return torch.cat([top, bottom], dim=1) | eye
