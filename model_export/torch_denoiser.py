"""A PyTorch `Denoiser` (the `dlm_lsp.sampler` protocol), for parity tests against ONNX Runtime.

    denoiser = TorchDenoiser.from_checkpoint("runs/model/last.pt")
    state = denoiser.encode(layout)
    pred_ids, pred_prob, canvas_prob = denoiser.denoise_step(state, canvas_ids, canvas_positions)

Outputs match the decoder graph: mask, pad and file are never predicted; probabilities float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dlm_lsp.layout import Layout
from dlm_lsp.modelcard import SpecialTokens

from .model import Denoiser, DenoiserConfig


@dataclass
class TorchState:
    keys: torch.Tensor  # (L, 1, H, S, D)
    values: torch.Tensor
    context_mask: torch.Tensor  # (1, S) int64


class TorchDenoiser:
    def __init__(self, model: Denoiser, specials: SpecialTokens):
        self.model = model.eval()
        self.specials = specials
        banned = torch.zeros(model.cfg.vocab_size)
        banned[[specials.mask, specials.pad, specials.file]] = float("-inf")
        self.banned = banned

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> TorchDenoiser:
        state = torch.load(path, map_location="cpu", weights_only=False)
        model = Denoiser(DenoiserConfig.from_dict(state["config"]))
        model.load_state_dict(state["model"])
        return cls(model, SpecialTokens(**state["specials"]))

    @torch.no_grad()
    def encode(self, layout: Layout) -> TorchState:
        ids = torch.tensor([layout.context_ids], dtype=torch.long)  # (1, S)
        positions = torch.tensor([layout.context_positions], dtype=torch.long)
        mask = torch.ones_like(ids)
        keys, values = self.model.encode(ids, positions, mask)
        return TorchState(keys, values, mask)

    @torch.no_grad()
    def denoise_step(self, state: TorchState, canvas_ids: np.ndarray,
                     canvas_positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One parallel prediction for every canvas position: (pred_ids, pred_prob, canvas_prob)."""
        canvas = torch.from_numpy(np.asarray(canvas_ids, dtype=np.int64))  # (B, C)
        positions = torch.from_numpy(np.asarray(canvas_positions, dtype=np.int64))
        B = canvas.shape[0]
        keys = state.keys.expand(-1, B, -1, -1, -1)
        values = state.values.expand(-1, B, -1, -1, -1)
        mask = state.context_mask.expand(B, -1)
        logits = self.model.denoise(canvas, positions, keys, values, mask).float() + self.banned
        probs = logits.softmax(-1)  # (B, C, V)
        pred_prob, pred_ids = probs.max(-1)
        canvas_prob = probs.gather(-1, canvas[..., None]).squeeze(-1)
        return pred_ids.numpy(), pred_prob.numpy(), canvas_prob.numpy()
