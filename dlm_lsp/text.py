"""Plain-text helpers the planner and the postprocessor share: lines, and one lexer.

Lines end at ``\\n``, ``\\r\\n`` or ``\\r`` (as LSP counts them). The lexer (`tokens`) finds the
brackets that lie outside strings and comments, and the strings and comments themselves, with
rough, language-aware rules: a quote ends at its line's end unless the string is triple-quoted
(Python) or backticked; a Rust lifetime (``'a``) is no char literal; comments are ``#`` and/or
``//`` (and ``/* */`` in brace languages). Without a language, only strings are lexed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import NamedTuple

OPENERS = {"(": ")", "[": "]", "{": "}"}  # an opening bracket and its closer
BRACKETS = "([{)]}"
QUOTES = "\"'`"
BRACE_LANGUAGES = frozenset(
    {"javascript", "javascriptreact", "typescript", "typescriptreact", "go", "rust"}
)
_RUST_CHAR = re.compile(r"'(\\.[^']{0,8}|[^\\'])'")  # a char literal, not a lifetime `'a`


# ---------------------------------------------------------------------------- lines


def line_start(text: str, pos: int) -> int:
    """Offset of the start of the line holding `pos` (\\n, \\r\\n and \\r end lines)."""
    return max(text.rfind("\n", 0, pos), text.rfind("\r", 0, pos)) + 1


def line_end(text: str, pos: int) -> int:
    """Offset of the end of the line holding `pos`, before its line break."""
    ends = [i for i in (text.find("\n", pos), text.find("\r", pos)) if i >= 0]
    return min(ends) if ends else len(text)


def previous_line_start(text: str, start: int) -> int:
    """Start of the line before the one starting at `start` (which must be > 0)."""
    back = start - 1
    if text[back] == "\n" and back > 0 and text[back - 1] == "\r":
        back -= 1
    return line_start(text, back)


def next_line_start(text: str, end: int) -> int:
    """Start of the line after the one ending (before its break) at `end`."""
    if text.startswith("\r\n", end):
        return end + 2
    return min(end + 1, len(text))


def indent_of(line: str) -> int:
    """Leading whitespace characters of a line."""
    return len(line) - len(line.lstrip(" \t"))


def split_lines(text: str) -> list[str]:
    """The lines of a text whose line breaks are all ``\\n`` (a completion being trimmed)."""
    return text.split("\n")


# ---------------------------------------------------------------------------- the lexer


class Token(NamedTuple):
    """A bracket, string or comment found by `tokens`: ``text[start:stop]``."""

    kind: str  # "bracket", "string" or "comment"
    start: int
    stop: int  # just after its end: the closing quote, the line end, or the lexed text's end
    closed: bool  # a string's closing quote or a block comment's `*/` was found before `end`


def comment_markers(language_id: str | None) -> tuple[str, ...]:
    """Line-comment markers of a language (none without a language)."""
    if language_id is None:
        return ()
    if language_id == "python":
        return ("#",)
    if language_id in BRACE_LANGUAGES:
        return ("//",)
    return ("#", "//")


def _string_stop(text: str, i: int, end: int, quote: str, triple: bool) -> tuple[int, bool]:
    """Where a string whose body starts at `i` stops, and whether its quote closed it."""
    if triple:
        close = text.find(quote * 3, i, end)
        return (end, False) if close < 0 else (close + 3, True)
    stop = end if quote == "`" else min(end, line_end(text, i))
    j = i
    while j < stop:
        if text[j] == "\\":
            j += 2
        elif text[j] == quote:
            return j + 1, True
        else:
            j += 1
    return (end if stop >= end else stop), False


def tokens(text: str, start: int = 0, end: int | None = None, language_id: str | None = None,
           quote: str | None = None) -> Iterator[Token]:
    """The brackets, strings and comments of ``text[start:end]``, in order.

    `quote`: the text starts inside a string opened (before `start`) with that quote.
    """
    end = len(text) if end is None else end
    comments = comment_markers(language_id)
    i = start
    if quote is not None:
        stop, closed = _string_stop(text, start, end, quote, False)
        yield Token("string", start, stop, closed)
        i = stop
    while i < end:
        c = text[i]
        if c in BRACKETS:
            yield Token("bracket", i, i + 1, True)
        elif c in QUOTES:
            if c == "'" and language_id == "rust" and not _RUST_CHAR.match(text, i):
                i += 1  # a lifetime
                continue
            triple = language_id == "python" and text.startswith(c * 3, i)
            stop, closed = _string_stop(text, i + (3 if triple else 1), end, c, triple)
            yield Token("string", i, stop, closed)
            i = stop
            continue
        elif comments and any(text.startswith(m, i) for m in comments):
            stop = line_end(text, i)
            yield Token("comment", i, min(stop, end), stop < end)
            i = stop
            continue
        elif c == "/" and text.startswith("/*", i) and language_id in BRACE_LANGUAGES:
            close = text.find("*/", i + 2, end)
            yield Token("comment", i, end if close < 0 else close + 2, close >= 0)
            if close < 0:
                return
            i = close + 2
            continue
        i += 1
