"""The speculative strategy: drafts checked in one causal call give exactly left to right's
text (unit tests on a scripted AR target, and prompt lookup's drafts)."""

import numpy as np
import pytest

from dlm_lsp.draft import PromptLookup
from dlm_lsp.layout import build_layout
from dlm_lsp.modelcard import SpecialTokens
from dlm_lsp.sampler import SamplerSettings, denoise, denoise_batch
from tests.test_heal_shift import OnlyFirst

SPECIALS = SpecialTokens(pad=0, mask=1, end_of_span=2, file=3)
VOCAB = 24


class BigramTarget:
    """An autoregressive target over a causal canvas: the logits at each input position are a
    fixed function of that input token alone (a random bigram table), so a position depends
    only on the ones before it. Records every call's input length."""

    returns_logits = True

    def __init__(self, seed: int, eos_rate: float = 0.0):
        rng = np.random.default_rng(seed)
        self.table = rng.normal(size=(VOCAB, VOCAB)).astype(np.float32) * 3
        self.table[:, [SPECIALS.mask, SPECIALS.pad, SPECIALS.file]] = -30.0
        self.table[:, SPECIALS.end_of_span] = np.where(rng.random(VOCAB) < eos_rate, 30.0, -30.0)
        self.widths: list[int] = []

    def encode(self, layout):
        return layout

    def denoise_step(self, state, canvas_ids, canvas_positions, need_logits=False):
        self.widths.append(canvas_ids.shape[1])
        logits = self.table[canvas_ids]  # (1, C, V)
        ids = logits.argmax(-1)
        scores = np.exp(logits - logits.max(-1, keepdims=True))
        probs = (scores.max(-1) / scores.sum(-1)).astype(np.float32)
        out = (ids, probs, np.ones(canvas_ids.shape, np.float32))
        return out + (logits,) if need_logits else out


class Scripted:
    """A drafter that proposes a fixed continuation (right or wrong) of the context's
    `base` tokens: the part of it after what the hole has committed."""

    def __init__(self, tokens, base=0):
        self.tokens = list(tokens)
        self.base = base
        self.histories = []

    def draft(self, history, length):
        self.histories.append(list(history))
        return self.tokens[max(0, len(history) - self.base):][:length]


def settings(strategy, length, **kw):
    return SamplerSettings(strategy=strategy, max_steps=length, causal_canvas=True, **kw)


def greedy(target, context, length):
    """The target's own greedy continuation of `context` (what left to right must give; its
    first token is never end-of-span: min_tokens)."""
    out, last = [], context[-1]
    for index in range(length):
        scores = target.table[last].copy()
        if index == 0:
            scores[SPECIALS.end_of_span] = -np.inf
        last = int(scores.argmax())
        if last == SPECIALS.end_of_span:
            break
        out.append(last)
    return out


def test_prompt_lookup_continues_the_latest_earlier_match_longest_first():
    lookup = PromptLookup(max_ngram=3, min_ngram=1)
    history = [5, 6, 7, 8, 9, 5, 6, 7, 4, 6, 7]
    # the 3-gram (6, 7) ... is absent; 2-gram [6, 7] matched latest at index 5..6 → 4, 6, 7
    assert lookup.draft(history, 3) == [4, 6, 7]
    assert lookup.draft([5, 6, 7, 8, 5, 6, 7], 2) == [8, 5]  # the 3-gram 5 6 7
    assert lookup.draft([1, 2, 3], 4) == []  # nothing repeats
    assert PromptLookup(min_ngram=2).draft([9, 4, 5, 4], 3) == []  # a 1-gram is not enough
    assert PromptLookup(min_ngram=1).draft([9, 4, 5, 4], 3) == [5, 4]
    assert lookup.draft(history, 0) == []


@pytest.mark.parametrize("seed", range(40))
def test_speculative_gives_left_to_right_text_in_fewer_calls(seed):
    rng = np.random.default_rng(seed)
    target = BigramTarget(seed, eos_rate=0.05)
    # a context that repeats itself, as code does: drafts from lookup are often right
    phrase = rng.integers(4, VOCAB, size=6).tolist()
    context = (phrase + rng.integers(4, VOCAB, size=3).tolist()) * 3 + phrase[:2]
    length = 16
    layout = build_layout([context, []], [length], SPECIALS.file, shift=True)
    reference = denoise(target, layout, SPECIALS, settings("left_to_right", length))
    calls = len(target.widths)
    target.widths.clear()
    fast = denoise(target, layout, SPECIALS, settings("speculative", length),
                   drafter=PromptLookup(min_ngram=1))
    assert fast.canvases == reference.canvases
    assert reference.canvases[0] == greedy(target, [SPECIALS.file] + context, length)
    assert fast.steps == len(target.widths) <= calls
    assert sum(fast.committed_per_step) == sum(reference.committed_per_step)
    assert 0 <= fast.accepted <= fast.drafted


def test_a_right_draft_commits_the_whole_block_and_the_next_token_in_one_call():
    target = BigramTarget(3)
    context = [5, 6]
    truth = greedy(target, [SPECIALS.file] + context, 8)
    layout = build_layout([context, []], [8], SPECIALS.file, shift=True)
    result = denoise(target, layout, SPECIALS, settings("speculative", 8, draft_length=4),
                     drafter=Scripted(truth[:4], base=3))
    assert result.committed_per_step[0] == 5  # four drafted, all agreed, and one more
    assert result.canvases[0] == truth
    assert target.widths[0] == 5  # the anchor and the four drafted tokens
    assert result.accepted >= 4


def test_a_wrong_draft_costs_nothing_but_the_check():
    target = BigramTarget(4)
    context = [7]
    truth = greedy(target, [SPECIALS.file] + context, 6)
    wrong = [t + 1 if t + 1 < VOCAB else 4 for t in truth]
    layout = build_layout([context, []], [6], SPECIALS.file, shift=True)
    result = denoise(target, layout, SPECIALS, settings("speculative", 6),
                     drafter=Scripted(wrong, base=2))
    assert result.canvases[0] == truth
    assert result.accepted == 0 and result.committed_per_step == [1] * len(truth)


def test_the_drafter_reads_the_context_then_the_committed_tokens():
    target = BigramTarget(5)
    drafter = Scripted([])
    layout = build_layout([[5, 6, 7], []], [3], SPECIALS.file, shift=True)
    result = denoise(target, layout, SPECIALS, settings("speculative", 3), drafter=drafter)
    assert drafter.histories[0] == [SPECIALS.file, 5, 6, 7]
    assert drafter.histories[1] == [SPECIALS.file, 5, 6, 7] + result.canvases[0][:1]


def test_a_scope_that_closes_inside_an_accepted_block_ends_there():
    target = BigramTarget(6)
    truth = greedy(target, [SPECIALS.file, 9], 8)
    layout = build_layout([[9], []], [8], SPECIALS.file, shift=True)
    closed = lambda hole, ids: len(ids) >= 3  # noqa: E731
    result = denoise(target, layout, SPECIALS, settings("speculative", 8), closed=closed,
                     drafter=Scripted(truth, base=2))
    assert result.canvases[0] == truth[:3] and result.steps == 1


def test_no_draft_while_token_healing_constrains_the_frontier():
    target = BigramTarget(7)
    layout = build_layout([[9, 10], []], [6], SPECIALS.file, shift=True)
    heal = [OnlyFirst([11, 12])]  # a healed start: its first token is one of these
    reference = denoise(target, layout, SPECIALS, settings("left_to_right", 6), heals=heal)
    drafter = Scripted([11, 12, 13])
    fast = denoise(target, layout, SPECIALS, settings("speculative", 6), heals=heal,
                   drafter=drafter)
    assert fast.canvases == reference.canvases
    assert reference.canvases[0][0] in (11, 12)
    assert len(drafter.histories[0]) == 4  # first draft only after the healed position


def test_speculative_requests_in_a_batch_each_get_their_own_text():
    target = BigramTarget(8, eos_rate=0.1)
    layouts = [build_layout([c, []], [12], SPECIALS.file, shift=True)
               for c in ([5, 6, 5, 6, 5], [9, 8, 7, 9, 8], [4])]
    alone = [denoise(target, layout, SPECIALS, settings("left_to_right", 12)).canvases
             for layout in layouts]
    batch = denoise_batch(target, layouts, SPECIALS, settings("speculative", 12),
                          drafter=PromptLookup(min_ngram=1))
    assert [r.canvases for r in batch] == alone


def test_a_bidirectional_canvas_is_never_drafted():
    target = BigramTarget(9)
    drafter = Scripted([5, 5, 5])
    layout = build_layout([[5], []], [4], SPECIALS.file, shift=True)
    denoise(target, layout, SPECIALS, SamplerSettings(strategy="speculative", max_steps=4),
            drafter=drafter)
    assert drafter.histories == []


def test_prompt_lookup_falls_back_to_the_text_after_the_cursor():
    lookup = PromptLookup(min_ngram=2, source=(8, 5, 6, 9, 9, 5, 6, 4))
    assert lookup.draft([1, 2, 5, 6], 3) == [9, 9, 5]  # the source's first match: nearest
    assert lookup.draft([5, 6, 7, 1, 5, 6], 2) == [7, 1]  # the history's own match wins
    assert lookup.draft([1, 2, 3], 2) == []


def test_a_draft_is_cut_where_it_would_close_the_scope():
    target = BigramTarget(6)
    truth = greedy(target, [SPECIALS.file, 9], 8)
    layout = build_layout([[9], []], [8], SPECIALS.file, shift=True)
    closed = lambda hole, ids: len(ids) >= 3  # noqa: E731
    denoise(target, layout, SPECIALS, settings("speculative", 8), closed=closed,
            drafter=Scripted(truth, base=2))
    assert target.widths == [3]  # the anchor and two drafted tokens: the third closes it


class ContextTarget(BigramTarget):
    """An AR target whose every prediction reads the whole visible text before it: the
    logits at an input are the bigram table's row for the input token, shifted by the sum of
    every visible token up to it (context and inputs). A runtime that can append a call's
    inputs to the state (`appends`): the state is then the visible tokens themselves."""

    def __init__(self, seed, appends=True, eos_rate=0.0):
        super().__init__(seed, eos_rate)
        self.appends = appends
        self.rolls = np.random.default_rng(seed + 99).integers(0, VOCAB, size=7)

    def encode(self, layout):
        return [t for t, seen in zip(layout.context_ids, layout.decoder_mask()) if seen]

    def denoise_step(self, state, canvas_ids, canvas_positions, need_logits=False,
                     keep_canvas=False):
        self.widths.append(canvas_ids.shape[1])
        inputs = canvas_ids[0].tolist()
        rows = []
        for i, token in enumerate(inputs):
            shift = self.rolls[(sum(state) + sum(inputs[: i + 1])) % 7]
            row = np.roll(self.table[token], int(shift))
            row[[SPECIALS.mask, SPECIALS.pad, SPECIALS.file]] = -30.0
            rows.append(row)
        logits = np.array(rows, np.float32)[None]
        ids = logits.argmax(-1)
        scores = np.exp(logits - logits.max(-1, keepdims=True))
        probs = (scores.max(-1) / scores.sum(-1)).astype(np.float32)
        out = (ids, probs, np.ones(canvas_ids.shape, np.float32))
        out = out + (logits,) if need_logits else out
        return out + (inputs,) if keep_canvas else out

    def append_canvas(self, state, canvas, count):
        return state + canvas[:count]


@pytest.mark.parametrize("strategy", ["left_to_right", "speculative"])
@pytest.mark.parametrize("seed", range(12))
def test_committed_inputs_join_the_state_and_each_step_sends_only_the_new_ones(strategy, seed):
    rng = np.random.default_rng(seed)
    phrase = rng.integers(4, VOCAB, size=5).tolist()
    context = phrase * 3 + phrase[:2]
    layout = build_layout([context, []], [16], SPECIALS.file, shift=True)
    resend = ContextTarget(seed, appends=False, eos_rate=0.05)
    reference = denoise(resend, layout, SPECIALS, settings("left_to_right", 16))
    target = ContextTarget(seed, appends=True, eos_rate=0.05)
    result = denoise(target, layout, SPECIALS, settings(strategy, 16),
                     drafter=PromptLookup(min_ngram=1))
    assert result.canvases == reference.canvases
    if strategy == "left_to_right":  # one new input a step, not the whole canvas again
        assert set(target.widths) == {1}
    assert sum(target.widths) <= len(reference.canvases[0]) + result.drafted + 1


def test_a_draft_reaches_as_far_as_its_match_is_long():
    history = [5, 6, 7, 8, 9, 10, 11, 5, 6, 7]
    assert PromptLookup(max_ngram=3, reach=1).draft(history, 8) == [8, 9, 10]
    assert PromptLookup(max_ngram=3, reach=2).draft(history, 8) == [8, 9, 10, 11, 5, 6]
    assert PromptLookup(max_ngram=3, reach=2).draft(history, 4) == [8, 9, 10, 11]
    assert PromptLookup(max_ngram=3).draft(history, 5) == [8, 9, 10, 11, 5]


def test_lookup_then_features_drafts_by_lookup_first_and_checks_the_features_line_up():
    """LookupThenFeatures: lookup's draft where it has >= 2 tokens; else the feature drafter's,
    given the features after the ones it holds, only when they are exactly history[:-1]."""
    from dlm_lsp.draft import LookupThenFeatures, PromptLookup

    class Guesser:  # a FeatureDrafter's interface: a cache length, features in, guesses out
        def __init__(self):
            self.length, self.calls = 0, []

        def draft(self, features, anchor, length):
            self.calls.append((len(features), anchor))
            self.length += len(features)
            return [7, 7, 7][:length]

    made = []
    drafts = LookupThenFeatures(PromptLookup(min_ngram=1, max_ngram=4),
                                lambda: made.append(Guesser()) or made[-1])
    width = 3
    rows = lambda start, total: np.zeros((max(0, total - start), width))  # noqa: E731
    # a repeat in the history: lookup's draft, the drafter never made
    assert drafts.draft([1, 2, 3, 4, 1, 2], 4, lambda s: rows(s, 5)) == [3, 4, 1, 2]
    assert not made
    # no repeat: the drafter gets the 4 features of history[:-1] and anchor 9
    assert drafts.draft([1, 2, 3, 4, 9], 4, lambda s: rows(s, 4)) == [7, 7, 7]
    assert made[0].calls == [(4, 9)]
    # two tokens later it gets only the two new ones
    assert drafts.draft([1, 2, 3, 4, 9, 10, 11], 4, lambda s: rows(s, 6)) == [7, 7, 7]
    assert made[0].calls[-1] == (2, 11)
    # features that do not line up with the history (one short): lookup's (empty) draft
    assert drafts.draft([1, 2, 3, 4, 9, 10, 11, 12], 4, lambda s: rows(s, 6)) == []
    # a fresh drafter (another request) has its own cache
    other = drafts.fresh()
    assert other.draft([5, 6, 8], 2, lambda s: rows(s, 2)) == [7, 7] and len(made) == 2
