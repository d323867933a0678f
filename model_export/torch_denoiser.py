"""The PyTorch runtime: a `dlm_lsp.sampler.DenoiserRuntime` over the `nn.Module` denoiser.

    denoiser = TorchDenoiser.from_checkpoint("runs/model/last.pt")
    state = denoiser.encode(layout)
    pred_ids, pred_prob, canvas_prob = denoiser.denoise_step(state, canvas_ids, canvas_positions)

Outputs match the decoder graph: the card's never-predicted ids (mask, pad, file) are banned,
probabilities are float32, and the logits come back when asked (`returns_logits`). The batch
calls (`encode_batch`, `denoise_step_batch`) let training's exact-match run the server's
sampler over many examples in lockstep, on the model's own device.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dlm_lsp.layout import Layout, decoder_masks, pad_contexts
from dlm_lsp.modelcard import SpecialTokens

from .model import Denoiser, DenoiserConfig


@dataclass
class TorchState:
    keys: torch.Tensor  # (L, B, H, S, D)
    values: torch.Tensor
    context_mask: torch.Tensor  # (B, S) int64


class TorchDenoiser:
    """Encoder and decoder calls of a PyTorch `Denoiser`, as the ONNX runtime makes them."""

    returns_logits = True

    def __init__(self, model: Denoiser, specials: SpecialTokens):
        self.model = model  # the caller decides train/eval mode (training's model is shared)
        self.specials = specials
        self.device = next(model.parameters()).device
        banned = torch.zeros(model.cfg.vocab_size, device=self.device)
        banned[list(specials.never_predicted)] = float("-inf")
        self.banned = banned  # (V,)

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> TorchDenoiser:
        state = torch.load(path, map_location="cpu", weights_only=False)
        model = Denoiser(DenoiserConfig.from_dict(state["config"]))
        model.load_state_dict(state["model"])
        return cls(model.eval(), SpecialTokens(**state["specials"]))

    def _tensor(self, array) -> torch.Tensor:
        return torch.as_tensor(np.asarray(array, dtype=np.int64), device=self.device)

    @torch.no_grad()
    def encode(self, layout: Layout) -> TorchState:
        return self.encode_batch([layout])

    @torch.no_grad()
    def encode_batch(self, layouts: list[Layout]) -> TorchState:
        """Several contexts in one call, right-padded to the longest (mask 0)."""
        ids, positions, mask = pad_contexts(layouts, self.specials.pad)  # (B, S) each
        keys, values = self.model.encode(self._tensor(ids), self._tensor(positions),
                                         self._tensor(mask))
        return TorchState(keys, values, self._tensor(decoder_masks(layouts, ids.shape[1])))

    @torch.no_grad()
    def denoise_step(self, state: TorchState, canvas_ids: np.ndarray,
                     canvas_positions: np.ndarray, need_logits: bool = False
                     ) -> tuple[np.ndarray, ...]:
        """One parallel prediction for every canvas position of (1, C) canvases against one
        context: (pred_ids, pred_prob, canvas_prob[, logits])."""
        canvas_ids = np.asarray(canvas_ids)
        mask = np.ones(canvas_ids.shape, bool)
        B = canvas_ids.shape[0]
        state = TorchState(state.keys.expand(-1, B, -1, -1, -1),
                           state.values.expand(-1, B, -1, -1, -1),
                           state.context_mask.expand(B, -1))
        return self.denoise_step_batch(state, canvas_ids, canvas_positions, mask, need_logits)

    @torch.no_grad()
    def denoise_step_batch(self, state: TorchState, canvas_ids: np.ndarray,
                           canvas_positions: np.ndarray, canvas_mask: np.ndarray,
                           need_logits: bool = False) -> tuple[np.ndarray, ...]:
        """One decoder call for (B, C) canvases against `encode_batch`'s state; `canvas_mask`
        (B, C) marks real positions (outputs at the others mean nothing)."""
        canvas = self._tensor(canvas_ids)  # (B, C)
        real = torch.as_tensor(np.asarray(canvas_mask, dtype=bool), device=self.device)
        logits = self.model.denoise(canvas, self._tensor(canvas_positions), state.keys,
                                    state.values, state.context_mask, real).float()
        logits = logits + self.banned  # (B, C, V)
        probs = logits.softmax(-1)
        pred_prob, pred_ids = probs.max(-1)  # (B, C)
        canvas_prob = probs.gather(-1, canvas[..., None]).squeeze(-1)
        out = (pred_ids.cpu().numpy(), pred_prob.cpu().numpy(), canvas_prob.cpu().numpy())
        return out + (logits.cpu().numpy(),) if need_logits else out
