"""Training examples look like the server's requests; masking follows MDLM/LLaDA."""

import random
from collections import Counter

import torch

from dlm_lsp.layout import build_layout
from model_export.corpus import read_corpus
from model_export.data import (ExampleMaker, ExampleSettings, collate, diffusion_loss,
                               mask_canvas)
from model_export.tokenizer import load_tokenizer, special_tokens


def _maker(tiny_corpus, tiny_tokenizer, **settings):
    records = list(read_corpus(tiny_corpus / "train.jsonl.zst"))
    tokenizer = load_tokenizer(tiny_tokenizer)
    return ExampleMaker([r["text"] for r in records], [r["language"] for r in records],
                        tokenizer, special_tokens(tokenizer), ExampleSettings(**settings))


def test_examples_fit_budgets_and_buckets(tiny_corpus, tiny_tokenizer):
    maker = _maker(tiny_corpus, tiny_tokenizer)
    specials = maker.specials
    rng = random.Random(0)
    kinds = Counter()
    two_holes = ended = 0
    for _ in range(300):
        example = maker.make(rng)
        kinds.update(example.kinds)
        assert len(example.context_ids) <= 512
        assert example.context_ids[0] == specials.file and example.context_positions[0] == 0
        assert specials.mask not in example.context_ids + example.canvas_ids
        for (start, length), real in zip(example.holes, example.middle_lengths):
            assert length in (16, 32, 64, 128) and real <= length
            canvas = example.canvas_ids[start: start + length]
            assert all(t == specials.end_of_span for t in canvas[real:])
            ended += real < length
        # every position is used once: context and canvases tile 0..N-1
        positions = sorted(example.context_positions + example.canvas_positions)
        assert positions == list(range(len(positions)))
        two_holes += len(example.holes) == 2
    assert set(kinds) >= {"rest_of_line", "line", "lines", "node", "random"}
    assert two_holes > 5 and ended > 250


def test_pieces_are_tokenized_separately(tiny_corpus, tiny_tokenizer):
    """Context and canvas decode back to contiguous text of the file (a window of it)."""
    maker = _maker(tiny_corpus, tiny_tokenizer, two_hole_rate=0.0, no_suffix_rate=0.0)
    tok = maker.tok
    rng = random.Random(1)
    found = 0
    for _ in range(50):
        example = maker.make(rng)
        start, length = example.holes[0]
        middle = example.canvas_ids[start: start + example.middle_lengths[0]]
        p = example.canvas_positions[0] - 1  # prefix tokens before the canvas
        prefix, suffix = example.context_ids[1: 1 + p], example.context_ids[1 + p:]
        text = tok.decode(prefix) + tok.decode(middle) + tok.decode(suffix)
        assert build_layout([prefix, suffix], [length], maker.specials.file).context_ids == \
            example.context_ids
        found += any(text in t for t in maker.texts)
    assert found >= 45  # (a middle cut at 128 tokens can split a character's bytes)


def test_masking_and_loss():
    specials_mask = 1
    canvas = torch.randint(4, 50, (64, 32))
    canvas_mask = torch.ones_like(canvas, dtype=torch.bool)
    canvas_mask[:, 20:] = False
    g = torch.Generator().manual_seed(0)
    noisy, masked, t = mask_canvas(canvas, canvas_mask, specials_mask, generator=g)
    assert ((noisy == specials_mask) == masked).all()
    assert not masked[:, 20:].any()
    assert ((t > 0) & (t <= 1)).all()
    rate = masked[:, :20].float().mean(1)
    assert torch.corrcoef(torch.stack([rate, t]))[0, 1] > 0.8  # mask rate follows t
    logits = torch.zeros(64, 32, 50)
    loss = diffusion_loss(logits, canvas, masked, t, canvas_mask)
    expected = (torch.log(torch.tensor(50.0)) * masked.sum(1) / t / 20).mean()
    assert torch.allclose(loss, expected, rtol=1e-4)


def test_collate_pads(tiny_corpus, tiny_tokenizer):
    maker = _maker(tiny_corpus, tiny_tokenizer)
    rng = random.Random(2)
    examples = [maker.make(rng) for _ in range(6)]
    batch = collate(examples, maker.specials.pad)
    assert batch.context_mask.sum(1).tolist() == [len(e.context_ids) for e in examples]
    assert batch.canvas_mask.sum(1).tolist() == [len(e.canvas_ids) for e in examples]


def test_edit_noise_touches_only_visible_real_tokens():
    from model_export.data import edit_noise

    g = torch.Generator().manual_seed(0)
    clean = torch.randint(10, 50, (64, 32), generator=g)
    canvas_mask = torch.ones(64, 32, dtype=torch.bool)
    canvas_mask[:, 28:] = False
    noisy, masked, _ = mask_canvas(clean, canvas_mask, 1, generator=g)
    edited_ids, edited = edit_noise(noisy, masked, canvas_mask, 0.5, 0.3, 4, 100, generator=g)
    assert not (edited & masked).any() and not (edited & ~canvas_mask).any()
    assert edited.any()
    rows_with_edits = edited.any(1).float().mean().item()
    assert 0.2 < rows_with_edits < 0.8  # about the asked rate of rows
    assert torch.equal(edited_ids[~edited], noisy[~edited])
    assert (edited_ids[edited] >= 4).all()


def test_block_noise_is_one_level_per_block():
    from model_export.data import block_noise_level

    blocks = torch.tensor([[-1, 0, 0, 0, 1, 1, 2, 9, 9]])
    real = blocks < 9
    t = block_noise_level(blocks, real, generator=torch.Generator().manual_seed(1))
    assert t[0, 1] == t[0, 2] == t[0, 3] and t[0, 4] == t[0, 5]
    assert t[0, 3] != t[0, 4] and ((t > 0) & (t <= 1)).all()


def test_clipped_noise_levels_bound_the_loss_weights():
    from model_export.data import block_noise_level

    g = torch.Generator().manual_seed(2)
    clean = torch.randint(10, 50, (256, 16), generator=g)
    _, _, t = mask_canvas(clean, torch.ones_like(clean, dtype=torch.bool), 1, eps=0.2,
                          generator=g)
    assert t.min() >= 0.2 and t.max() <= 1.0  # 1/t weights at most 5
    blocks = torch.arange(64).repeat_interleave(4)[None]
    t = block_noise_level(blocks, blocks >= 0, eps=0.3, t_max=0.8, generator=g)
    assert t.min() >= 0.3 and t.max() <= 0.8
