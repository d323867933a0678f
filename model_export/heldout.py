"""A held-out infilling set cut from the corpus validation split, for `dlm-lsp eval`.

Every model is compared on the same tasks: the set is a pure function of the validation split
and a seed. Holes are the kinds an editor asks for, four of them:

* ``single-line``: one whole line; the cursor after its indentation (as after pressing Enter);
* ``multi-line``: 2 to 6 whole lines, the same way;
* ``random-span``: any span of 1 to 200 characters, cursor and end anywhere;
* ``syntax-node``: a whole tree-sitter statement, block, argument list, ... .

Each task is one JSON object a line in the plain FIM format `dlm_lsp.measure.evaluate` reads:
``task_id, kind, language, path, prefix, suffix, middle``; the prefix and suffix are cut on
line boundaries to a window around the hole (the server trims them further to its budgets).
Middles that are blank or only a comment are skipped, and none is longer than ``max_middle``.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Iterator

from dlm_lsp.measure.stats import write_jsonl

from .corpus import short_path as _short_path
from .data import node_spans

KINDS = ("single-line", "multi-line", "random-span", "syntax-node")
COMMENT_STARTS = ("#", "//", "/*", "*")
# tree-sitter node types (by suffix) a syntax-node hole may be
NODE_SUFFIXES = ("statement", "block", "argument_list", "arguments", "parameters",
                 "assignment", "call", "dictionary", "list", "return_statement", "clause")


def _window(text: str, start: int, end: int, before: int, after: int) -> tuple[str, str]:
    """Prefix and suffix around [start, end), cut on line boundaries to about before/after chars."""
    cut = max(0, start - before)
    if cut:
        newline = text.find("\n", cut, start)
        cut = newline + 1 if newline >= 0 else cut
    stop = min(len(text), end + after)
    if stop < len(text):
        newline = text.rfind("\n", end, stop)
        stop = newline + 1 if newline >= 0 else stop
    return text[cut:start], text[end:stop]


def _usable(middle: str, max_middle: int) -> bool:
    stripped = middle.strip()
    if not stripped or len(middle) > max_middle:
        return False
    lines = [line.strip() for line in stripped.splitlines() if line.strip()]
    return not all(line.startswith(COMMENT_STARTS) for line in lines)


def _line_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of every line, end before its newline."""
    spans, at = [], 0
    for line in text.split("\n"):
        spans.append((at, at + len(line)))
        at += len(line) + 1
    return spans


def _after_indent(text: str, start: int, end: int) -> int:
    segment = text[start:end]
    return start + len(segment) - len(segment.lstrip(" \t"))


def pick_hole(rng: random.Random, text: str, language: str, kind: str,
              max_middle: int) -> tuple[int, int] | None:
    """A (start, end) hole of `kind` in `text`, or None when a few tries find none."""
    lines = _line_spans(text)
    for _ in range(20):
        if kind in ("single-line", "multi-line"):
            first = rng.randrange(len(lines))
            count = 1 if kind == "single-line" else rng.randint(2, 6)
            last = first + count - 1
            if last >= len(lines):
                continue
            start = _after_indent(text, *lines[first])
            end = lines[last][1]
        elif kind == "random-span":
            start = rng.randrange(len(text))
            end = min(len(text), start + rng.randint(1, 200))
        else:
            span = _node_span(rng, text, language, max_middle)
            if span is None:
                return None
            start, end = span
        if start < end and _usable(text[start:end], max_middle):
            return start, end
    return None


def _node_span(rng: random.Random, text: str, language: str,
               max_middle: int) -> tuple[int, int] | None:
    spans = node_spans(text, language, min_bytes=8, max_bytes=max_middle, kinds=NODE_SUFFIXES)
    return rng.choice(spans) if spans else None


def heldout_tasks(records: Iterable[dict[str, Any]], *, per_kind: int, seed: int = 0,
                  max_middle: int = 400, before: int = 3000, after: int = 1500,
                  languages: set[str] | None = None) -> Iterator[dict[str, Any]]:
    """Up to `per_kind` tasks of each kind, at most one of each kind per file, files in a
    seeded order (deterministic for the same records and seed)."""
    files = [r for r in records if languages is None or r.get("language") in languages]
    files.sort(key=lambda r: (r.get("sha256", ""), r.get("path", "")))
    rng = random.Random(seed)
    rng.shuffle(files)
    counts: Counter[str] = Counter()
    for record in files:
        text, language = record["text"], record.get("language", "python")
        for kind in KINDS:
            if counts[kind] >= per_kind:
                continue
            hole = pick_hole(rng, text, language, kind, max_middle)
            if hole is None:
                continue
            start, end = hole
            prefix, suffix = _window(text, start, end, before, after)
            counts[kind] += 1
            yield {
                "task_id": f"heldout/{kind}/{counts[kind] - 1}",
                "kind": kind,
                "language": language,
                "path": _short_path(record.get("path", "")),
                "prefix": prefix,
                "suffix": suffix,
                "middle": text[start:end],
            }
        if all(counts[k] >= per_kind for k in KINDS):
            return


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the `heldout` subcommand to `python -m model_export`."""
    parser = subparsers.add_parser(
        "heldout", help="write a held-out infilling set from the corpus validation split",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--corpus", default="runs/corpus",
                        help="corpus directory (with val.jsonl.zst), or a val .jsonl[.gz|.zst]")
    parser.add_argument("--out", default="benchmarks/heldout.jsonl.gz",
                        help="tasks file, .jsonl or .jsonl.gz")
    parser.add_argument("--per-kind", type=int, default=50, help="tasks of each hole kind")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-middle", type=int, default=400, help="longest middle, chars")
    parser.add_argument("--languages", default=None,
                        help="comma list of language ids (default: every language)")
    parser.set_defaults(func=run)
    return parser


def _validation_records(source: Path) -> Iterator[dict[str, Any]]:
    if source.is_dir():
        source = source / "val.jsonl.zst"
    if source.name.endswith(".zst"):
        from .corpus import read_corpus

        yield from read_corpus(source)
    else:
        from dlm_lsp.measure.stats import read_jsonl

        yield from read_jsonl(source)


def run(args: argparse.Namespace) -> int:
    """Write the held-out set; print what it holds."""
    source = Path(args.corpus)
    try:
        records = list(_validation_records(source))
    except (OSError, ValueError) as exc:
        print(f"heldout: cannot read {source}: {exc}", file=sys.stderr)
        return 2
    languages = set(args.languages.split(",")) if args.languages else None
    tasks = list(heldout_tasks(records, per_kind=args.per_kind, seed=args.seed,
                               max_middle=args.max_middle, languages=languages))
    count = write_jsonl(args.out, tasks)
    kinds = Counter(t["kind"] for t in tasks)
    print(f"{count} tasks from {len(records)} validation files → {args.out}: "
          + ", ".join(f"{kinds[k]} {k}" for k in KINDS))
    return 0 if count else 1
