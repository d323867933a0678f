"""A byte-level BPE tokenizer for source code, trained with `tokenizers` on the corpus.

Byte-level, no normalizer, no prefix space: every string, whitespace and indentation included,
round-trips exactly through encode/decode. The special tokens take ids 0..3 in this order.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from dlm_lsp.modelcard import SpecialTokens

SPECIAL_TOKENS = ("<|pad|>", "<|mask|>", "<|endofspan|>", "<|file|>")
_SPECIAL_FIELDS = ("pad", "mask", "end_of_span", "file")


def new_tokenizer() -> Tokenizer:
    """An empty byte-level BPE pipeline."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def train_tokenizer(texts: Iterable[str], vocab_size: int = 8192, min_frequency: int = 2,
                    length: int | None = None) -> Tokenizer:
    """Train BPE on `texts`; special tokens get ids 0..3, then the 256 byte symbols."""
    tokenizer = new_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer, length=length)
    return tokenizer


def load_tokenizer(path: str | Path) -> Tokenizer:
    return Tokenizer.from_file(str(path))


def special_tokens(tokenizer: Tokenizer) -> SpecialTokens:
    """The card's special ids, read from the tokenizer (never assumed)."""
    ids = {}
    for field, token in zip(_SPECIAL_FIELDS, SPECIAL_TOKENS):
        token_id = tokenizer.token_to_id(token)
        if token_id is None:
            raise ValueError(f"tokenizer has no {token}")
        ids[field] = token_id
    return SpecialTokens(**ids)


def encode(tokenizer: Tokenizer, text: str) -> list[int]:
    """Token ids of plain text (no special-token post-processing)."""
    return tokenizer.encode(text, add_special_tokens=False).ids


def decode(tokenizer: Tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False)


def round_trip_report(tokenizer: Tokenizer, texts: Iterable[str]) -> dict:
    """Bytes per token over `texts` and how many decode(encode(x)) == x."""
    files = exact = n_bytes = n_tokens = 0
    failures: list[int] = []
    for index, text in enumerate(texts):
        ids = encode(tokenizer, text)
        files += 1
        n_bytes += len(text.encode("utf-8"))
        n_tokens += len(ids)
        if decode(tokenizer, ids) == text:
            exact += 1
        elif len(failures) < 10:
            failures.append(index)
    return {
        "files": files,
        "round_trip_exact": exact,
        "failures": failures,
        "bytes": n_bytes,
        "tokens": n_tokens,
        "bytes_per_token": round(n_bytes / max(n_tokens, 1), 3),
    }


def save_tokenizer(tokenizer: Tokenizer, path: str | Path, report: dict | None = None) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(path))
    if report is not None:
        path.with_suffix(".stats.json").write_text(json.dumps(report, indent=2) + "\n")


def sample_texts(texts: Iterable[str], max_bytes: int) -> Iterator[str]:
    """The first texts up to about `max_bytes` (tokenizer training does not need everything)."""
    total = 0
    for text in texts:
        if total >= max_bytes:
            return
        total += len(text)
        yield text
