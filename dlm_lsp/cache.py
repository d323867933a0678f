"""The typing-through cache: a suggestion the user is typing through needs no model call.

When a completion was shown at offset `o` and the user then types characters that match its
start, the new request sits at `o + k` with the same text before `o` and the same text after
the cursor: the answer is the rest of the shown suggestion (Copilot and Tabby do the same).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass

from .postprocess import Completion


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


@dataclass(frozen=True)
class _Shown:
    offset: int  # cursor offset when it was shown
    before: bytes  # digest of the text before the cursor
    after: bytes  # digest of the text after the replaced range
    completion: Completion


class TypingCache:
    """Last shown completion per document, bounded to `capacity` documents."""

    def __init__(self, capacity: int = 64) -> None:
        self._shown: OrderedDict[str, _Shown] = OrderedDict()
        self._capacity = capacity

    def remember(self, uri: str, text: str, offset: int, completion: Completion) -> None:
        """Record the completion shown for `uri` at `offset`."""
        self._shown[uri] = _Shown(
            offset, _digest(text[:offset]), _digest(text[completion.end :]), completion
        )
        self._shown.move_to_end(uri)
        while len(self._shown) > self._capacity:
            self._shown.popitem(last=False)

    def lookup(self, uri: str, text: str, offset: int) -> Completion | None:
        """The rest of the shown completion if the user typed through its start, else None."""
        shown = self._shown.get(uri)
        if shown is None or offset < shown.offset:
            return None
        typed = text[shown.offset : offset]
        rest = shown.completion.text
        if not rest.startswith(typed) or len(typed) >= len(rest):
            return None
        closers = shown.completion.end - shown.completion.start
        end = offset + closers
        if _digest(text[: shown.offset]) != shown.before or _digest(text[end:]) != shown.after:
            return None
        return Completion(text=rest[len(typed) :], start=offset, end=end)

    def forget(self, uri: str) -> None:
        """Drop what was shown for a closed document."""
        self._shown.pop(uri, None)
