"""Where context and canvas tokens sit in position space — shared by training and serving.

A request is text segments with holes between them::

    seg0 <hole 0> seg1 <hole 1> seg2 ...      (one hole: seg0 = prefix, seg1 = suffix)

The context is the `file` token followed by every segment's tokens; each hole is a canvas of a
fixed length (a bucket). Positions run through the text as if the canvases were in place:
``file`` at 0, seg0 at 1..p, canvas 0 at p+1..p+C0, seg1 from p+C0+1, and so on. Context tokens
attend to context only, canvas tokens to context and every canvas, so the context's keys and
values are computed once per request. `model_export.data` builds training examples with the same
function, so what the model learned and what the server asks are the same shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Layout:
    """Token ids and positions of one request, ready for the encoder and the decoder."""

    context_ids: list[int]  # file token + all segments, in text order
    context_positions: list[int]
    canvas_positions: list[list[int]]  # one list per hole, each as long as its canvas

    @property
    def canvas_lengths(self) -> list[int]:
        return [len(p) for p in self.canvas_positions]


def build_layout(segments: list[list[int]], canvas_lengths: list[int], file_id: int) -> Layout:
    """Lay out `len(canvas_lengths) + 1` token segments around that many canvases."""
    if len(segments) != len(canvas_lengths) + 1:
        raise ValueError(f"{len(canvas_lengths)} holes need {len(canvas_lengths) + 1} segments")
    context_ids = [file_id]
    context_positions = [0]
    canvas_positions: list[list[int]] = []
    position = 1
    for index, segment in enumerate(segments):
        context_ids.extend(segment)
        context_positions.extend(range(position, position + len(segment)))
        position += len(segment)
        if index < len(canvas_lengths):
            length = canvas_lengths[index]
            canvas_positions.append(list(range(position, position + length)))
            position += length
    return Layout(context_ids, context_positions, canvas_positions)


def pad_contexts(layouts: list[Layout], pad: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The contexts of several layouts as one encoder batch, right-padded to the longest:
    (ids, positions, mask), each (B, S) int64; mask 0 on padding."""
    length = max(len(layout.context_ids) for layout in layouts)
    ids = np.full((len(layouts), length), pad, np.int64)  # (B, S)
    positions = np.zeros_like(ids)
    mask = np.zeros_like(ids)
    for row, layout in enumerate(layouts):
        n = len(layout.context_ids)
        ids[row, :n] = layout.context_ids
        positions[row, :n] = layout.context_positions
        mask[row, :n] = 1
    return ids, positions, mask
