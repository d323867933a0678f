"""Training examples shaped like the server's requests, and their batches.

An example is a chunk of a file with one hole (sometimes two) cut out of it. The hole is the
kind of gap an editor asks for: the rest of the current line, one or a few whole lines, a whole
tree-sitter node (a block, a statement, an argument list), or a random span; sometimes there is
no suffix at all. Prefix, middle and suffix *text* are tokenized separately (the server cuts text
at the cursor, not at token boundaries), the prefix and suffix are cut on line boundaries within
token budgets, and the layout comes from `dlm_lsp.layout.build_layout`, exactly as served. A
canvas is the middle followed by end-of-span tokens up to a bucket length. Masking (the
diffusion forward process) happens per batch in `mask_canvas`.
"""

from __future__ import annotations

import bisect
import itertools
import random
from dataclasses import dataclass, field

import numpy as np
import torch

from dlm_lsp.languages import syntax_for
from dlm_lsp.layout import build_layout
from dlm_lsp.modelcard import DEFAULT_CANVAS_BUCKETS, SpecialTokens

NODE_KINDS_SUFFIX = ("statement", "block", "body", "argument_list", "arguments", "parameters",
                     "definition", "declaration", "assignment", "expression", "call",
                     "dictionary", "list", "object", "array")


@dataclass(frozen=True, kw_only=True)
class ExampleSettings:
    buckets: tuple[int, ...] = DEFAULT_CANVAS_BUCKETS  # canvas lengths
    max_context: int = 512  # file token + prefix + suffix
    prefix_tokens: int = 383  # most prefix tokens (what the server sends at most)
    suffix_tokens: int = 128  # most suffix tokens
    long_context_rate: float = 0.2  # share of examples with full budgets; the rest are short
    short_prefix_tokens: int = 128  # most prefix tokens of a short example
    short_suffix_tokens: int = 48  # most suffix tokens of a short example
    two_hole_rate: float = 0.1  # examples with a second hole in the suffix
    no_suffix_rate: float = 0.1  # completion at the end of the text
    chunk_chars: int = 6000  # file window an example is cut from


# kind → weight
SPAN_KINDS = {"rest_of_line": 0.2, "line": 0.15, "lines": 0.2, "node": 0.3, "random": 0.15}


@dataclass
class Example:
    """One request: context layout plus the clean canvas (middle + end-of-span padding)."""

    context_ids: list[int]
    context_positions: list[int]
    canvas_ids: list[int]  # all holes' canvases, concatenated
    canvas_positions: list[int]
    holes: list[tuple[int, int]]  # (start, length) of each hole inside canvas_ids
    middle_lengths: list[int]  # real middle tokens per hole (before end-of-span padding)
    kinds: list[str] = field(default_factory=list)


def node_spans(text: str, language: str, *, min_bytes: int = 1, max_bytes: int = 600,
               kinds: tuple[str, ...] = NODE_KINDS_SUFFIX) -> list[tuple[int, int]]:
    """Character spans of the named syntax nodes a server hole can be (node types ending in
    one of `kinds`: statements, blocks, argument lists, ...) of `min_bytes`..`max_bytes`;
    [] without a grammar."""
    syntax = syntax_for(language)
    if syntax is None:
        return []
    data = text.encode("utf-8")
    nodes, stack = [], [syntax.parser().parse(data).root_node]
    while stack:
        node = stack.pop()
        stack.extend(node.named_children)
        if (node.is_named and min_bytes <= node.end_byte - node.start_byte <= max_bytes
                and node.type.endswith(kinds)):
            nodes.append(node)
    if len(data) == len(text):  # ASCII: bytes are characters
        return [(n.start_byte, n.end_byte) for n in nodes]
    byte_at = list(itertools.accumulate((len(c.encode("utf-8")) for c in text), initial=0))

    def chars(byte: int) -> int:
        return bisect.bisect_left(byte_at, byte)

    return [(chars(n.start_byte), chars(n.end_byte)) for n in nodes]


class ExampleMaker:
    """Cuts examples out of corpus texts; deterministic for a given `random.Random`."""

    def __init__(self, texts: list[str], languages: list[str], tokenizer,
                 specials: SpecialTokens, settings: ExampleSettings = ExampleSettings()):
        self.texts = texts
        self.languages = languages
        self.tok = tokenizer
        self.specials = specials
        self.settings = settings
        sizes = np.array([len(t) for t in texts], dtype=np.float64)
        self.cumulative = np.cumsum(np.sqrt(sizes)).tolist()  # favour big files, sub-linearly

    # -- tokenizing ---------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids if text else []

    def keep_tail(self, text: str, budget: int) -> str:
        """The longest tail of `text` that starts on a line and fits `budget` tokens."""
        enc = self.tok.encode(text, add_special_tokens=False)
        if len(enc.ids) <= budget:
            return text
        if budget <= 0:
            return ""
        cut = enc.offsets[len(enc.ids) - budget][0]
        line = text.find("\n", cut)
        start = line + 1 if line >= 0 else cut
        return text[start:] if start < len(text) else ""

    def keep_head(self, text: str, budget: int) -> str:
        """The longest head of `text` that ends with a line and fits `budget` tokens."""
        enc = self.tok.encode(text, add_special_tokens=False)
        if len(enc.ids) <= budget:
            return text
        if budget <= 0:
            return ""
        cut = enc.offsets[budget][0]
        line = text.rfind("\n", 0, cut)
        return text[: line + 1] if line >= 0 else text[:cut]

    # -- choosing the hole --------------------------------------------------------------------
    def pick_span(self, rng: random.Random, chunk: str, language: str, lo: int, hi: int,
                  kind: str) -> tuple[int, int]:
        """A (start, end) char span of `chunk` inside [lo, hi) of the given kind."""
        if kind == "node":
            span = self._node_span(rng, chunk, language, lo, hi)
            if span is not None:
                return span
            kind = "lines"
        line_starts = [lo] + [i + 1 for i in range(lo, hi) if chunk[i] == "\n"]
        line_starts = [s for s in line_starts if s < hi]
        if kind == "random":
            start = rng.randrange(lo, hi)
            return start, min(hi, start + int(rng.expovariate(1 / 120)) + 1)
        first = rng.randrange(len(line_starts))
        start = line_starts[first]
        if kind == "rest_of_line":
            end = chunk.find("\n", start, hi)
            end = hi if end < 0 else end
            return rng.randint(start, end), end
        count = 1 if kind == "line" else rng.randint(2, 8)
        last = min(first + count, len(line_starts)) - 1
        end = chunk.find("\n", line_starts[last], hi)
        end = hi if end < 0 else end
        if rng.random() < 0.6:  # cursor after the indentation, as after pressing Enter
            text = chunk[start:end]
            start += len(text) - len(text.lstrip(" \t"))
            start = min(start, end)
        return start, end

    def _node_span(self, rng, chunk, language, lo, hi):
        spans = node_spans(chunk, language, max_bytes=600)
        rng.shuffle(spans)
        for start, end in spans[:20]:
            if lo <= start < end <= hi:
                return start, end
        return None

    # -- one example --------------------------------------------------------------------------
    def pick_file(self, rng: random.Random) -> int:
        """A file index, big files more often (by the square root of their size)."""
        point = rng.random() * self.cumulative[-1]
        return min(bisect.bisect_left(self.cumulative, point), len(self.texts) - 1)

    def make(self, rng: random.Random) -> Example:
        s = self.settings
        index = self.pick_file(rng)
        text, language = self.texts[index], self.languages[index]
        anchor = rng.randrange(len(text))
        begin = max(0, anchor - s.chunk_chars * 2 // 3)
        begin = text.rfind("\n", 0, begin) + 1 if begin else 0
        chunk = text[begin: anchor + s.chunk_chars // 3]
        anchor -= begin
        holes = 2 if rng.random() < s.two_hole_rate else 1
        # hole 0 near the anchor; hole 1 (if any) later in the chunk
        cuts: list[tuple[int, int, str]] = []
        lo = max(0, min(anchor, len(chunk) - 1))
        for h in range(holes):
            if lo >= len(chunk) - 1:
                break
            hi = min(len(chunk), lo + 800)
            kind = rng.choices(list(SPAN_KINDS), weights=list(SPAN_KINDS.values()))[0]
            start, end = self.pick_span(rng, chunk, language, lo, hi, kind)
            cuts.append((start, end, kind))
            lo = min(len(chunk), end + 1 + rng.randrange(0, 200))
        if not cuts:
            cuts = [(len(chunk), len(chunk), "end")]
        # texts around the holes
        pieces, previous = [], 0
        middles = []
        for start, end, _ in cuts:
            pieces.append(chunk[previous:start])
            middles.append(chunk[start:end])
            previous = end
        tail = "" if rng.random() < s.no_suffix_rate else chunk[previous:]
        pieces.append(tail)
        # middles: tokenize, fit in the largest bucket (the overflow joins the next segment)
        middle_ids, canvas_lengths = [], []
        largest = s.buckets[-1]
        for h, middle in enumerate(middles):
            ids = self.encode(middle)
            if len(ids) > largest:
                enc = self.tok.encode(middle, add_special_tokens=False)
                cut = enc.offsets[largest][0]
                ids = self.encode(middle[:cut])[:largest]
                pieces[h + 1] = middle[cut:] + pieces[h + 1]
            middle_ids.append(ids)
            fitting = [b for b in s.buckets if b >= len(ids)] or [largest]
            canvas_lengths.append(fitting[0] if rng.random() < 0.6 else rng.choice(fitting))
        # context budgets: the prefix keeps its end, the suffix its start; inner segments whole
        # (short contexts are most of the examples: the loss is on the canvas, and context
        # tokens cost compute, so they buy more canvas tokens per second of training)
        if rng.random() < s.long_context_rate:
            prefix_budget, suffix_budget = s.prefix_tokens, s.suffix_tokens
        else:
            prefix_budget = rng.randint(8, min(s.short_prefix_tokens, s.prefix_tokens))
            suffix_budget = rng.randint(0, min(s.short_suffix_tokens, s.suffix_tokens))
        pieces[0] = self.keep_tail(pieces[0], prefix_budget)
        pieces[-1] = self.keep_head(pieces[-1], suffix_budget)
        segments = [self.encode(p) for p in pieces]
        room = s.max_context - 1
        while sum(map(len, segments)) > room:  # inner segments overflow: trim the widest
            widest = max(range(len(segments)), key=lambda i: len(segments[i]))
            over = sum(map(len, segments)) - room
            segments[widest] = (segments[widest][over:] if widest == 0
                                else segments[widest][: len(segments[widest]) - over])
        layout = build_layout(segments, canvas_lengths, self.specials.file)
        canvas_ids, canvas_positions, hole_spans = [], [], []
        for ids, length, positions in zip(middle_ids, canvas_lengths, layout.canvas_positions):
            hole_spans.append((len(canvas_ids), length))
            canvas_ids.extend(ids + [self.specials.end_of_span] * (length - len(ids)))
            canvas_positions.extend(positions)
        return Example(layout.context_ids, layout.context_positions, canvas_ids,
                       canvas_positions, hole_spans, [len(m) for m in middle_ids],
                       [c[2] for c in cuts])


@dataclass
class BlockExample:
    """A run of a file for block-diffusion training (BD3-LM): the file token, then `ids`, cut
    into blocks; each block is a canvas whose context is everything before it."""

    ids: list[int]  # file token first, then the text's tokens
    positions: list[int]
    blocks: list[int]  # block number per token, in text order; -1 for the file token


def make_block_example(maker: "ExampleMaker", rng: random.Random, tokens: int,
                       block_sizes: tuple[int, ...]) -> BlockExample:
    """`tokens` tokens of a file from a line start (fewer at the end of a short file), in
    blocks of sizes drawn from `block_sizes` — the server's canvas lengths."""
    index = maker.pick_file(rng)
    text = maker.texts[index]
    start = rng.randrange(len(text))
    start = text.rfind("\n", 0, start) + 1 if start else 0
    ids = maker.encode(text[start: start + tokens * 6])[:tokens]  # ~3.4 bytes/token
    blocks, number = [], 0
    while len(blocks) < len(ids):
        blocks.extend([number] * rng.choice(block_sizes))
        number += 1
    return BlockExample([maker.specials.file] + ids, list(range(len(ids) + 1)),
                        [-1] + blocks[: len(ids)])


@dataclass
class BlockBatch:
    """Right-padded block examples: (B, N) each."""

    ids: torch.Tensor  # int64, pad-filled
    positions: torch.Tensor
    real: torch.Tensor  # bool
    blocks: torch.Tensor  # int64; padding gets a block of its own after every real one

    def to(self, device) -> "BlockBatch":
        return BlockBatch(*(t.to(device, non_blocking=True) for t in vars(self).values()))

    @property
    def tokens(self) -> int:
        """Real tokens computed: the clean copy and the noisy copy."""
        return 2 * int(self.real.sum())

    @property
    def pad_share(self) -> float:
        return 1.0 - int(self.real.sum()) / max(1, self.real.numel())


def collate_blocks(examples: list[BlockExample], pad_id: int) -> BlockBatch:
    B, N = len(examples), max(len(e.ids) for e in examples)
    ids = torch.full((B, N), pad_id, dtype=torch.long)
    positions = torch.zeros((B, N), dtype=torch.long)
    real = torch.zeros((B, N), dtype=torch.bool)
    blocks = torch.full((B, N), N + 1, dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.ids)
        ids[i, :n] = torch.tensor(e.ids)
        positions[i, :n] = torch.tensor(e.positions)
        real[i, :n] = True
        blocks[i, :n] = torch.tensor(e.blocks)
    return BlockBatch(ids, positions, real, blocks)


@dataclass
class Batch:
    """Padded tensors of a list of examples (canvas still clean)."""

    context_ids: torch.Tensor  # (B, S) int64, pad-filled
    context_positions: torch.Tensor  # (B, S)
    context_mask: torch.Tensor  # (B, S) bool, real tokens
    canvas_ids: torch.Tensor  # (B, C) clean targets, pad-filled
    canvas_positions: torch.Tensor  # (B, C)
    canvas_mask: torch.Tensor  # (B, C) bool, real canvas tokens

    def to(self, device) -> Batch:
        return Batch(*(t.to(device, non_blocking=True) for t in vars(self).values()))

    @property
    def tokens(self) -> int:
        return int(self.context_mask.sum() + self.canvas_mask.sum())

    @property
    def pad_share(self) -> float:
        total = self.context_mask.numel() + self.canvas_mask.numel()
        return 1.0 - self.tokens / max(1, total)


def collate(examples: list[Example], pad_id: int) -> Batch:
    """Right-pad contexts and canvases of a batch."""
    B = len(examples)
    S = max(len(e.context_ids) for e in examples)
    C = max(len(e.canvas_ids) for e in examples)
    ctx = torch.full((B, S), pad_id, dtype=torch.long)
    ctx_pos = torch.zeros((B, S), dtype=torch.long)
    ctx_mask = torch.zeros((B, S), dtype=torch.bool)
    can = torch.full((B, C), pad_id, dtype=torch.long)
    can_pos = torch.zeros((B, C), dtype=torch.long)
    can_mask = torch.zeros((B, C), dtype=torch.bool)
    for i, e in enumerate(examples):
        n, m = len(e.context_ids), len(e.canvas_ids)
        ctx[i, :n] = torch.tensor(e.context_ids)
        ctx_pos[i, :n] = torch.tensor(e.context_positions)
        ctx_mask[i, :n] = True
        can[i, :m] = torch.tensor(e.canvas_ids)
        can_pos[i, :m] = torch.tensor(e.canvas_positions)
        can_mask[i, :m] = True
    return Batch(ctx, ctx_pos, ctx_mask, can, can_pos, can_mask)


def mask_canvas(canvas_ids: torch.Tensor, canvas_mask: torch.Tensor, mask_id: int,
                eps: float = 1e-3, generator: torch.Generator | None = None,
                t: torch.Tensor | None = None, t_max: float = 1.0):
    """MDLM/LLaDA forward process: mask each real canvas token with probability t ~ U(eps, 1).

    `t` (B,) or (B, C) may be given (fixed-noise evaluation, one t per block). Returns (noisy
    ids, masked (B,C) bool, t (B,) or (B, C)). Context is never masked.
    """
    B, C = canvas_ids.shape
    if t is None:
        t = eps + (t_max - eps) * torch.rand(B, generator=generator,
                                             device=canvas_ids.device)  # (B,)
    draw = torch.rand(B, C, generator=generator, device=canvas_ids.device)
    masked = (draw < (t[:, None] if t.dim() == 1 else t)) & canvas_mask  # (B, C)
    return torch.where(masked, torch.full_like(canvas_ids, mask_id), canvas_ids), masked, t


def edit_noise(noisy: torch.Tensor, masked: torch.Tensor, canvas_mask: torch.Tensor,
               rate: float, share: float, low: int, high: int,
               generator: torch.Generator | None = None):
    """Edit-based corruption (Seed Diffusion): in a `rate` of the rows, replace a `share` of the
    tokens left visible by random tokens from [low, high). Without it the model never learns
    that a committed token can be wrong, so re-masking and editing a selection cannot work.

    Returns (noisy ids, edited (B, C) bool); the loss covers edited positions too.
    """
    B, C = noisy.shape
    rows = torch.rand(B, 1, generator=generator, device=noisy.device) < rate
    pick = torch.rand(B, C, generator=generator, device=noisy.device) < share
    edited = rows & pick & canvas_mask & ~masked
    random_ids = torch.randint(low, high, (B, C), generator=generator, device=noisy.device)
    return torch.where(edited, random_ids, noisy), edited


def block_noise_level(blocks: torch.Tensor, real: torch.Tensor, eps: float = 1e-3,
                      generator: torch.Generator | None = None,
                      t_max: float = 1.0) -> torch.Tensor:
    """One t ~ U(eps, t_max) per block of each row, spread over its tokens: (B, N)."""
    B, N = blocks.shape
    per_block = eps + (t_max - eps) * torch.rand(B, N + 2, generator=generator,
                                             device=blocks.device)
    return per_block.gather(1, blocks.clamp(min=0))


def diffusion_loss(logits: torch.Tensor, targets: torch.Tensor, masked: torch.Tensor,
                   t: torch.Tensor, canvas_mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on masked canvas tokens weighted by 1/t, per real canvas token (LLaDA)."""
    B, C, V = logits.shape
    ce = torch.nn.functional.cross_entropy(logits.float().reshape(B * C, V),
                                           targets.reshape(B * C), reduction="none").view(B, C)
    weighted = (ce * masked / t[:, None]).sum(1)  # (B,)
    return (weighted / canvas_mask.sum(1).clamp(min=1)).mean()


def row_loss(logits: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor,
             weights: torch.Tensor, per_row: torch.Tensor) -> torch.Tensor:
    """`diffusion_loss` when the output head ran only on `rows` (B, T) bool: `logits` (N, V)
    are those rows' logits in row-major order. Each row's weighted cross-entropy (weights
    (B, T), e.g. 1/t) is summed and divided by `per_row` (B,), its real canvas tokens."""
    ce = torch.nn.functional.cross_entropy(logits.float(), targets[rows], reduction="none")
    full = torch.zeros(rows.shape, dtype=ce.dtype, device=ce.device)
    full[rows] = ce * weights[rows]
    return (full.sum(1) / per_row.clamp(min=1)).mean()
