"""Cursor positions sampled from real files the way people type, each with its true answer.

A sample is a document with the text the user had not yet written at the cursor removed:

* ``mid-line``: inside a line's code; the rest of the line is removed;
* ``end-of-line``: at the end of a line whose statement continues (an open bracket or a
  trailing comma/operator); the continuation lines are removed;
* ``block-opener``: after a line that opens a block (``:`` or ``{``); the block's body is
  removed, the cursor is on the new, indented line below the opener;
* ``empty-line``: on a line inside a body, emptied to its indentation.

The sample is fixed by the seed. `exact_match` scores a suggestion against the removed text.
"""

from __future__ import annotations

import os
import random
import re
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from ..languages import language_id_for_path
from .scoring import apply_edit, exact_match as same_text

KINDS = ("mid-line", "end-of-line", "block-opener", "empty-line")
_CONTINUES = re.compile(r"[(\[{,=+\-*/\\]$|\b(and|or|not|in)$")
_OPENS_BLOCK = re.compile(r"(:|\{)$")


@dataclass(frozen=True, kw_only=True)
class Sample:
    """A document as the user has it, a cursor in it, and what the user went on to write."""

    kind: str
    path: str
    language_id: str
    text: str  # the document, with `expected` removed
    offset: int  # cursor, a str index into text
    expected: str  # the removed text that belongs at the cursor

    @property
    def original(self) -> str:
        return self.text[: self.offset] + self.expected + self.text[self.offset :]



def default_files() -> Path:
    """This Python's standard library (the default benchmark source)."""
    return Path(sysconfig.get_paths()["stdlib"])


def collect_files(root: Path, count: int, seed: int, *, min_chars: int = 2_000,
                  max_chars: int = 60_000) -> list[Path]:
    """A seeded sample of up to `count` source files under root (a file: just that file)."""
    if root.is_file():
        return [root]
    candidates = []
    skip = ("__pycache__", "site-packages", "dist-packages", "node_modules", "idlelib")
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "test"))
                             and d not in skip)
        for name in sorted(filenames):
            path = Path(dirpath) / name
            if language_id_for_path(name) == "plaintext":
                continue
            try:
                size = path.stat().st_size
            except OSError:
                continue
            if min_chars <= size <= max_chars:
                candidates.append(path)
    rng = random.Random(seed)
    rng.shuffle(candidates)
    return sorted(candidates[:count])


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" \t"))


def text_rows(text: str, language_id: str) -> set[int]:
    """Rows inside multi-line strings and comments (docstrings): not where people wait for code."""
    from ..languages import syntax_for

    syntax = syntax_for(language_id)
    if syntax is None:
        return set()
    rows: set[int] = set()
    stack = [syntax.parser().parse(text.encode("utf-8")).root_node]
    while stack:
        node = stack.pop()
        if node.type in ("string", "comment", "template_string", "raw_string_literal",
                         "interpreted_string_literal", "block_comment", "string_literal"):
            if node.end_point[0] > node.start_point[0]:
                rows.update(range(node.start_point[0], node.end_point[0] + 1))
            continue
        stack.extend(node.children)
    return rows


def _candidates(lines: list[str], kind: str, excluded: set[int] = frozenset()) -> list[int]:
    """Line indexes where a sample of `kind` can be cut (none inside `excluded` rows)."""
    found = []
    for i, line in enumerate(lines):
        if i in excluded or i + 1 in excluded and kind in ("end-of-line", "block-opener"):
            continue
        code = line.rstrip()
        body = code.strip()
        if not body or body.startswith(("#", "//", "*", "/*", '"""', "'''")):
            continue
        following = lines[i + 1] if i + 1 < len(lines) else ""
        deeper = following.strip() and _indent(following) > _indent(line)
        if kind == "mid-line" and len(body) >= 12:
            found.append(i)
        elif kind == "end-of-line" and _CONTINUES.search(code) and deeper:
            found.append(i)
        elif kind == "block-opener" and _OPENS_BLOCK.search(code) and deeper:
            found.append(i)
        elif kind == "empty-line" and _indent(line) > 0 and i > 0 and lines[i - 1].strip() \
                and _indent(lines[i - 1]) == _indent(line):
            found.append(i)
    return found


def cut_sample(text: str, path: str, kind: str, line_index: int,
               rng: random.Random) -> Sample | None:
    """The sample of `kind` at a line of `text` (see the module docstring), or None."""
    lines = text.split("\n")
    starts = [0]
    for line in lines[:-1]:
        starts.append(starts[-1] + len(line) + 1)
    line = lines[line_index]
    start = starts[line_index]
    language_id = language_id_for_path(path)
    if kind == "mid-line":
        lo = start + _indent(line) + 1
        hi = start + len(line.rstrip()) - 1
        if hi <= lo:
            return None
        cursor = rng.randrange(lo, hi)
        end = start + len(line)
        return Sample(kind=kind, path=path, language_id=language_id,
                      text=text[:cursor] + text[end:], offset=cursor, expected=text[cursor:end])
    if kind == "empty-line":
        cursor = start + _indent(line)
        end = start + len(line)
        return Sample(kind=kind, path=path, language_id=language_id,
                      text=text[:cursor] + text[end:], offset=cursor, expected=text[cursor:end])
    # end-of-line and block-opener: remove the deeper-indented lines that follow
    level = _indent(line)
    last = line_index
    for j in range(line_index + 1, len(lines)):
        if lines[j].strip() and _indent(lines[j]) <= level:
            break
        if lines[j].strip():
            last = j
    if last == line_index:
        return None
    if last - line_index > 40:  # a whole class body: not what people wait for
        last = line_index + 40
        while last > line_index + 1 and not lines[last].strip():
            last -= 1
    removed_end = starts[last] + len(lines[last])
    line_end = start + len(line)
    if kind == "end-of-line":
        cursor = line_end
        return Sample(kind=kind, path=path, language_id=language_id,
                      text=text[:cursor] + text[removed_end:], offset=cursor,
                      expected=text[cursor:removed_end])
    # block-opener: the user pressed Enter after the opener; the editor indented the new line
    body_indent = lines[line_index + 1][: _indent(lines[line_index + 1])]
    cursor = line_end + 1 + len(body_indent)
    body = text[cursor:removed_end]
    new_text = text[:line_end] + "\n" + body_indent + text[removed_end:]
    return Sample(kind=kind, path=path, language_id=language_id, text=new_text,
                  offset=cursor, expected=body)


def sample_positions(files: Sequence[Path], count: int, seed: int,
                     kinds: Sequence[str] = KINDS) -> list[Sample]:
    """`count` samples, kinds in turn, files and lines drawn with a seeded generator."""
    rng = random.Random(seed)
    texts: dict[Path, str] = {}
    for path in files:
        try:
            texts[path] = path.read_text(encoding="utf-8").replace("\r\n", "\n")
        except (OSError, UnicodeDecodeError):
            continue
    if not texts:
        return []
    paths = sorted(texts)
    excluded = {p: text_rows(texts[p], language_id_for_path(p.name)) for p in paths}
    samples: list[Sample] = []
    attempts = 0
    while len(samples) < count and attempts < count * 50:
        attempts += 1
        kind = kinds[len(samples) % len(kinds)]
        path = rng.choice(paths)
        lines = texts[path].split("\n")
        found = _candidates(lines, kind, excluded[path])
        if not found:
            continue
        sample = cut_sample(texts[path], str(path), kind, rng.choice(found), rng)
        if sample is not None and sample.expected.strip():
            samples.append(sample)
    return samples


def exact_match(sample: Sample, start: int, end: int, insert: str) -> bool:
    """Whether accepting the suggestion gives back what the user wrote (up to trailing
    whitespace), judged on the whole document so that replaced closers count right."""
    if not insert:
        return False
    return same_text(apply_edit(sample.text, start, end, insert), sample.original)
