"""Corpus filtering/splitting and the tokenizer's exact round-trip on real files."""

import json
import sysconfig
from pathlib import Path

from model_export.corpus import read_corpus
from model_export.tokenizer import (SPECIAL_TOKENS, decode, encode, load_tokenizer,
                                    round_trip_report, special_tokens)



def test_corpus_drops_junk_and_duplicates(tiny_corpus):
    stats = json.loads((tiny_corpus / "stats.json").read_text())
    records = list(read_corpus(tiny_corpus / "train.jsonl.zst")) + list(
        read_corpus(tiny_corpus / "val.jsonl.zst"))
    names = {Path(r["path"]).name for r in records}
    assert "tiny.py" not in names and "gen.py" not in names and "bundle.min.js" not in names
    assert "vendored.py" not in names
    assert stats["dropped"]["duplicate"] == 1
    assert stats["files"]["val"] >= 1 and stats["files"]["train"] > 20
    assert len({r["sha256"] for r in records}) == len(records)
    assert stats["files"]["train"] + stats["files"]["val"] == len(records)


def test_split_is_stable(tiny_corpus, tmp_path):
    from model_export.corpus import build_corpus

    src = Path(json.loads((tiny_corpus / "stats.json").read_text())["roots"][0])
    build_corpus([src], tmp_path, val_permille=150, progress=False)
    first = sorted(r["sha256"] for r in read_corpus(tiny_corpus / "val.jsonl.zst"))
    second = sorted(r["sha256"] for r in read_corpus(tmp_path / "val.jsonl.zst"))
    assert first == second


def test_special_tokens_are_ids_0_to_3(tiny_tokenizer):
    tokenizer = load_tokenizer(tiny_tokenizer)
    specials = special_tokens(tokenizer)
    assert (specials.pad, specials.mask, specials.end_of_span, specials.file) == (0, 1, 2, 3)
    assert [tokenizer.id_to_token(i) for i in range(4)] == list(SPECIAL_TOKENS)


def test_round_trip_on_real_files(tiny_tokenizer, stdlib_files):
    """decode(encode(x)) == x on real source files the tokenizer never saw, and odd text."""
    tokenizer = load_tokenizer(tiny_tokenizer)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    unseen = sorted((stdlib / "asyncio").glob("*.py"))[:15] + [stdlib / "textwrap.py"]
    texts = [p.read_text(encoding="utf-8") for p in unseen]
    texts += [p.read_bytes().decode("utf-8") for p in stdlib_files[:5]]
    texts += [
        "\tdef f():\r\n\t\treturn  1  \r\n",
        "x = '\u00e9\u4e2d\u6587 \U0001F600'\n\n\n   \n",
        "    ",
        "if x:\n        pass\n\t \t\n",
    ]
    report = round_trip_report(tokenizer, texts)
    assert report["round_trip_exact"] == len(texts), report
    # prefix/suffix are tokenized separately: each piece round-trips on its own
    text = texts[0]
    for cut in (1, 17, 200, len(text) // 2):
        assert decode(tokenizer, encode(tokenizer, text[:cut])) + decode(
            tokenizer, encode(tokenizer, text[cut:])) == text
