"""Open buffers: text, language and an incrementally re-parsed tree-sitter tree.

LSP positions are (line, character) where `character` counts UTF-16 code units unless the client
negotiated "utf-8" or "utf-32"; lines end at ``\\n``, ``\\r\\n`` or ``\\r``. They are converted to
Python ``str`` offsets here, once, and nowhere else. Tree-sitter counts UTF-8 bytes and rows split
on ``\\n`` only; those are computed here too, for ``tree.edit``.

A `Snapshot` is immutable: the tree it holds is never edited (a change edits a copy), so worker
threads may read it while the protocol thread applies the next keystroke.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import tree_sitter

from dlm_lsp.languages import Syntax, syntax_for

log = logging.getLogger(__name__)

Position = tuple[int, int]
Range = tuple[Position, Position]

ENCODINGS = ("utf-8", "utf-16", "utf-32")
MAX_PARSE_BYTES = 2_000_000  # above this a buffer keeps no tree (parse time grows linearly)

_LINE_BREAK = re.compile(r"\r\n|\r|\n")


class PositionError(ValueError):
    """A position with a negative line or character."""


class UnknownDocument(KeyError):
    """A uri that is not open."""


def _utf8(text: str) -> bytes:
    # surrogatepass: a client may send a lone surrogate in JSON; it must not crash the store
    return text.encode("utf-8", "surrogatepass")


def _units(text: str, encoding: str) -> int:
    """Length of `text` in the code units of `encoding`."""
    if encoding == "utf-32" or text.isascii():
        return len(text)
    if encoding == "utf-16":
        return len(text.encode("utf-16-le", "surrogatepass")) // 2
    return len(_utf8(text))


def _unit_width(char: str, encoding: str) -> int:
    code = ord(char)
    if encoding == "utf-16":
        return 2 if code > 0xFFFF else 1
    if encoding == "utf-8":
        return 1 if code < 0x80 else 2 if code < 0x800 else 3 if code < 0x10000 else 4
    return 1


@dataclass(frozen=True)
class LineIndex:
    """Where each line starts in a text (offsets after each line break), kept as an int array."""

    starts: np.ndarray  # (lines,) int64, starts[0] == 0

    @classmethod
    def build(cls, text: str) -> LineIndex:
        """Index every line of `text`."""
        ends = [m.end() for m in _LINE_BREAK.finditer(text)]
        return cls(np.array([0, *ends], dtype=np.int64))

    def edited(
        self, old_text: str, start: int, end: int, new_text: str, inserted: int
    ) -> LineIndex:
        """The index after `old_text[start:end]` was replaced by `inserted` chars of `new_text`.

        Only the lines around the edit are re-scanned; the later starts shift by the length
        change. The re-scan begins one line early because a ``\\r`` before the edit may pair
        with a ``\\n`` the edit inserts (or lose the one it deletes).
        """
        starts = self.starts
        first = max(int(np.searchsorted(starts, max(start - 1, 0), side="right")) - 1, 0)
        after = int(np.searchsorted(starts, end, side="right"))  # first start past the edit
        delta = inserted - (end - start)
        lo = int(starts[first])
        hi = int(starts[after]) + delta if after < len(starts) else len(new_text)
        # an old start past the edit follows an unchanged break, so it stays a start
        last = hi if after < len(starts) else hi + 1
        middle = [m.end() for m in _LINE_BREAK.finditer(new_text, lo, hi) if m.end() < last]
        return LineIndex(
            np.concatenate(
                (starts[: first + 1], np.array(middle, dtype=np.int64), starts[after:] + delta)
            )
        )

    def __len__(self) -> int:
        return len(self.starts)

    def line_of(self, offset: int) -> int:
        """The line that holds `offset`."""
        return int(np.searchsorted(self.starts, offset, side="right")) - 1

    def content_end(self, text: str, line: int) -> int:
        """Offset of the end of `line`, before its line break."""
        if line + 1 >= len(self.starts):
            return len(text)
        end = int(self.starts[line + 1])
        if text[end - 2 : end] == "\r\n":
            return end - 2
        return end - 1


@dataclass(frozen=True)
class Snapshot:
    """An immutable view of one buffer, safe to hand to a worker thread."""

    uri: str
    language_id: str
    version: int
    text: str
    tree: tree_sitter.Tree | None  # never edited after the snapshot is taken
    syntax: Syntax | None
    encoding: str = "utf-16"
    lines: LineIndex | None = field(default=None, compare=False, repr=False)

    def _index(self) -> LineIndex:
        if self.lines is None:
            object.__setattr__(self, "lines", LineIndex.build(self.text))
        return self.lines  # type: ignore[return-value]

    def offset_at(self, line: int, character: int) -> int:
        """The str offset of an LSP position, clamped past-the-end like LSP says.

        1. negative values are errors;
        2. a line past the last one is the end of the document;
        3. the line's content runs from its start to its line break;
        4. count code units along the line; a character past its end clamps to the end, one
           inside a multi-unit code point (half a surrogate pair) rounds to that code point.
        """
        if line < 0 or character < 0:
            raise PositionError(f"negative position ({line}, {character})")
        index = self._index()
        if line >= len(index):
            return len(self.text)
        start = int(index.starts[line])
        end = index.content_end(self.text, line)
        if self.encoding == "utf-32" or self.text[start:end].isascii():
            return min(start + character, end)
        units = 0
        for i in range(start, end):
            width = _unit_width(self.text[i], self.encoding)
            if units + width > character:
                return i
            units += width
        return end

    def position_at(self, offset: int) -> tuple[int, int]:
        """The LSP (line, character) of a str offset (clamped into the document)."""
        offset = min(max(offset, 0), len(self.text))
        index = self._index()
        line = index.line_of(offset)
        start = int(index.starts[line])
        return line, _units(self.text[start:offset], self.encoding)

    def range_offsets(self, rng: Range) -> tuple[int, int]:
        """Offsets of an LSP range, ordered."""
        (l0, c0), (l1, c1) = rng
        a, b = self.offset_at(l0, c0), self.offset_at(l1, c1)
        return (a, b) if a <= b else (b, a)


def _point(text: str, offset: int) -> tuple[int, int]:
    """Tree-sitter point (row by ``\\n``, UTF-8 byte column) of a str offset."""
    row = text.count("\n", 0, offset)
    line_start = text.rfind("\n", 0, offset) + 1
    return row, len(_utf8(text[line_start:offset]))


@dataclass
class _Buffer:
    """The mutable state behind a uri: the latest snapshot and its parser."""

    snapshot: Snapshot
    parser: tree_sitter.Parser | None
    warned_size: bool = False


class DocumentStore:
    """Every open buffer, kept in sync with the editor through incremental changes."""

    def __init__(self, encoding: str = "utf-16", max_parse_bytes: int = MAX_PARSE_BYTES):
        if encoding not in ENCODINGS:
            raise ValueError(f"unknown position encoding {encoding!r}")
        self.encoding = encoding
        self.max_parse_bytes = max_parse_bytes
        self._buffers: dict[str, _Buffer] = {}
        self._lock = threading.Lock()

    def open(self, uri: str, language_id: str, version: int, text: str) -> Snapshot:
        """Start tracking a buffer (re-opening replaces it) and parse it."""
        syntax = syntax_for(language_id)
        buffer = _Buffer(
            Snapshot(uri, language_id, version, text, None, syntax, self.encoding),
            syntax.parser() if syntax else None,
        )
        tree = self._parse(buffer, text, None)
        buffer.snapshot = Snapshot(
            uri, language_id, version, text, tree, syntax, self.encoding, LineIndex.build(text)
        )
        with self._lock:
            self._buffers[uri] = buffer
        return buffer.snapshot

    def change(
        self, uri: str, version: int, changes: Sequence[tuple[Range | None, str]]
    ) -> Snapshot:
        """Apply LSP content changes in order (range None = the whole text) and re-parse."""
        with self._lock:
            buffer = self._buffers.get(uri)
        if buffer is None:
            raise UnknownDocument(uri)
        old = buffer.snapshot
        text, lines = old.text, old._index()
        tree = old.tree.copy() if old.tree is not None else None  # the snapshot's stays intact
        for rng, new in changes:
            if rng is None:
                text, lines, tree = new, LineIndex.build(new), None
                continue
            view = Snapshot(uri, old.language_id, version, text, None, None, self.encoding, lines)
            start, end = view.range_offsets(rng)
            updated = text[:start] + new + text[end:]
            if tree is not None:
                tree.edit(
                    start_byte=len(_utf8(text[:start])),
                    old_end_byte=len(_utf8(text[:end])),
                    new_end_byte=len(_utf8(updated[: start + len(new)])),
                    start_point=_point(text, start),
                    old_end_point=_point(text, end),
                    new_end_point=_point(updated, start + len(new)),
                )
            lines = lines.edited(text, start, end, updated, len(new))
            text = updated
        tree = self._parse(buffer, text, tree)
        buffer.snapshot = Snapshot(
            uri, old.language_id, version, text, tree, old.syntax, self.encoding, lines
        )
        return buffer.snapshot

    def close(self, uri: str) -> None:
        """Forget a buffer (unknown uris are ignored)."""
        with self._lock:
            self._buffers.pop(uri, None)

    def get(self, uri: str) -> Snapshot:
        """The latest snapshot of an open buffer."""
        with self._lock:
            buffer = self._buffers.get(uri)
        if buffer is None:
            raise UnknownDocument(uri)
        return buffer.snapshot

    def uris(self) -> list[str]:
        """Open buffers."""
        with self._lock:
            return list(self._buffers)

    def __len__(self) -> int:
        """How many buffers are open."""
        with self._lock:
            return len(self._buffers)

    def _parse(
        self, buffer: _Buffer, text: str, edited: tree_sitter.Tree | None
    ) -> tree_sitter.Tree | None:
        """Parse `text`, reusing `edited` (an old tree already told about the edits)."""
        if buffer.parser is None:
            return None
        if len(text) > self.max_parse_bytes or len(source := _utf8(text)) > self.max_parse_bytes:
            if not buffer.warned_size:
                log.warning("%s is over %d bytes: no syntax tree", buffer.snapshot.uri,
                            self.max_parse_bytes)
                buffer.warned_size = True
            return None
        try:
            return buffer.parser.parse(source, edited) if edited else buffer.parser.parse(source)
        except (ValueError, RuntimeError) as exc:  # a parse must never take the buffer down
            log.warning("parse of %s failed: %s", buffer.snapshot.uri, exc)
            return None
