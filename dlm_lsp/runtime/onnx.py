"""The ONNX Runtime denoiser: encoder and decoder sessions behind the `DenoiserRuntime` protocol.

Provider choice: CUDA when the installed onnxruntime offers it and a session really gets it
(checked with `sess.get_providers()` after creation, since ORT silently falls back to the CPU
when CUDA libraries are missing), else CPU. Both paths use IO binding: on CUDA the context's
keys/values stay on the device between denoise steps and only the small per-position outputs
come back to the host; on the CPU binding simply avoids copying them per step.

A causal model (format 2) can extend an encoded context: `extend` encodes only the context
tokens from the first one that differs, against the keys/values of those before it (the
engine keeps one such state per document). `encode_batch` and `denoise_step_batch` run several
requests in one call, contexts and canvases right-padded under masks.

A fused decoder (model_export/fused.py: GroupQueryAttention, which takes several new tokens on
a past only at batch 1) says so in its metadata (`ROWS_PER_CALL`): its batches run row by
row. It also returns its inputs' own keys/values on request, so a step can append the canvas
tokens it committed to the context (`append_canvas`) instead of re-sending them every step.

A fused decoder with per-layer key/value buffers (`past_key_{l}` inputs, bound as their own
`present_key_{l}` outputs) copies no cache per call: GroupQueryAttention reads the context
from the buffer and writes the canvas's keys/values after it, in place. A state then lives in
a `KVStore` with room after its length; a call writes into that room (scratch: a later call
overwrites it), and `append_canvas` after the call only moves the state's length over what the
call wrote. One state of a store is its *head*, the last one made on it: only the head may
write, so a state that is not (a document's cached context, the state a request started
from) is first copied into a store of its own, once.

A buffered decoder that takes `predict_rows` (the canvas positions whose predictions a call
returns) is also the encoder: the card names the same file for both (`GraphFiles.one_graph`).
A context is then encoded by decoder calls that predict nothing, piece by piece, straight
into a store's buffers; one session holds the weights once (the two sessions each prepacked
their own copy: ~90 MB and half the load time).
"""

from __future__ import annotations

import logging
import os
import sys
import weakref
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..layout import Layout, decoder_masks, pad_contexts
from ..modelcard import (CANVAS_KEYS, CANVAS_MASK, CANVAS_VALUES, DECODER_INPUTS,
                         DECODER_OUTPUTS, ENCODER_INPUTS, ENCODER_OUTPUTS, FEATURES, LOGITS,
                         PAST_INPUTS, PREDICT_ROWS, ROWS_PER_CALL, GraphFiles, ModelCard,
                         ModelError)

log = logging.getLogger(__name__)

# positions a KVStore keeps free after the context it is made for: a whole canvas of
# appended tokens (the largest bucket) and the call after them
BUFFER_ROOM = 160
# context tokens per encoder call when a causal context is encoded (or extended) in pieces:
# as fast as one 512-token call, and ~33 MB less arena (measured, 1 thread)
ENCODE_PIECE = 128


def _import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:  # pragma: no cover - a broken install
        raise ModelError(
            "onnxruntime is not installed: pip install onnxruntime (or onnxruntime-gpu)"
        ) from exc
    return onnxruntime


def _cpu_threads(requested: int) -> int:
    if requested > 0:
        return requested
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
    except Exception:  # psutil missing or unable to tell
        physical = None
    return max(1, min(physical or os.cpu_count() or 1, 8))


def _cuda_driver_present() -> bool:
    """Whether an NVIDIA driver is loadable; without one a CUDA session cannot start, and
    trying costs a second of loading the fp16 graphs for nothing."""
    import ctypes

    try:
        ctypes.CDLL("libcuda.so.1")
        return True
    except OSError:
        return os.name == "nt"  # Windows: let ORT try


_malloc_bounded = False
_malloc_trim: Any = None  # glibc's malloc_trim, found on first use (False: none)


def bound_malloc() -> None:
    """Keep glibc's malloc from holding what the model's calls free (once per process, on
    Linux, unless the user set MALLOC_ARENA_MAX or MALLOC_MMAP_THRESHOLD_ themselves).

    Without ONNX Runtime's arena every call allocates and frees its activations through
    malloc, from whichever worker thread runs it (`asyncio.to_thread`). glibc gives each
    thread an arena of its own and keeps the freed pieces of each, and it raises its mmap
    threshold after the first large free, so later logits and key/value buffers stay in the
    heaps too. `benchmarks/soak.py` then grew 459 → 665 MB in 71 s (measured). At most 2
    arenas, and buffers of 1 MB or more always mmapped (given back on free): 307–353 MB over
    the same 90 s. Called before the server's threads start (`create_server`): arenas that
    exist by then stay."""
    global _malloc_bounded
    if _malloc_bounded or not sys.platform.startswith("linux"):
        return
    _malloc_bounded = True
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl): nothing to tune
        return
    if "MALLOC_ARENA_MAX" not in os.environ:
        mallopt(-8, 2)  # M_ARENA_MAX
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD (fixed: no dynamic raise)


def release_freed() -> None:
    """Give the pages glibc's heaps hold free back to the system (`malloc_trim(0)`): after a
    request, what its calls, states and a beam's stores freed below the mmap threshold would
    otherwise stay in the process's RSS as holes between live blocks (a 1,000-request storm
    with the suffix reranking's beam: +0.8 to +16 MB, no growth with 5,000). About 0.5 ms on
    the shipped model's heap (measured); a no-op where malloc is not glibc's."""
    global _malloc_trim
    if _malloc_trim is None:
        _malloc_trim = False
        if sys.platform.startswith("linux"):
            import ctypes

            try:
                _malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
            except (OSError, AttributeError):
                pass
    if _malloc_trim:
        _malloc_trim(0)


class KVStore:
    """Per-layer key/value buffers (L, 1, H, capacity, D) of one request's context, and which
    state of it may write (`head`). On the CPU numpy arrays, bound to the decoder as views
    (shared memory); on CUDA one device OrtValue per layer and kind."""

    def __init__(self, ort: Any, device: str, shape: tuple[int, int, int], capacity: int,
                 dtype: Any, feature_width: int = 0) -> None:
        L, H, D = shape
        self.capacity = capacity
        self.head = 0  # the epoch of the state that may write
        self.calls = 0  # decoder calls that wrote into the room after a state
        self._ort, self._device = ort, device
        self.keys = np.zeros((L, 1, H, capacity, D), dtype)
        self.values = np.zeros((L, 1, H, capacity, D), dtype)
        # the target's features of the same positions, for a feature drafter (host only)
        self.features = (np.zeros((1, capacity, feature_width), np.float32) if feature_width
                         else None)
        if device == "cpu":
            self.layers = [(ort.OrtValue.ortvalue_from_numpy(self.keys[layer]),
                            ort.OrtValue.ortvalue_from_numpy(self.values[layer]))
                           for layer in range(L)]
        else:  # the host arrays are the staging copy; the device holds the buffers
            self.layers = [(ort.OrtValue.ortvalue_from_numpy(self.keys[layer], device, 0),
                            ort.OrtValue.ortvalue_from_numpy(self.values[layer], device, 0))
                           for layer in range(L)]

    @property
    def nbytes(self) -> int:
        extra = self.features.nbytes if self.features is not None else 0
        return self.keys.nbytes + self.values.nbytes + extra

    def write_features(self, start: int, features: np.ndarray | None) -> None:
        """Features (1, n, F) into positions start.. (nothing without a features buffer)."""
        if self.features is not None and features is not None:
            self.features[:, start : start + features.shape[1]] = features

    def write(self, start: int, keys: np.ndarray, values: np.ndarray,
              features: np.ndarray | None = None) -> None:
        """Host keys/values (L, 1, H, n, D), and features (1, n, F), into positions start..
        of every layer."""
        self.write_features(start, features)
        end = start + keys.shape[3]
        self.sync_host()
        self.keys[:, :, :, start:end] = keys
        self.values[:, :, :, start:end] = values
        self.push()

    def push(self) -> None:
        """Bring the device's buffers up to date with the host arrays (no-op on the CPU)."""
        if self._device != "cpu":
            for layer, (k, v) in enumerate(self.layers):
                k.update_inplace(self.keys[layer])
                v.update_inplace(self.values[layer])

    def sync_host(self) -> None:
        """Bring the host arrays up to date with the device's buffers (no-op on the CPU)."""
        if self._device != "cpu":
            for layer, (k, v) in enumerate(self.layers):
                self.keys[layer] = k.numpy()
                self.values[layer] = v.numpy()


@dataclass(frozen=True)
class ContextState:
    """Encoded contexts: keys/values (L, B, H, S, D) and the context mask (B, S) int64.

    On the CPU the keys/values are numpy arrays, on CUDA device OrtValues. A state is never
    changed once made: extending one makes another, so a request that stops half-way leaves
    the one it started from intact.
    """

    keys: Any
    values: Any
    context_mask: np.ndarray
    # in a KVStore (keys/values are then views of its first `length` positions): the store
    # and this state's epoch in it (it may write while it is the store's head)
    store: KVStore | None = None
    epoch: int = 0
    # the store-backed copy of a state that has none, made by its first buffered call and
    # found by the next while it lives (a weak reference in a list: the state stays frozen)
    copies: list = field(default_factory=list, compare=False, repr=False)
    # (B, S, F) host: the target's features of the context positions, for a feature drafter
    # (graphs with the `features` output only)
    features: np.ndarray | None = None

    @property
    def length(self) -> int:
        """Context tokens (the padded length, for a batch)."""
        return int(self.context_mask.shape[1])

    @property
    def writable(self) -> bool:
        """Whether this state is its store's head (a buffered call may write after it)."""
        return self.store is not None and self.store.head == self.epoch

    @property
    def nbytes(self) -> int:
        """Memory the keys and values hold."""
        if self.store is not None:
            return self.store.nbytes
        if isinstance(self.keys, np.ndarray):
            return self.keys.nbytes + self.values.nbytes
        width = 2 if self.keys.data_type() == "tensor(float16)" else 4
        return 2 * width * int(np.prod(self.keys.shape()))


@dataclass(frozen=True)
class CanvasKeys:
    """One decoder call's own keys/values (L, 1, H, C, D), numpy: its C canvas inputs as
    context tokens, for `OnnxDenoiser.append_canvas`. A buffered call also wrote them into
    its store after `written` (the store-backed state it ran on), as its `call`-th call."""

    keys: np.ndarray
    values: np.ndarray
    written: ContextState | None = None
    call: int = 0
    features: np.ndarray | None = None  # (1, C, F): the inputs' target features

    @property
    def length(self) -> int:
        return int(self.keys.shape[3])


class OnnxDenoiser:
    """Encoder + decoder sessions for one model directory."""

    returns_logits = False  # True when the decoder has the optional `logits` output

    def __init__(self, card: ModelCard, device: str = "auto", threads: int = 0) -> None:
        ort = _import_ort()
        self.card = card
        self._ort = ort
        available = ort.get_available_providers()
        want_cuda = (device in ("auto", "cuda") and "CUDAExecutionProvider" in available
                     and _cuda_driver_present())
        if device == "cuda" and not want_cuda:
            log.warning("device=cuda asked but onnxruntime offers %s; using the CPU", available)
        self.provider = "CPU"
        if want_cuda:
            try:
                self._open(card.graphs_for("cuda"), ["CUDAExecutionProvider"], threads)
                if all(s.get_providers()[0] == "CUDAExecutionProvider" for s in self._sessions()):
                    self.provider = "CUDA"
                else:
                    log.warning("CUDA provider unavailable at session creation; using the CPU")
            except ModelError:
                raise
            except Exception as exc:
                log.warning("CUDA session failed (%s); using the CPU", exc)
        if self.provider == "CPU":
            self._open(card.graphs_for("cpu"), ["CPUExecutionProvider"], threads)
        self._device = "cuda" if self.provider == "CUDA" else "cpu"
        self._check_signatures()
        self.returns_logits = LOGITS in {o.name for o in self.decoder.get_outputs()}
        encoder_inputs = ({i.name for i in self.encoder.get_inputs()} if self.encoder
                          else set(PAST_INPUTS))  # one graph: its buffers are the past
        self._takes_past = set(PAST_INPUTS) <= encoder_inputs
        self._pads_canvas = CANVAS_MASK in {i.name for i in self.decoder.get_inputs()}
        decoder_outputs = {o.name: o for o in self.decoder.get_outputs()}
        # a fused decoder returns its inputs' keys/values on request (`append_canvas`)
        self.appends = ({CANVAS_KEYS, CANVAS_VALUES} <= decoder_outputs.keys()
                        and self.card.causal)
        decoder_inputs = {i.name for i in self.decoder.get_inputs()}
        # per-layer buffers shared by past and present: a call copies no cache (KVStore)
        self.buffered = {f"past_key_{i}" for i in range(card.n_layers)} <= decoder_inputs
        self._predicts_rows = PREDICT_ROWS in decoder_inputs
        # the target's features for a feature drafter: both graphs output them
        self.reads_features = FEATURES in decoder_outputs and (
            self.encoder is None or FEATURES in {o.name for o in self.encoder.get_outputs()})
        self._feature_width = (int(decoder_outputs[FEATURES].shape[-1])
                               if self.reads_features else 0)
        # the card's feature drafter (drafter.onnx), when the graphs give what it reads:
        # loaded on first use (`drafter_session`), so a server that drafts by lookup alone
        # pays neither its load time nor its memory
        drafter = card.drafter
        self.has_drafter = bool(drafter is not None and drafter.graph and self.reads_features)
        self._drafter_session: Any = None
        meta = self.decoder.get_modelmeta().custom_metadata_map
        self._one_row = meta.get(ROWS_PER_CALL) == "1"  # a batch runs row by row
        self._kv_dtype = np.float16 if self.graphs.dtype == "float16" else np.float32
        self._kv_shape = (card.n_layers, card.kv_heads, card.head_dim)
        log.info(
            "model %s %s on %s (%s)", card.name, card.version, self.provider, self.graphs.encoder
        )

    @property
    def drafter_session(self) -> Any:
        """The feature drafter's session (loaded now if not yet), or None: the card has no
        drafter graph, or it failed to load (drafts then come from prompt lookup alone; the
        text is the same)."""
        if self.has_drafter and self._drafter_session is None:
            path = self.card.path(self.card.drafter.graph)
            try:
                self._drafter_session = self._ort.InferenceSession(
                    str(path), self._options, providers=self._providers)
            except Exception as exc:
                log.warning("cannot load the drafter %s (%s): drafting by lookup", path, exc)
                self.has_drafter = False
        return self._drafter_session

    def _sessions(self) -> tuple[Any, ...]:
        return (self.decoder,) if self.encoder is None else (self.encoder, self.decoder)

    def _open(self, graphs: GraphFiles, providers: list[str], threads: int) -> None:
        ort = self._ort
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = _cpu_threads(threads)
        options.inter_op_num_threads = 1
        # Idle pool threads sleep instead of spinning: the encoder and decoder sessions each
        # own a pool, and the spinning threads of the one that just ran would compete with
        # the next one, and with the editor and the user's builds, for the same few cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # ORT's own warnings go to stderr only when severe
        if providers[0] == "CUDAExecutionProvider":
            providers = providers + ["CPUExecutionProvider"]
        else:
            # No CPU arena: it keeps the peak of the largest call for the server's lifetime
            # (a 128-token scoring call's logits and probabilities), ~75 MB of RSS after a
            # 512-token encode and calls of 1-128 tokens; without it those go back to the
            # system, for the same 1- and 16-token calls and 5-10 % more on 64-128 tokens
            # (measured, 2 threads, the one-graph shipped model: RSS 337 → 262 MB).
            options.enable_cpu_mem_arena = False
            bound_malloc()
        self.graphs = graphs
        self._options, self._providers = options, providers
        sessions = []
        for name in (graphs.decoder,) if graphs.one_graph else (graphs.encoder, graphs.decoder):
            path = self.card.path(name)
            try:
                sessions.append(ort.InferenceSession(str(path), options, providers=providers))
            except Exception as exc:
                raise ModelError(f"cannot load {path}: {exc}") from exc
        self.decoder = sessions[-1]
        self.encoder = None if graphs.one_graph else sessions[0]  # one graph: the decoder

    def _check_signatures(self) -> None:
        names = {i.name for i in self.decoder.get_inputs()}
        if self.encoder is None:  # one graph: it must be able to encode
            if not ({PREDICT_ROWS, "past_key_0"} <= names and self.card.causal
                    and self.card.canvas_attention == "causal"):
                raise ModelError(f"{self.graphs.decoder}: named as encoder and decoder, but it "
                                 f"is not a buffered decoder with {PREDICT_ROWS} and a causal "
                                 f"canvas")
        else:
            names = {i.name for i in self.encoder.get_inputs()}
            outs = {o.name for o in self.encoder.get_outputs()}
            if not set(ENCODER_INPUTS) <= names or not set(ENCODER_OUTPUTS) <= outs:
                raise ModelError(
                    f"{self.graphs.encoder}: inputs/outputs are not the encoder contract")
        names = {i.name for i in self.decoder.get_inputs()}
        if "past_key_0" in names:  # a buffered decoder: per-layer buffers for keys/values
            names |= {"keys", "values"}
        outs = {o.name for o in self.decoder.get_outputs()}
        if not set(DECODER_INPUTS) <= names or not set(DECODER_OUTPUTS) <= outs:
            raise ModelError(f"{self.graphs.decoder}: inputs/outputs are not the decoder contract")

    @property
    def incremental(self) -> bool:
        """Whether `extend` can reuse an encoded head of the context (a causal model)."""
        return self._takes_past and self.card.causal

    def encode(self, layout: Layout) -> ContextState:
        """Encode one request's whole context (a causal one in pieces: `extend`; for a
        buffered decoder straight into a store, whose head it is)."""
        if self.incremental and (self.buffered or len(layout.context_ids) > ENCODE_PIECE):
            return self._extend_from(None, 0, layout)
        return self.encode_batch([layout])

    def encode_batch(self, layouts: list[Layout]) -> ContextState:
        """Encode several contexts in one call, right-padded to the longest (mask 0); with
        one graph, each alone (the decoder takes one request per call), then padded."""
        if self.encoder is None:
            return self._padded([self._extend_from(None, 0, layout) for layout in layouts],
                                layouts)
        ids, positions, mask = pad_contexts(layouts, self.card.special_tokens.pad)
        keys, values, features = self._run_encoder(ids, positions, mask, None, None)
        return ContextState(keys=keys, values=values,
                            context_mask=decoder_masks(layouts, ids.shape[1]),
                            features=features)

    def _padded(self, states: list[ContextState], layouts: list[Layout]) -> ContextState:
        """One-request states as one batch state, right-padded to the longest (host arrays,
        as the batched decoder path reads them row by row)."""
        L, H, D = self._kv_shape
        longest = max(state.length for state in states)
        keys = np.zeros((L, len(states), H, longest, D), self._kv_dtype)
        values = np.zeros_like(keys)
        width = self._feature_width if states[0].features is not None else 0
        features = np.zeros((len(states), longest, width), np.float32) if width else None
        for row, state in enumerate(states):
            own_keys, own_values = self._host_kv(state)
            keys[:, row : row + 1, :, : state.length] = own_keys
            values[:, row : row + 1, :, : state.length] = own_values
            if features is not None:
                features[row, : state.length] = state.features[0]
        return ContextState(keys=self._device_value(keys), values=self._device_value(values),
                            context_mask=decoder_masks(layouts, longest), features=features)

    def extend(self, state: ContextState | None, keep: int, layout: Layout) -> ContextState:
        """The state of `layout`'s context (one request) from `state`, a state whose first
        `keep` tokens are `layout`'s first `keep` (same ids, same positions): only the rest
        runs through the encoder. Needs `incremental`; `state` itself is left as it was."""
        if state is None or keep <= 0:
            return self.encode(layout)
        if not self.incremental:
            raise ValueError("a bidirectional context cannot be extended: encode it whole")
        return self._extend_from(state, keep, layout)

    def _extend_from(self, state: ContextState | None, keep: int, layout: Layout
                     ) -> ContextState:
        """`extend` (state None: from nothing), the new tokens in pieces of `ENCODE_PIECE`,
        each on the keys/values of those before it: the same keys/values as one call (a
        causal context), and the encoder's activations a quarter of a 512-token call's."""
        total = len(layout.context_ids)
        keep = min(keep, total, state.length) if state is not None else 0
        width = self._feature_width if state is None or state.features is not None else 0
        # every piece goes straight into the arrays the state will hold: a buffered
        # decoder's store (the new state is its head: no copy per call), else exact arrays
        if self.buffered:
            capacity = -(-(total + BUFFER_ROOM) // 128) * 128
            store = KVStore(self._ort, self._device, self._kv_shape, capacity, self._kv_dtype,
                            width)
            keys, values, features = store.keys, store.values, store.features
        else:
            L, H, D = self._kv_shape
            keys = np.zeros((L, 1, H, total, D), self._kv_dtype)
            values = np.zeros_like(keys)
            features = np.zeros((1, total, width), np.float32) if width else None
        past = past_mask = None  # the first piece: the state's own keys/values (or none)
        if state is not None:
            past = self._host_kv(state)
            keys[:, :, :, :keep], values[:, :, :, :keep] = (a[:, :, :, :keep] for a in past)
            if features is not None:
                features[:, :keep] = state.features[:, :keep]
            past_mask = np.zeros((1, state.length), np.int64)  # the old tail is not attended
            past_mask[0, :keep] = 1
        if self.encoder is None:  # the decoder writes each piece into the store itself
            store.push()
            for start in range(keep, total, ENCODE_PIECE):
                end = min(total, start + ENCODE_PIECE)
                store.write_features(start, self._encode_piece(
                    store, start, layout.context_ids[start:end],
                    layout.context_positions[start:end]))
            return self._stored(store, total, decoder_masks([layout], total))
        for start in range(keep, total, ENCODE_PIECE):
            end = min(total, start + ENCODE_PIECE)
            ids = np.asarray([layout.context_ids[start:end]], np.int64)
            positions = np.asarray([layout.context_positions[start:end]], np.int64)
            new_keys, new_values, new_features = self._run_encoder(
                ids, positions, np.ones_like(ids), past, past_mask)
            keys[:, :, :, start:end] = self._host(new_keys)
            values[:, :, :, start:end] = self._host(new_values)
            if features is not None:
                features[:, start:end] = new_features
            past = (keys[:, :, :, :end], values[:, :, :, :end])  # the next piece's: all so far
            past_mask = np.ones((1, end), np.int64)
        mask = decoder_masks([layout], total)
        if self.buffered:
            store.push()
            return self._stored(store, total, mask)
        return ContextState(keys=self._device_value(keys), values=self._device_value(values),
                            context_mask=mask, features=features)

    def _encode_piece(self, store: KVStore, start: int, ids, positions) -> np.ndarray | None:
        """One graph: context tokens `ids` at `positions` after the store's first `start`
        (all attended), their keys/values written into the store at start.. by a decoder call
        that predicts nothing. Returns their features (host, or None)."""
        binding = self.decoder.io_binding()
        ids = np.asarray([ids], np.int64)
        feeds = {DECODER_INPUTS[0]: ids,
                 DECODER_INPUTS[1]: np.asarray([positions], np.int64),
                 DECODER_INPUTS[4]: np.ones((1, start), np.int64),
                 PREDICT_ROWS: np.zeros(0, np.int64)}
        if self._pads_canvas:
            feeds[CANVAS_MASK] = np.ones(ids.shape, bool)
        for name, value in feeds.items():
            binding.bind_cpu_input(name, value)
        if self.reads_features:
            binding.bind_output(FEATURES, "cpu")
        self._bind_buffers(binding, store)
        self.decoder.run_with_iobinding(binding)
        return binding.get_outputs()[0].numpy() if self.reads_features else None

    @staticmethod
    def _bind_buffers(binding: Any, store: KVStore) -> None:
        """The store's buffers as a buffered decoder's past and present, per layer (the call
        writes its tokens' keys/values in place). Bound after the outputs read back."""
        for layer, (keys, values) in enumerate(store.layers):
            for kind, buffer in (("key", keys), ("value", values)):
                binding.bind_ortvalue_input(f"past_{kind}_{layer}", buffer)
                binding.bind_ortvalue_output(f"present_{kind}_{layer}", buffer)

    def _run_encoder(self, ids, positions, mask, past, past_mask) -> tuple[Any, Any, Any]:
        """One encoder call; `past` (keys, values) with `past_mask` or None (an empty past).
        Returns keys, values and (host, or None) the target's features of the tokens."""
        binding = self.encoder.io_binding()
        for name, value in zip(ENCODER_INPUTS, (ids, positions, mask)):
            binding.bind_cpu_input(name, value)
        if self._takes_past:
            if past is None:
                L, H, D = self._kv_shape
                empty = np.zeros((L, ids.shape[0], H, 0, D), self._kv_dtype)
                past, past_mask = (empty, empty), np.zeros((ids.shape[0], 0), np.int64)
            for name, value in zip(PAST_INPUTS, (*past, past_mask)):
                if isinstance(value, np.ndarray):
                    binding.bind_cpu_input(name, np.ascontiguousarray(value))
                else:
                    binding.bind_ortvalue_input(name, value)
        if self.reads_features:
            binding.bind_output(FEATURES, "cpu")
        if self._device == "cpu":  # numpy out: extending and caching need host arrays
            for name in ENCODER_OUTPUTS:
                binding.bind_output(name, "cpu")
            self.encoder.run_with_iobinding(binding)
            *features, keys, values = binding.copy_outputs_to_cpu()
            return keys, values, features[0] if features else None
        for name in ENCODER_OUTPUTS:
            binding.bind_output(name, self._device)
        self.encoder.run_with_iobinding(binding)
        *features, keys, values = binding.get_outputs()
        return keys, values, features[0].numpy() if features else None

    @staticmethod
    def _host(value: Any) -> np.ndarray:
        return value if isinstance(value, np.ndarray) else value.numpy()

    def _host_kv(self, state: ContextState) -> tuple[np.ndarray, np.ndarray]:
        """A state's keys and values as host arrays (views where they can be)."""
        if state.store is not None:
            state.store.sync_host()
        return self._host(state.keys), self._host(state.values)

    def _stored(self, store: KVStore, length: int, mask: np.ndarray) -> ContextState:
        """A new head state of `store`: its first `length` positions, under `mask`."""
        store.head += 1
        features = store.features[:, :length] if store.features is not None else None
        return ContextState(keys=store.keys[:, :, :, :length],
                            values=store.values[:, :, :, :length], context_mask=mask,
                            store=store, epoch=store.head, features=features)

    def _writable(self, state: ContextState, room: int) -> ContextState:
        """`state` (one request) as the head of a store with `room` positions free after it:
        itself, the copy its last call made, or a new copy (the only copy of a context a
        buffered decoder makes: once per request, not per call)."""
        for candidate in (state, *(ref() for ref in state.copies)):
            if (candidate is not None and candidate.writable
                    and candidate.length + room <= candidate.store.capacity):
                return candidate
        length = state.length
        # room for the appends of a whole canvas and a call after them, in 128-position steps
        capacity = -(-(length + max(room, 0) + BUFFER_ROOM) // 128) * 128
        width = self._feature_width if state.features is not None else 0
        store = KVStore(self._ort, self._device, self._kv_shape, capacity, self._kv_dtype,
                        width)
        keys, values = self._host_kv(state)
        store.write(0, keys, values, state.features)
        copy = self._stored(store, length, state.context_mask)
        # weakly: a document's cached state must not keep its last request's store alive
        state.copies[:] = [weakref.ref(copy)]
        return copy

    def _device_value(self, array: np.ndarray) -> Any:
        if self._device == "cpu":
            return array
        return self._ort.OrtValue.ortvalue_from_numpy(array, "cuda", 0)

    def denoise_step(
        self, state: object, canvas_ids: np.ndarray, canvas_positions: np.ndarray,
        need_logits: bool = False, keep_canvas: bool = False,
    ) -> tuple[Any, ...]:
        """One decoder call; only the per-position argmax and probabilities come back, and
        the full logits when asked (a few steps per request at most). With `keep_canvas`
        (needs `appends`), a `CanvasKeys` of the call's inputs comes last, for
        `append_canvas`."""
        assert isinstance(state, ContextState)
        if keep_canvas and not self.appends:
            raise ValueError("this decoder does not return its keys/values: no append_canvas")
        return self._run_decoder(state, canvas_ids, canvas_positions, None, need_logits,
                                 keep_canvas)

    def append_canvas(self, state: ContextState, canvas: CanvasKeys, count: int
                      ) -> ContextState:
        """`state` (one request) extended by the first `count` inputs of the decoder call
        that returned `canvas`, as context tokens the next calls attend to — no encoder
        call: a causal model's keys/values of those inputs are the ones an encoder would
        compute for them (they attended to the same context and to the inputs before them).
        A shifted layout's anchor stays hidden in the context: the canvas's first input is
        its visible copy. The next call sends the inputs from `count` on. `state` is left as
        it was."""
        count = max(0, min(count, canvas.length))
        if count == 0:
            return state
        mask = np.concatenate([state.context_mask,
                               np.ones((state.context_mask.shape[0], count), np.int64)], axis=1)
        if self.buffered:
            written = canvas.written
            if (written is not None and written.writable and written.store.calls == canvas.call
                    and written.length == state.length):
                # the call wrote exactly these inputs' keys/values after the state: keep them
                return self._stored(written.store, state.length + count, mask)
            # another call wrote there since (or none did): write the call's own copy
            base = self._writable(state, count)
            base.store.write(base.length, canvas.keys[:, :, :, :count],
                             canvas.values[:, :, :, :count],
                             canvas.features[:, :count] if canvas.features is not None else None)
            return self._stored(base.store, state.length + count, mask)
        keys = np.concatenate([self._host(state.keys), canvas.keys[:, :, :, :count]], axis=3)
        values = np.concatenate([self._host(state.values), canvas.values[:, :, :, :count]],
                                axis=3)
        features = None
        if state.features is not None and canvas.features is not None:
            features = np.concatenate([state.features, canvas.features[:, :count]], axis=1)
        return ContextState(keys=self._device_value(keys), values=self._device_value(values),
                            context_mask=mask, features=features)

    def masked(self, state: ContextState, visible: np.ndarray) -> ContextState:
        """`state` under another context mask (1, S): which of its positions the next call
        attends to. The keys/values are shared, not copied, and a store's head stays its
        head: a beam's hypotheses append into one store, each seeing only its own tokens."""
        visible = np.asarray(visible, np.int64)
        if visible.shape != state.context_mask.shape:
            raise ValueError(f"a mask {visible.shape} for a context of {state.context_mask.shape}")
        return replace(state, context_mask=visible)

    def denoise_step_batch(
        self, state: ContextState, canvas_ids: np.ndarray, canvas_positions: np.ndarray,
        canvas_mask: np.ndarray, need_logits: bool = False,
    ) -> tuple[np.ndarray, ...]:
        """One decoder call for a batch (B, C) of canvases against `encode_batch`'s state;
        `canvas_mask` (B, C) marks real canvas positions (outputs at the others mean
        nothing). A format-1 decoder cannot pad canvases: padded rows then run one by one;
        so does every batch of a fused decoder (`ROWS_PER_CALL`), each row on its own
        context without its padding."""
        canvas_mask = np.asarray(canvas_mask, dtype=bool)
        one_call = not self._one_row or canvas_mask.shape[0] == 1
        if one_call and (self._pads_canvas or canvas_mask.all()):
            return self._run_decoder(state, canvas_ids, canvas_positions, canvas_mask,
                                     need_logits)
        outputs = [np.zeros(canvas_mask.shape, np.int64), np.zeros(canvas_mask.shape, np.float32),
                   np.zeros(canvas_mask.shape, np.float32)]
        if need_logits:
            outputs.append(np.zeros((*canvas_mask.shape, self.card.vocab_size), np.float32))
        keys, values = self._host_kv(state)
        own = (lambda a: a) if self.buffered else np.ascontiguousarray  # a store copies once
        for row in range(canvas_mask.shape[0]):
            real = np.flatnonzero(canvas_mask[row])
            if real.size == 0:  # a finished request riding along in the sampler's batch
                continue
            # the context up to its last visible token: the padding (and a hidden anchor
            # after it) is masked anyway
            seen = np.flatnonzero(state.context_mask[row])
            end = int(seen[-1]) + 1 if seen.size else state.length
            alone = ContextState(
                keys=self._device_value(own(keys[:, row : row + 1, :, :end])),
                values=self._device_value(own(values[:, row : row + 1, :, :end])),
                context_mask=state.context_mask[row : row + 1, :end],
                features=(state.features[row : row + 1, :end]
                          if state.features is not None else None))
            got = self._run_decoder(alone, canvas_ids[row : row + 1, real],
                                    canvas_positions[row : row + 1, real], None, need_logits)
            for out, value in zip(outputs, got):
                out[row, real] = value[0]
        return tuple(outputs)

    def _run_decoder(self, state: ContextState, canvas_ids, canvas_positions, canvas_mask,
                     need_logits: bool, keep_canvas: bool = False) -> tuple[Any, ...]:
        binding = self.decoder.io_binding()
        canvas_ids = np.ascontiguousarray(canvas_ids, dtype=np.int64)
        written = None
        if self.buffered:
            if canvas_ids.shape[0] != 1:
                raise ValueError("a buffered decoder takes one request per call")
            written = state = self._writable(state, canvas_ids.shape[1])
            state.store.calls += 1
            feeds = (canvas_ids, np.ascontiguousarray(canvas_positions, dtype=np.int64),
                     None, None, state.context_mask)
        else:
            feeds = (canvas_ids, np.ascontiguousarray(canvas_positions, dtype=np.int64),
                     state.keys, state.values, state.context_mask)
        for name, value in zip(DECODER_INPUTS, feeds):
            if value is None:
                continue
            if isinstance(value, np.ndarray):
                binding.bind_cpu_input(name, value)
            else:
                binding.bind_ortvalue_input(name, value)
        if self._pads_canvas:
            if canvas_mask is None:
                canvas_mask = np.ones(canvas_ids.shape, bool)
            binding.bind_cpu_input(CANVAS_MASK, np.ascontiguousarray(canvas_mask, dtype=bool))
        if self._predicts_rows:  # a decoding call: predictions at every canvas position
            binding.bind_cpu_input(PREDICT_ROWS, np.arange(canvas_ids.shape[1], dtype=np.int64))
        features = keep_canvas and self.reads_features and state.features is not None
        names = (DECODER_OUTPUTS + ((LOGITS,) if need_logits else ())
                 + ((FEATURES,) if features else ())
                 + ((CANVAS_KEYS, CANVAS_VALUES) if keep_canvas else ()))
        for name in names:
            binding.bind_output(name, "cpu")
        if written is not None:  # outputs after those read back: the buffers stay unread
            self._bind_buffers(binding, written.store)
        self.decoder.run_with_iobinding(binding)
        outputs = [value.numpy() for value in binding.get_outputs()[: len(names)]]
        pred_ids, pred_prob, canvas_prob = outputs[:3]
        result = (pred_ids, pred_prob.astype(np.float32), canvas_prob.astype(np.float32))
        if need_logits:
            result += (outputs[3],)
        if keep_canvas:
            own = outputs[len(DECODER_OUTPUTS) + need_logits] if features else None
            if written is not None:  # beside the keys/values the call wrote
                written.store.write_features(written.length, own)
            result += (CanvasKeys(keys=outputs[-2], values=outputs[-1], written=written,
                                  call=written.store.calls if written is not None else 0,
                                  features=own),)
        return result

    def visible_features(self, state: object, start: int = 0) -> np.ndarray | None:
        """The target's features (N, F) of one request's visible context positions (the
        text before its frontier, in order: not the padding, not a hidden anchor), from the
        `start`-th on; None when the state has none."""
        if not isinstance(state, ContextState) or state.features is None:
            return None
        if state.context_mask.shape[0] != 1:
            return None
        seen = np.flatnonzero(state.context_mask[0])
        if start > seen.size:
            return None
        return state.features[0, seen[start:]]
