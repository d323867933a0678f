"""Batches grouped by length: bounded size, little padding, nothing lost."""

import random

from model_export.data import Example
from model_export.stream import group_by_length


def _example(context: int, canvas: int) -> Example:
    return Example(list(range(context)), list(range(context)), [5] * canvas,
                   list(range(canvas)), [(0, canvas)], [canvas])


def test_group_by_length_bounds_padding_and_loses_nothing():
    rng = random.Random(0)
    pool = [_example(rng.choice([rng.randint(8, 130), rng.randint(400, 512)]),
                     rng.choice([16, 32, 64, 128, 48])) for _ in range(600)]
    batches, left_over = group_by_length(pool, 16, 0.1)
    assert sum(map(len, batches)) + len(left_over) == len(pool)
    real = padded = 0
    for batch in batches:
        assert 1 <= len(batch) <= 16
        assert len({len(e.canvas_ids) for e in batch}) == 1
        longest = max(len(e.context_ids) for e in batch) + len(batch[0].canvas_ids)
        real += sum(len(e.context_ids) + len(e.canvas_ids) for e in batch)
        padded += len(batch) * longest
    assert 1 - real / padded <= 0.1
    assert len(left_over) < 5 * 16  # at most one partial batch per canvas length
