"""A tiny random-weight model directory exported by model_export (format 2 by default).

Random weights make a deterministic model: the same request always gets the same answer, so
tests can compare a cached and an uncached engine token for token. The graphs, the shared
weights file and the card come from the real export code (`export_graphs`, `share_weights`),
the tokenizer from the synthetic model (a byte-level BPE with the four special tokens).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np


def build_exported_model(directory: str | Path, *, context_attention: str = "causal",
                         seed: int = 0, max_context: int = 512) -> Path:
    """Write the model directory (replacing `directory`) and return its path."""
    import torch

    from dlm_lsp.modelcard import GraphFiles, ModelCard, SamplerDefaults, SpecialTokens
    from model_export.export import BUCKETS, WEIGHTS_FILE, export_graphs, share_weights
    from model_export.model import Denoiser, DenoiserConfig
    from tests.reliability.synthetic_model import SPECIAL_TOKENS, _tokenizer

    directory = Path(directory)
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    tokenizer = _tokenizer(directory)
    specials = SpecialTokens(**{name: tokenizer.token_to_id(token) for name, token in
                                zip(("pad", "mask", "end_of_span", "file"), SPECIAL_TOKENS)})
    torch.manual_seed(seed)
    cfg = DenoiserConfig(vocab_size=tokenizer.get_vocab_size(), n_layers=2, n_heads=2,
                         head_dim=16, mlp_hidden=64, max_position=1024,
                         context_attention=context_attention)
    model = Denoiser(cfg).eval()
    encoder, decoder = export_graphs(model, specials, directory)
    share_weights([encoder, decoder], directory / WEIGHTS_FILE, np.float16)
    card = ModelCard(
        name=f"tiny-{context_attention}", version="0", vocab_size=cfg.vocab_size,
        n_layers=cfg.n_layers, n_heads=cfg.n_heads, head_dim=cfg.head_dim,
        special_tokens=specials, canvas_buckets=BUCKETS, max_context=max_context,
        max_position=cfg.max_position, sampler=SamplerDefaults(threshold=0.9, max_steps=4),
        graphs={"cpu": GraphFiles(encoder=encoder.name, decoder=decoder.name)},
        context_attention=context_attention, weights=WEIGHTS_FILE,
    )
    import json

    (directory / "model.json").write_text(json.dumps(card.to_json(), indent=2) + "\n")
    return directory
