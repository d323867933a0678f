"""The DFlash drafter, the torch speculative loop that validates it, and its training step."""

import argparse
import json
from pathlib import Path

import pytest
import torch

from dlm_lsp.draft import PromptLookup
from model_export.drafter import Drafter, DrafterConfig
from model_export.model import Denoiser, DenoiserConfig, block_mask
from model_export.speculative import (TargetSession, confident_drafter_else_lookup,
                                      drafter_proposer, greedy_reference, lookup_then, replay,
                                      speculative_decode)
from model_export.train_drafter import (TrainWindows, add_train_drafter_arguments,
                                        block_labels, curve_table, evaluate_tau,
                                        position_weights,
                                        sample_anchors, train_drafter)

TARGET = DenoiserConfig(vocab_size=61, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=8,
                        mlp_hidden=40, canvas_attention="causal", shift=True)


def _target(seed=0) -> Denoiser:
    torch.manual_seed(seed)
    return Denoiser(TARGET).eval().requires_grad_(False)


def _drafter(target, seed=1, **fields) -> Drafter:
    torch.manual_seed(seed)
    drafter = Drafter.for_target(target, target_layers=[1, 3], **{"block_size": 4, **fields})
    for layer in drafter.layers:  # not the zero start: the pass must depend on its inputs
        torch.nn.init.normal_(layer.attn.proj.weight, std=0.2)
        torch.nn.init.normal_(layer.mlp.down.weight, std=0.2)
    return drafter.eval()


def _greedy(target, prompt, n_new):
    """Plain greedy decoding: the whole text through the model for every token."""
    ids = list(prompt)
    for _ in range(n_new):
        x = torch.tensor([ids])
        real = torch.ones_like(x, dtype=torch.bool)
        h = target.hidden(x, torch.arange(len(ids))[None],
                          block_mask(real, torch.zeros_like(real), causal=True))
        ids.append(int(target.logits(h)[0, -1].argmax()))
    return ids[len(prompt):]


def _prompt(seed, n=20):
    g = torch.Generator().manual_seed(seed)
    body = torch.randint(3, TARGET.vocab_size, (n // 2,), generator=g).tolist()
    return body + body  # a repeat, so prompt lookup has matches


def test_session_in_pieces_equals_one_causal_pass():
    target = _target()
    ids = _prompt(0)
    session = TargetSession(target, [1, 3])
    logits = torch.cat([session.run(ids[:7]), session.run(ids[7:12]), session.run(ids[12:])])
    x = torch.tensor([ids])
    real = torch.ones_like(x, dtype=torch.bool)
    allowed = block_mask(real, torch.zeros_like(real), causal=True)
    states = target.layer_states(x, torch.arange(len(ids))[None], allowed, [1, 3])
    assert torch.allclose(logits, target.logits(states[-1])[0], atol=1e-5)
    assert torch.allclose(session.states, torch.cat(states, -1), atol=1e-5)
    session.truncate(9)
    session.run(ids[9:])  # a truncated tail run again is the same
    assert torch.allclose(session.states, torch.cat(states, -1), atol=1e-5)


@pytest.mark.parametrize("kind", ["none", "oracle", "wrong", "lookup"])
def test_speculative_loop_is_greedy_decoding_and_counts_calls(kind):
    target = _target()
    prompt, n_new, width = _prompt(1), 12, 3
    greedy = _greedy(target, prompt, n_new)

    def oracle(session, history, length):
        done = len(history) - len(prompt)
        return greedy[done : done + length]

    def wrong(session, history, length):
        done = len(history) - len(prompt)
        return [(t + 1) % TARGET.vocab_size for t in greedy[done : done + length]]

    lookup = PromptLookup()
    propose = {"none": None, "oracle": oracle, "wrong": wrong,
               "lookup": lambda s, h, n: lookup.draft(h, n)}[kind]
    decoded = speculative_decode(TargetSession(target), prompt, n_new, propose, width)
    assert decoded.tokens == greedy
    if kind in ("none", "wrong"):
        assert decoded.calls == n_new and decoded.accepted == 0 and decoded.tau == 1.0
    if kind == "oracle":  # every draft accepted: width + 1 tokens a call
        assert decoded.calls == n_new // (width + 1) and decoded.accepted == decoded.drafted


def test_drafter_keeps_only_its_own_parameters_and_fits_the_budget():
    drafter = Drafter(DrafterConfig())  # the SmolLM2-135M shape, 3 target layers, 1 layer
    names = list(drafter.state_dict())
    assert not any(name.startswith(("embed", "norm.")) for name in names)
    assert drafter.num_params() * 2 <= 15e6  # float16 bytes


def test_a_block_sees_its_anchor_context_and_nothing_of_other_blocks():
    target = _target()
    drafter = _drafter(target)
    S = 14
    torch.manual_seed(3)
    context = torch.randn(1, S, TARGET.d_model)
    positions = torch.arange(S)[None]
    anchors = torch.tensor([[5, 9]])
    anchor_ids = torch.tensor([[7, 8]])
    with torch.no_grad():
        both = drafter(target, anchor_ids, anchors, context, positions)  # (1, 2, 3, V)
        first = drafter(target, anchor_ids[:, :1], anchors[:, :1], context, positions)
        later = context.clone()
        later[:, 5:] += 1.0  # the context from the first anchor on
        moved = drafter(target, anchor_ids, anchors, later, positions)
        other = drafter(target, torch.tensor([[7, 30]]), anchors, context, positions)
    assert both.shape == (1, 2, 3, TARGET.vocab_size)
    assert torch.allclose(both[:, :1], first, atol=1e-5)  # block 2 does not leak into 1
    assert torch.allclose(moved[:, 0], both[:, 0], atol=1e-5)  # nothing at/after its anchor
    assert not torch.allclose(moved[:, 1], both[:, 1])  # block 2 reads positions 5..8
    assert torch.allclose(other[:, 0], both[:, 0], atol=1e-5)
    assert not torch.allclose(other[:, 1], both[:, 1])  # its own anchor matters


def test_drafter_drafts_in_the_loop_and_combined_proposers_stay_lossless():
    target = _target()
    drafter = _drafter(target)
    prompt, n_new = _prompt(2), 10
    greedy = _greedy(target, prompt, n_new)
    propose = drafter_proposer(drafter)
    session = TargetSession(target, drafter.cfg.target_layers)
    session.run(prompt[:-1])
    draft = propose(session, prompt, 3)
    assert len(draft) == 3 and 0.0 < session.extra["drafter_first"] <= 1.0
    lookup = PromptLookup()
    for proposer in (propose, lookup_then(lookup, propose),
                     confident_drafter_else_lookup(propose, lookup, threshold=0.99)):
        decoded = speculative_decode(TargetSession(target, [1, 3]), prompt, n_new, proposer, 3)
        assert decoded.tokens == greedy
    references = [greedy_reference(target, p, n_new, [1, 3]) for p in (prompt, _prompt(4))]
    assert references[0].continuation == greedy
    taus = evaluate_tau(target, drafter, references)
    assert taus["cursors"] == 2 and taus["new_tokens"] == n_new
    assert all(1.0 <= taus[f"tau_{k}"] <= 4.0 for k in ("drafter", "lookup"))


def test_replay_against_the_greedy_reference_counts_what_the_loop_counts():
    """Scoring a proposer against the greedy continuation (no target calls) gives the calls
    and acceptances of the real draft-and-check loop, drafter and lookup alike."""
    target = _target()
    drafter = _drafter(target)
    lookup = PromptLookup()
    for seed in (5, 6):
        prompt = _prompt(seed, 24)
        reference = greedy_reference(target, prompt, 14, [1, 3])
        assert reference.session.states.shape[1] == len(prompt) + 13
        for make in (lambda: drafter_proposer(drafter), lambda: lambda s, h, n: lookup.draft(h, n),
                     lambda: lookup_then(lookup, drafter_proposer(drafter))):
            loop = speculative_decode(TargetSession(target, [1, 3]), prompt, 14, make(), 3)
            replayed = replay(reference, make(), 3)
            assert loop.tokens == replayed.tokens == reference.continuation
            assert (loop.calls, loop.accepted, loop.drafted) == \
                (replayed.calls, replayed.accepted, replayed.drafted)


def test_labels_anchors_and_weights():
    ids = torch.arange(20)[None] + 3
    anchors = sample_anchors([20], 5, 4, 2, torch.Generator().manual_seed(0))
    assert anchors.shape == (1, 5) and len(set(anchors[0].tolist())) == 5
    assert anchors.min() >= 2 and anchors.max() <= 16
    text = block_labels(ids, None, anchors, 4, None)
    assert torch.equal(text, anchors[:, :, None] + torch.arange(1, 4) + 3)
    target = _target()
    x = torch.randint(0, TARGET.vocab_size, (1, 20))
    real = torch.ones_like(x, dtype=torch.bool)
    (final,) = target.layer_states(x, torch.arange(20)[None],
                                   block_mask(real, torch.zeros_like(real), causal=True), [3])
    greedy = block_labels(x, final, anchors, 4, target)
    expected = target.logits(final).argmax(-1)[0]  # output at p predicts p+1
    assert greedy[0, 0, 0] == expected[anchors[0, 0]]
    w = position_weights(8, 4.0)
    assert w.shape == (7,) and w[0] == 1.0 and (w[1:] < w[:-1]).all()


def test_windows_resume_where_they_stopped():
    texts = [" ".join(str(i) for i in range(k, k + 200)) for k in range(6)]
    encode = lambda text: [ord(c) for c in text]  # noqa: E731
    windows = TrainWindows(texts, encode, 64, 20, seed=5)
    windows.next()
    state = windows.state()
    after = [windows.next() for _ in range(8)]  # crosses an epoch
    again = TrainWindows(texts, encode, 64, 20, seed=0)
    again.load_state(state)
    assert [again.next() for _ in range(8)] == after


def test_training_runs_checkpoints_and_resumes(tmp_path, tiny_corpus, tiny_tokenizer):
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(tiny_tokenizer)).get_vocab_size()
    torch.manual_seed(0)
    cfg = DenoiserConfig(vocab_size=vocab, n_layers=2, n_heads=2, head_dim=16, mlp_hidden=32,
                         canvas_attention="causal", shift=True)
    target_path = tmp_path / "target.pt"
    torch.save({"model": Denoiser(cfg).state_dict(), "config": cfg.to_dict()}, target_path)
    parser = argparse.ArgumentParser()
    add_train_drafter_arguments(parser)
    common = ["--target", str(target_path), "--tokenizer", str(tiny_tokenizer),
              "--corpus", str(tiny_corpus), "--out", str(tmp_path / "run"), "--layers", "1,2",
              "--window", "64", "--blocks-per-window", "4", "--block-size", "4",
              "--eval-cursors", "2", "--eval-prefix", "24", "--eval-tokens", "6",
              "--log-every", "1"]
    first = train_drafter(parser.parse_args(common + ["--max-steps", "3"]))
    assert first["step"] == 3
    saved = torch.load(tmp_path / "run" / "last.pt", weights_only=False)
    assert saved["step"] == 3 and saved["tokens_seen"] == first["tokens_seen"]
    second = train_drafter(parser.parse_args(common + ["--max-steps", "5", "--resume"]))
    assert second["step"] == 5 and second["tokens_seen"] > first["tokens_seen"]
    curve = [json.loads(line) for line in open(tmp_path / "run" / "curve.jsonl")]
    assert curve[0]["step"] == 0 and curve[-1]["step"] == 5
    assert {"tau_drafter", "tau_lookup", "tau_lookup_then_drafter"} <= set(curve[0])
    table = curve_table(curve).splitlines()
    assert len(table) == 2 + len(curve) and table[2].startswith("| 0.0 | 0 | 0 | – |")


BASE = Path(__file__).resolve().parents[2] / "runs" / "smollm2" / "base.pt"
VAL = Path(__file__).resolve().parents[2] / "runs" / "corpus" / "val.jsonl.zst"


@pytest.mark.slow
@pytest.mark.skipif(not (BASE.is_file() and VAL.is_file()),
                    reason="needs the imported target (runs/smollm2) and runs/corpus")
def test_replay_equals_the_real_loop_on_the_imported_target():
    """On SmolLM2-135M in float32, 3 validation cursors: the draft-and-check loop (lookup
    first, then a drafter) commits the greedy reference and counts what `replay` counts."""
    from tokenizers import Tokenizer

    from model_export.corpus import read_corpus
    from model_export.train_drafter import load_target, validation_cursors

    torch.set_num_threads(1)
    tokenizer = Tokenizer.from_file(str(BASE.with_name("tokenizer.json")))
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False).ids  # noqa: E731
    target = load_target(BASE, torch.float32)
    torch.manual_seed(0)
    drafter = Drafter.for_target(target, target_layers=[2, 21, 29]).eval()
    texts = [r["text"] for r in read_corpus(VAL)]
    lookup = PromptLookup()
    for prompt in validation_cursors(texts, encode, 3, 480, 32, 0):
        reference = greedy_reference(target, prompt, 32, [2, 21, 29])
        loop = speculative_decode(TargetSession(target, [2, 21, 29]), prompt, 32,
                                  lookup_then(lookup, drafter_proposer(drafter)), 7)
        replayed = replay(reference, lookup_then(lookup, drafter_proposer(drafter)), 7)
        assert loop.tokens == replayed.tokens == reference.continuation
        assert (loop.calls, loop.accepted) == (replayed.calls, replayed.accepted)
