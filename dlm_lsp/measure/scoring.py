"""How a generated middle is scored, the same way in `bench` and `eval`: equal up to trailing
whitespace (on every line and at the end), and an edit similarity for near misses."""

from __future__ import annotations

import difflib


def normalize(text: str) -> str:
    """Drop trailing whitespace on every line and at the end (what exact match ignores)."""
    return "\n".join(line.rstrip() for line in text.split("\n")).rstrip()


def exact_match(generated: str, expected: str) -> bool:
    """Whether two texts are equal up to trailing whitespace."""
    return normalize(generated) == normalize(expected)


def similarity(generated: str, expected: str) -> float:
    """Character-level edit similarity in [0, 1] (difflib's ratio) of the normalised texts."""
    return difflib.SequenceMatcher(None, normalize(generated), normalize(expected)).ratio()


def apply_edit(text: str, start: int, end: int, insert: str) -> str:
    """`text` with [start, end) replaced by `insert`."""
    return text[:start] + insert + text[end:]
