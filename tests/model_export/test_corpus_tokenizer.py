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

    record = next(read_corpus(tiny_corpus / "train.jsonl.zst"))
    src = Path(record["path"]).parents[1] if Path(record["path"]).parent.name in (
        "json", "email", "logging", "importlib") else Path(record["path"]).parent
    build_corpus([src], tmp_path, val_permille=150, progress=False)
    first = sorted(r["sha256"] for r in read_corpus(tiny_corpus / "val.jsonl.zst"))
    second = sorted(r["sha256"] for r in read_corpus(tmp_path / "val.jsonl.zst"))
    assert first == second


def _code(language: str, name: str) -> str:
    """A plausible, non-trivial source file in `language` (distinct per `name`)."""
    body = {
        "js": "function {n}(items) {{\n  const out = [];\n  for (const item of items) {{\n"
              "    out.push(item * {k});\n  }}\n  return out;\n}}\n",
        "go": "func {n}(items []int) []int {{\n\tout := make([]int, 0, len(items))\n"
              "\tfor _, item := range items {{\n\t\tout = append(out, item*{k})\n\t}}\n"
              "\treturn out\n}}\n",
        "rs": "pub fn {n}(items: &[i64]) -> Vec<i64> {{\n    items.iter().map(|x| x * {k})"
              ".collect()\n}}\n",
        "py": "def {n}(items):\n    out = []\n    for item in items:\n"
              "        out.append(item * {k})\n    return out\n",
    }[language]
    return "".join(body.format(n=f"{name}_{k}", k=k) for k in range(6))


def test_corpus_languages_licences_and_projects(tmp_path):
    """The five planned languages are read; licences and projects come from wheel metadata,
    package.json, Cargo.toml, a Debian copyright file or a LICENSE file; roots are not absolute."""
    from model_export.corpus import build_corpus

    root = tmp_path / "extra"
    wheel = root / "wheel"
    (wheel / "demo-1.0.dist-info").mkdir(parents=True)
    (wheel / "demo-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.4\nName: demo\nVersion: 1.0\nLicense-Expression: MIT\n")
    (wheel / "demo").mkdir()
    (wheel / "demo" / "core.py").write_text(_code("py", "core"))
    npm = root / "npm" / "package"
    (npm / "src").mkdir(parents=True)
    (npm / "package.json").write_text(json.dumps({"name": "@demo/pkg", "license": "ISC"}))
    (npm / "src" / "a.js").write_text(_code("js", "a"))
    (npm / "src" / "b.mjs").write_text(_code("js", "b"))
    (npm / "src" / "c.ts").write_text(_code("js", "c"))
    (npm / "src" / "d.tsx").write_text(_code("js", "d"))
    crate = root / "deb" / "usr" / "share" / "cargo" / "registry" / "democrate-0.1.0"
    (crate / "src").mkdir(parents=True)
    (crate / "Cargo.toml").write_text('[package]\nname = "democrate"\nlicense = "MIT OR Apache-2.0"\n')
    (crate / "src" / "lib.rs").write_text(_code("rs", "lib"))
    gopkg = root / "golang-demo-dev"
    doc = gopkg / "usr" / "share" / "doc" / "golang-demo-dev"
    doc.mkdir(parents=True)
    (doc / "copyright").write_text(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n"
        "Source: https://github.com/demo/demo\n\nFiles: *\nCopyright: 2020 Demo\n"
        "License: BSD-3-clause\n\nFiles: debian/*\nLicense: GPL-2+\n")
    src = gopkg / "usr" / "share" / "gocode" / "src" / "github.com" / "demo" / "demo"
    src.mkdir(parents=True)
    (src / "demo.go").write_text("package demo\n\n" + _code("go", "demo"))
    plain = root / "plain" / "proj"
    plain.mkdir(parents=True)
    (plain / "LICENSE").write_text("Apache License\nVersion 2.0, January 2004\n")
    (plain / "x.py").write_text(_code("py", "x"))
    (root / "loose.py").write_text(_code("py", "loose"))

    out = tmp_path / "corpus"
    stats = build_corpus([root], out, val_permille=0, progress=False).to_json()
    records = {Path(r["path"]).name: r for r in read_corpus(out / "train.jsonl.zst")}
    assert {r["language"] for r in records.values()} >= {
        "python", "javascript", "typescript", "typescriptreact", "go", "rust"}
    assert records["b.mjs"]["language"] == "javascript"
    licences = {name: r["licence"] for name, r in records.items()}
    assert licences == {"core.py": "MIT", "a.js": "ISC", "b.mjs": "ISC", "c.ts": "ISC",
                        "d.tsx": "ISC", "lib.rs": "MIT OR Apache-2.0",
                        "demo.go": "BSD-3-clause", "x.py": "Apache-2.0", "loose.py": "unknown"}
    assert set(stats["projects"]) == {"demo", "@demo/pkg", "democrate", "golang-demo-dev",
                                      "proj", "extra"}
    assert stats["roots"] == ["extra"]  # a label, never this machine's absolute path
    assert sum(stats["language_bytes"].values()) == stats["bytes"]["train"]

    capped = build_corpus([root], tmp_path / "capped", val_permille=0, progress=False,
                          max_project_bytes=len(_code("js", "a")) * 2 + 10).to_json()
    assert capped["dropped"]["project-cap"] == 2  # @demo/pkg: 2 of its 4 files


def test_exclude_heldout(tmp_path, stdlib_files):
    """Files a held-out set was cut from stay out: same content at another path, an edited
    copy at the same package-relative path; unrelated files and namesakes stay in."""
    from dlm_lsp.measure.stats import write_jsonl
    from model_export.corpus import HeldoutFilter, build_corpus

    source, other, namesake_of = stdlib_files[2], stdlib_files[3], stdlib_files[4]
    text = source.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    middle_at = len(lines) // 2
    task = {"task_id": "heldout/single-line/0", "kind": "single-line", "language": "python",
            "path": f"{source.parent.name}/{source.name}",
            "prefix": "".join(lines[max(0, middle_at - 40):middle_at]),
            "middle": lines[middle_at], "suffix": "".join(lines[middle_at + 1:middle_at + 30])}
    tasks = tmp_path / "heldout.jsonl.gz"
    write_jsonl(tasks, [task])

    root = tmp_path / "src"
    (root / "elsewhere").mkdir(parents=True)
    (root / "elsewhere" / "renamed.py").write_text(text)  # same content, other path
    edited = root / "newer" / source.parent.name / source.name  # same path, edited
    edited.parent.mkdir(parents=True)
    edited.write_text("\n".join(lines[middle_at - 5:middle_at + 5]) + "\n# newer version\n"
                      + _code("py", "added"))
    (root / "keep.py").write_text(other.read_text(encoding="utf-8"))
    namesake = root / "unrelated" / source.parent.name / source.name  # same name, other text
    namesake.parent.mkdir(parents=True)
    namesake.write_text(namesake_of.read_text(encoding="utf-8"))

    flt = HeldoutFilter.from_file(tasks)
    assert flt.matches(str(root / "elsewhere" / "renamed.py"), text)
    assert not flt.matches(str(root / "keep.py"), other.read_text(encoding="utf-8"))

    out = tmp_path / "corpus"
    stats = build_corpus([root], out, val_permille=500, progress=False,
                         exclude_heldout=tasks).to_json()
    kept = {Path(r["path"]).relative_to(root).as_posix()
            for split in ("train", "val") for r in read_corpus(out / f"{split}.jsonl.zst")}
    assert stats["dropped"]["heldout"] == 2
    assert kept == {"keep.py", namesake.relative_to(root).as_posix()}


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
