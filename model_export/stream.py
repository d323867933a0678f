"""Training batches, made ahead of the step in worker processes and grouped by length.

Each worker cuts its own examples (`ExampleMaker`, seeded by rank, worker and step so a resumed
run does not replay the same ones) and yields ready, padded batches of two kinds:

* **infill** — the server's requests (`data.Example`): a pool of examples is grouped by canvas
  length, sorted by context length, and cut into batches of at most `batch_size` that stay
  under `max_pad_share` padding (the rare long contexts make small batches of their own; what
  is left of a group waits for the next pool);
* **blocks** — block-diffusion runs of a file (`data.BlockExample`, BD3-LM): every token is a
  canvas token against the clean text before its block, so about half of all computed tokens
  carry loss (an infill example has most of its tokens in the context, which carries none).

The training step draws from `torch.utils.data.DataLoader(BatchStream(...), batch_size=None,
num_workers=...)`; with no workers it runs in the training process (tests).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import torch

from .data import (ExampleMaker, ExampleSettings, collate, collate_blocks,
                   make_block_example)


@dataclass(frozen=True, kw_only=True)
class StreamPlan:
    batch_size: int = 16  # infill examples per batch
    block_rate: float = 0.0  # share of batches that are block-diffusion batches
    block_batch_size: int = 8  # block examples per batch
    block_tokens: int = 256  # text tokens per block example (file token not counted)
    block_sizes: tuple[int, ...] = (16, 32, 64)  # canvas lengths a run is cut into
    pool_batches: int = 32  # infill batches' worth of examples made at once and grouped
    max_pad_share: float = 0.1  # an infill batch closes before its padding passes this


class BatchStream(torch.utils.data.IterableDataset):
    """Endless ("infill", Batch) and ("blocks", BlockBatch) items; see the module doc."""

    def __init__(self, texts: list[str], languages: list[str], tokenizer_path: str, specials,
                 settings: ExampleSettings, plan: StreamPlan, seed: int, rank: int = 0,
                 step: int = 0):
        super().__init__()
        self.texts, self.languages = texts, languages
        self.tokenizer_path = str(tokenizer_path)
        self.specials, self.settings, self.plan = specials, settings, plan
        self.seed, self.rank, self.step = seed, rank, step

    def __iter__(self):
        from .tokenizer import load_tokenizer

        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        rng = random.Random(f"{self.seed}/{self.rank}/{worker}/{self.step}")
        maker = ExampleMaker(self.texts, self.languages, load_tokenizer(self.tokenizer_path),
                             self.specials, self.settings)
        pending: list = []
        self._left_over: list = []
        while True:
            if self.plan.block_rate and rng.random() < self.plan.block_rate:
                yield "blocks", self.block_batch(maker, rng)
                continue
            if not pending:
                pending = self.infill_batches(maker, rng)
            yield "infill", pending.pop()

    def infill_batches(self, maker: ExampleMaker, rng: random.Random) -> list:
        """Batches from one pool (plus what the last pool left over), in random order."""
        plan = self.plan
        pool = self._left_over + [maker.make(rng) for _ in range(plan.batch_size
                                                                 * plan.pool_batches)]
        batches, self._left_over = group_by_length(pool, plan.batch_size, plan.max_pad_share)
        rng.shuffle(batches)
        return [collate(b, self.specials.pad) for b in batches]

    def block_batch(self, maker: ExampleMaker, rng: random.Random):
        plan = self.plan
        examples = [make_block_example(maker, rng, plan.block_tokens, plan.block_sizes)
                    for _ in range(plan.block_batch_size)]
        return collate_blocks(examples, self.specials.pad)


def group_by_length(examples: list, batch_size: int, max_pad_share: float):
    """(batches, left over): examples of one canvas length, by context length, cut so that
    no batch holds more than `batch_size` or more than `max_pad_share` padding. The last,
    partial batch of each canvas length is left over for the next pool."""
    groups: dict[int, list] = {}
    for example in examples:
        groups.setdefault(len(example.canvas_ids), []).append(example)
    batches, left_over = [], []
    for canvas, group in groups.items():
        group.sort(key=lambda e: len(e.context_ids))
        current: list = []
        for example in group:
            longest = len(example.context_ids)  # sorted: the newcomer is the longest
            real = sum(len(e.context_ids) for e in current) + longest + canvas * (len(current) + 1)
            padded = (len(current) + 1) * (longest + canvas)
            if current and (len(current) == batch_size or 1 - real / padded > max_pad_share):
                batches.append(current)
                current = []
            current.append(example)
        if len(current) == batch_size:
            batches.append(current)
        else:
            left_over.extend(current)
    return batches, left_over


def batch_loader(stream: BatchStream, workers: int, pin_memory: bool = False):
    """An endless iterator of batches; `workers` processes make them ahead of the step."""
    return iter(torch.utils.data.DataLoader(
        stream, batch_size=None, num_workers=workers, pin_memory=pin_memory,
        prefetch_factor=8 if workers else None, persistent_workers=bool(workers)))
