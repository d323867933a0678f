"""Random editor-like edits and an independent reference for what they must produce.

The reference never converts an LSP position to an offset: it picks *offsets* in its own copy of
the text, applies the edit there (plain string slicing), and derives the LSP positions it sends
from those offsets (line = line breaks before the offset, character = UTF-16 code units since the
line start). So the server's position conversion, line index and incremental re-parse are all
checked against slicing, which cannot be wrong.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

LINE_BREAK = re.compile(r"\r\n|\r|\n")

PIECES = (
    "\n", "\n", "\r\n", "\r", "    ", "\t", " ", "x", "y = 1", "def f(a, b):\n    ", "return a\n",
    "class K:\n", "if x:\n        pass\n", "(", ")", "[", "]", "{", "}", ":", ",", "'", '"', "#",
    "😀", "中文字", "é", "ß", "𝔘", "\u2028", "\x00", "import os\n", "for i in range(3):\n",
    "    # comment 😀\n", "s = '中'\n", "\\", "lambda: 0", "\"\"\"doc\"\"\"\n",
)

START_TEXT = (
    "import os\n\n\ndef mean(xs):\n    total = 0\n    for x in xs:\n        total += x\n"
    "    return total / len(xs)  # 😀 平均\n\r\nclass A:\r\n    def f(self):\r\n        pass\n"
)


def units(text: str) -> int:
    """UTF-16 code units of `text` (lone surrogates count one, as an editor would send them)."""
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def position_of(text: str, offset: int) -> tuple[int, int]:
    """The LSP (line, UTF-16 character) of a str offset, computed by scanning from the start."""
    line, start = 0, 0
    for match in LINE_BREAK.finditer(text, 0, offset):
        if match.end() > offset:
            break
        line, start = line + 1, match.end()
    return line, units(text[start:offset])


def valid_offset(text: str, offset: int) -> int:
    """`offset`, moved off the middle of a \\r\\n (which is no LSP position)."""
    if 0 < offset < len(text) and text[offset - 1] == "\r" and text[offset] == "\n":
        return offset - 1
    return offset


@dataclass
class Edit:
    """One LSP content change and the text it must produce."""

    change: dict  # the wire form: {"range": ..., "text": ...} or {"text": ...}
    rng: tuple[tuple[int, int], tuple[int, int]] | None  # the DocumentStore form
    text: str  # what the replaced range becomes
    expected: str  # the whole document after the edit
    start: int = 0  # the replaced range, as str offsets in the text before the edit
    end: int = 0


def random_insert_text(rnd: random.Random) -> str:
    return "".join(rnd.choice(PIECES) for _ in range(rnd.choice((1, 1, 1, 2, 3, 6))))


def random_edit(rnd: random.Random, text: str, *, max_len: int = 4000) -> Edit:
    """An insertion, deletion, replacement, out-of-range or whole-text change of `text`."""
    kind = rnd.random()
    if kind < 0.005:
        new = random_insert_text(rnd) * rnd.randint(1, 20)
        return Edit({"text": new}, None, new, new, 0, len(text))
    start = valid_offset(text, rnd.randint(0, len(text)))
    shrink = len(text) > max_len
    if kind < 0.45 and not shrink:  # insertion
        end, new = start, random_insert_text(rnd)
    elif kind < 0.85:  # deletion, sometimes across lines
        end = valid_offset(text, min(len(text), start + rnd.choice((1, 1, 2, 5, 20, 200))))
        new = ""
    else:  # replacement
        end = valid_offset(text, min(len(text), start + rnd.randint(0, 30)))
        new = random_insert_text(rnd)
    (sl, sc), (el, ec) = position_of(text, start), position_of(text, end)
    expected = text[:start] + new + text[end:]
    roll = rnd.random()
    if roll < 0.03 and end == len(text):  # past the end: a far line clamps to the end
        el, ec = el + rnd.randint(1, 1000), rnd.randint(0, 10**6)
    elif roll < 0.06 and end == start and _at_line_end(text, end):  # past the line's end
        extra = rnd.randint(1, 500)
        sc, ec = sc + extra, ec + extra
    elif roll < 0.08:  # reversed range: the store orders it
        (sl, sc), (el, ec) = (el, ec), (sl, sc)
    rng = ((sl, sc), (el, ec))
    wire = {"range": {"start": {"line": sl, "character": sc},
                      "end": {"line": el, "character": ec}}, "text": new}
    return Edit(wire, rng, new, expected, start, end)


def _at_line_end(text: str, offset: int) -> bool:
    return offset == len(text) or text[offset] in "\r\n"
