"""The wire format of one remote completion: a layout and sampler settings in, a canvas out.

The editor's dlm-lsp plans, tokenizes and lays out the request as always; the server only
denoises. Tensors of model `dlm_complete` (each request a batch of one, lengths ragged)::

    in   context_ids        INT64 [n]  file token + segments, text order (layout.context_ids)
         context_positions  INT64 [n]
         canvas_positions   INT64 [t]  every hole's positions, back to back
         canvas_lengths     INT64 [h]  one per hole, summing to t
         sampler            BYTES [1]  JSON of SamplerSettings (unknown keys ignored)
    out  canvas             INT64 [t]  the committed canvas, end-of-span tokens kept
         steps              INT32 [1]  decoder calls
         committed_per_step INT32 [s]

and of model `dlm_card`: ``name BYTES [1]`` ("model.json" or "tokenizer.json") → ``content
BYTES [1]``, so that an editor needs only the server's address.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from ..layout import Layout
from ..sampler import STRATEGIES, DenoiseResult, SamplerSettings, split_canvas

COMPLETE_MODEL = "dlm_complete"
CARD_MODEL = "dlm_card"
CARD_FILES = ("model.json", "tokenizer.json")
REQUEST_INPUTS = ("context_ids", "context_positions", "canvas_positions", "canvas_lengths")
RESPONSE_OUTPUTS = ("canvas", "steps", "committed_per_step")
DEFAULT_PORT = 8001  # Triton's gRPC port


class WireError(ValueError):
    """A request or response that does not follow the format."""


def request_tensors(layout: Layout, settings: SamplerSettings) -> dict[str, np.ndarray]:
    """The named input tensors of one request, each with its batch dimension of one."""
    flat = [p for hole in layout.canvas_positions for p in hole]
    tensors = {
        "context_ids": np.asarray(layout.context_ids, dtype=np.int64),
        "context_positions": np.asarray(layout.context_positions, dtype=np.int64),
        "canvas_positions": np.asarray(flat, dtype=np.int64),
        "canvas_lengths": np.asarray(layout.canvas_lengths, dtype=np.int64),
        "sampler": np.asarray([json.dumps(dataclasses.asdict(settings)).encode()],
                              dtype=np.object_),
    }
    return {name: value[None] for name, value in tensors.items()}  # (1, n)


def _row(tensors: dict[str, Any], name: str) -> np.ndarray:
    try:
        value = np.asarray(tensors[name])
    except KeyError:
        raise WireError(f"missing input {name!r}") from None
    if value.ndim == 2 and value.shape[0] == 1:
        value = value[0]
    if value.ndim != 1:
        raise WireError(f"{name}: expected shape [1, n], got {list(value.shape)}")
    return value


def parse_request(tensors: dict[str, Any]) -> tuple[Layout, SamplerSettings]:
    """The layout and sampler settings of one request's input tensors (server side)."""
    ids, positions, flat, lengths = (_row(tensors, name).astype(np.int64).tolist()
                                     for name in REQUEST_INPUTS)
    if len(ids) != len(positions) or not ids:
        raise WireError(f"{len(ids)} context ids, {len(positions)} positions")
    if any(n < 0 for n in lengths) or sum(lengths) != len(flat):
        raise WireError(f"canvas lengths {lengths} do not add up to {len(flat)} positions")
    holes, at = [], 0
    for n in lengths:
        holes.append(flat[at : at + n])
        at += n
    settings = SamplerSettings()
    if "sampler" in tensors:
        raw = _row(tensors, "sampler")[0]
        try:
            options = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
        except (ValueError, UnicodeDecodeError) as exc:
            raise WireError(f"sampler: not JSON ({exc})") from None
        if not isinstance(options, dict):
            raise WireError("sampler: expected a JSON object")
        known = {f.name for f in dataclasses.fields(SamplerSettings)}
        try:
            settings = SamplerSettings(**{k: v for k, v in options.items() if k in known})
        except TypeError as exc:
            raise WireError(f"sampler: {exc}") from None
    return Layout(ids, positions, holes), settings


def response_tensors(layout: Layout, result: DenoiseResult, eos: int) -> dict[str, np.ndarray]:
    """The output tensors of one answered request (server side)."""
    canvas: list[int] = []
    for hole, length in zip(result.canvases, layout.canvas_lengths):
        canvas += hole + [eos] * (length - len(hole))
    return {
        "canvas": np.asarray(canvas, dtype=np.int64)[None],
        "steps": np.asarray([result.steps], dtype=np.int32)[None],
        "committed_per_step": np.asarray(result.committed_per_step, dtype=np.int32)[None],
    }


def parse_response(tensors: dict[str, Any], layout: Layout, eos: int) -> DenoiseResult:
    """The result of one request from its output tensors (client side)."""
    canvas = _row(tensors, "canvas")
    if len(canvas) != sum(layout.canvas_lengths):
        raise WireError(f"canvas of {len(canvas)} tokens for {sum(layout.canvas_lengths)}")
    return DenoiseResult(
        canvases=split_canvas(canvas, layout.canvas_lengths, eos),
        steps=int(_row(tensors, "steps")[0]),
        committed_per_step=[int(n) for n in _row(tensors, "committed_per_step")],
    )


MAX_STEPS = 512  # a request may not ask the server for more decoder calls than this


def check_request(layout: Layout, settings: SamplerSettings, *, vocab_size: int,
                  max_context: int, max_position: int) -> SamplerSettings:
    """Refuse a layout the model cannot take (WireError); bound the work it may ask for."""
    if len(layout.context_ids) > max_context:
        raise WireError(f"context of {len(layout.context_ids)} tokens, the model takes "
                        f"{max_context}")
    if min(layout.context_ids) < 0 or max(layout.context_ids) >= vocab_size:
        raise WireError(f"context token ids outside 0..{vocab_size - 1}")
    every = layout.context_positions + [p for hole in layout.canvas_positions for p in hole]
    if min(every) < 0 or max(every) >= max_position:
        raise WireError(f"positions outside 0..{max_position - 1}")
    if not 0.0 <= settings.threshold <= 1.0 or settings.strategy not in STRATEGIES:
        raise WireError(f"sampler settings out of range: {settings}")
    return dataclasses.replace(settings, max_steps=min(max(1, settings.max_steps), MAX_STEPS))


def parse_remote_url(url: str) -> str:
    """`grpc://HOST[:PORT]` (or a bare HOST:PORT) → "HOST:PORT"; ValueError otherwise."""
    parts = urlsplit(url if "://" in url else "grpc://" + url)
    if parts.scheme != "grpc" or not parts.hostname or parts.path not in ("", "/"):
        raise ValueError(f"expected grpc://HOST[:PORT], got {url!r}")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError:
        raise ValueError(f"bad port in {url!r}") from None
    return f"{host}:{port}"
