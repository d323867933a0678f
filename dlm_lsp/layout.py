"""Where context and canvas tokens sit in position space — shared by training and serving.

A request is text segments with holes between them::

    seg0 <hole 0> seg1 <hole 1> seg2 ...      (one hole: seg0 = prefix, seg1 = suffix)

The context is the `file` token followed by every segment's tokens; each hole is a canvas of a
fixed length (a bucket). Positions run through the text as if the canvases were in place:
``file`` at 0, seg0 at 1..p, canvas 0 at p+1..p+C0, seg1 from p+C0+1, and so on. Context tokens
attend to context only, canvas tokens to context and every canvas, so the context's keys and
values are computed once per request. `model_export.data` builds training examples with the same
function, so what the model learned and what the server asks are the same shape.

A *shifted* model (the card's ``shift``: an autoregressive head, the output at position i
predicts token i+1) reads each canvas one place to the right: the decoder's input at a hole's
first position is the token before the hole (its *anchor*, at the position before), and at
every other canvas position the canvas token before it. The anchor's own copy in the context is
hidden from the canvas (`decoder_mask`), so the canvas sees it once, exactly where an
autoregressive model would; the encoder and the context cache are the same as unshifted.
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
    # shifted models: per hole, the context index of its anchor (the token before it), or -1
    # when the token before it is the previous hole's last canvas position; None: not shifted
    anchors: tuple[int, ...] | None = None

    @property
    def canvas_lengths(self) -> list[int]:
        return [len(p) for p in self.canvas_positions]

    @property
    def shifted(self) -> bool:
        return self.anchors is not None

    def decoder_mask(self) -> list[int]:
        """Which context tokens the canvas attends to (1) — all but a shifted layout's
        anchors, which the canvas reads as its own first input instead."""
        mask = [1] * len(self.context_ids)
        for anchor in self.anchors or ():
            if anchor >= 0:
                mask[anchor] = 0
        return mask

    def decoder_inputs(self, canvas: np.ndarray, positions: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
        """The decoder's input ids and positions for the holes' tokens `canvas` (T,) at
        `positions` (T,), back to back: as they are, or shifted one place right."""
        if self.anchors is None:
            return canvas, positions
        ids = np.empty_like(canvas)
        ids[1:] = canvas[:-1]
        start = 0
        for anchor, length in zip(self.anchors, self.canvas_lengths):
            if anchor >= 0:
                ids[start] = self.context_ids[anchor]
            start += length
        return ids, positions - 1


def build_layout(segments: list[list[int]], canvas_lengths: list[int], file_id: int,
                 shift: bool = False) -> Layout:
    """Lay out `len(canvas_lengths) + 1` token segments around that many canvases (`shift`:
    for a shifted model, each hole anchored on the token before it)."""
    if len(segments) != len(canvas_lengths) + 1:
        raise ValueError(f"{len(canvas_lengths)} holes need {len(canvas_lengths) + 1} segments")
    context_ids = [file_id]
    context_positions = [0]
    canvas_positions: list[list[int]] = []
    anchors: list[int] = []
    position = 1
    for index, segment in enumerate(segments):
        context_ids.extend(segment)
        context_positions.extend(range(position, position + len(segment)))
        position += len(segment)
        if index < len(canvas_lengths):
            length = canvas_lengths[index]
            # the token before this hole: a context token, unless a hole ends right here
            follows_hole = index > 0 and not segment and canvas_lengths[index - 1] > 0
            anchors.append(-1 if follows_hole else len(context_ids) - 1)
            canvas_positions.append(list(range(position, position + length)))
            position += length
    return Layout(context_ids, context_positions, canvas_positions,
                  tuple(anchors) if shift else None)


def anchored(layout: Layout) -> Layout:
    """`layout` (ids, positions and holes only, as a remote request carries them) anchored
    for a shifted model: each hole on the context token at the position before it, or on the
    previous hole's last position when that hole ends there."""
    at = {position: index for index, position in enumerate(layout.context_positions)}
    anchors, previous_end = [], None
    for hole in layout.canvas_positions:
        before = hole[0] - 1 if hole else None
        if before is not None and before in at:
            anchors.append(at[before])
        elif before is not None and before == previous_end:
            anchors.append(-1)
        else:
            raise ValueError(f"no token before the hole at position {before}")
        previous_end = hole[-1] if hole else previous_end
    return Layout(layout.context_ids, layout.context_positions, layout.canvas_positions,
                  tuple(anchors))


def decoder_masks(layouts: list[Layout], length: int) -> np.ndarray:
    """The canvas's view of a padded context batch (B, length) int64: `pad_contexts`' mask
    with each shifted layout's anchors hidden."""
    mask = np.zeros((len(layouts), length), np.int64)
    for row, layout in enumerate(layouts):
        mask[row, : len(layout.context_ids)] = layout.decoder_mask()
    return mask


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
