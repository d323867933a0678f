"""The context cache: each open document's last encoded context, so a keystroke re-encodes
only what changed.

A causal model's context keys/values of a token depend only on the tokens before it (model
format 2). When a request's context starts with the same tokens at the same positions as the
document's last one, those keys/values are still exact; the runtime encodes the rest against
them (`OnnxDenoiser.extend`). Typing at the end of the prefix changes its last token or two,
so a keystroke encodes those and the suffix (its positions shift as the prefix grows).

Bounded: least recently used documents go first when the states exceed `max_bytes` or
`max_documents`; a closed document, a model change, and low system memory drop states. An
entry is replaced whole, only once its encoding finished, so a request that was cancelled
or failed leaves the previous entry as it was.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

LOW_MEMORY_BYTES = 256 * 2**20  # below this much available memory, states are dropped


@dataclass(frozen=True)
class EncodedContext:
    """One document's last context: its tokens, their positions, and the runtime's state."""

    ids: np.ndarray  # (S,) int64
    positions: np.ndarray  # (S,) int64
    state: Any  # the runtime's ContextState for exactly these tokens
    nbytes: int  # memory the state holds


def shared_head(ids: Sequence[int], positions: Sequence[int], cached: EncodedContext) -> int:
    """How many leading tokens of (ids, positions) the cached context has, same id at the
    same position: the keys/values a causal model can reuse."""
    n = min(len(ids), len(cached.ids))
    same = (np.asarray(ids[:n], np.int64) == cached.ids[:n]) & \
        (np.asarray(positions[:n], np.int64) == cached.positions[:n])
    differ = np.flatnonzero(~same)
    return int(differ[0]) if differ.size else n


def memory_is_low(threshold: int = LOW_MEMORY_BYTES) -> bool:
    """Whether the system has less than `threshold` bytes available (False if unknown)."""
    try:
        import psutil

        return psutil.virtual_memory().available < threshold
    except Exception:  # psutil missing or unable to tell
        return False


class ContextCache:
    """Encoded contexts per document (uri), LRU-bounded in bytes and documents; thread-safe."""

    def __init__(self, max_bytes: int, max_documents: int = 32,
                 memory_is_low: Callable[[], bool] = memory_is_low) -> None:
        self.max_bytes = max_bytes
        self.max_documents = max_documents
        self._memory_is_low = memory_is_low
        self._entries: OrderedDict[str, EncodedContext] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        """Memory the cached states hold."""
        with self._lock:
            return sum(entry.nbytes for entry in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, uri: str) -> EncodedContext | None:
        """The document's last encoded context (now the most recently used), or None."""
        with self._lock:
            entry = self._entries.get(uri)
            if entry is not None:
                self._entries.move_to_end(uri)
            return entry

    def put(self, uri: str, entry: EncodedContext) -> None:
        """Make `entry` the document's context; evict the least recently used over bounds.

        An entry larger than the whole budget is not kept; under memory pressure nothing is.
        """
        with self._lock:
            self._entries.pop(uri, None)
            if self._memory_is_low():
                self._entries.clear()
                return
            if entry.nbytes > self.max_bytes:
                return
            self._entries[uri] = entry
            used = sum(e.nbytes for e in self._entries.values())
            while used > self.max_bytes or len(self._entries) > self.max_documents:
                _, dropped = self._entries.popitem(last=False)
                used -= dropped.nbytes

    def forget(self, uri: str) -> None:
        """Drop a document's context (it was closed)."""
        with self._lock:
            self._entries.pop(uri, None)

    def clear(self) -> None:
        """Drop every context (the model changed, or the cache was turned off)."""
        with self._lock:
            self._entries.clear()


class DocumentDenoiser:
    """The runtime as one request on one document sees it (the sampler's `DenoiserRuntime`).

    `encode` starts from the document's cached context when the runtime can extend one (a
    causal model) and leaves the new context in the cache; without a cache (or a uri) it
    encodes the whole context. Either way it counts what it did for `dlm/status`.
    """

    def __init__(self, runtime: Any, cache: ContextCache | None, uri: str | None) -> None:
        self.runtime = runtime
        self.cache = cache if uri is not None and getattr(runtime, "incremental", False) else None
        self.uri = uri
        self.context_tokens = 0  # the last context's length
        self.encoded_tokens = 0  # how many of its tokens ran through the encoder

    @property
    def returns_logits(self) -> bool:
        return bool(getattr(self.runtime, "returns_logits", False))

    def encode(self, layout) -> Any:
        ids, positions = layout.context_ids, layout.context_positions
        self.context_tokens = self.encoded_tokens = len(ids)
        if self.cache is None:
            return self.runtime.encode(layout)
        cached = self.cache.get(self.uri)
        keep = shared_head(ids, positions, cached) if cached is not None else 0
        state = self.runtime.extend(cached.state if cached is not None else None, keep, layout)
        self.encoded_tokens = len(ids) - keep
        self.cache.put(self.uri, EncodedContext(
            np.asarray(ids, np.int64), np.asarray(positions, np.int64), state,
            int(getattr(state, "nbytes", 0))))
        return state

    @property
    def appends(self) -> bool:
        """Whether committed canvas tokens can join the context without an encoder call."""
        return bool(getattr(self.runtime, "appends", False))

    def denoise_step(self, state, canvas_ids, canvas_positions, need_logits: bool = False,
                     keep_canvas: bool = False):
        extra = {"need_logits": True} if need_logits else {}
        if keep_canvas:
            extra["keep_canvas"] = True
        return self.runtime.denoise_step(state, canvas_ids, canvas_positions, **extra)

    def visible_features(self, state, start: int = 0):
        """The runtime's `visible_features` (a feature drafter's context), or None."""
        read = getattr(self.runtime, "visible_features", None)
        return read(state, start) if read is not None else None

    @property
    def masks(self) -> bool:
        """Whether a state can be seen through another context mask (`masked`)."""
        return hasattr(self.runtime, "masked")

    def masked(self, state, visible):
        """The runtime's `masked`: `state` under another context mask."""
        return self.runtime.masked(state, visible)

    def append_canvas(self, state, canvas, count: int):
        """The runtime's `append_canvas`: this request's state, not the document's cached
        one (the cache holds the document's text, not a request's canvas)."""
        return self.runtime.append_canvas(state, canvas, count)
