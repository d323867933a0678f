"""The speculative loop in torch: draft, check in one causal target call, commit; tau.

`speculative_decode` is the serving side's `strategy: speculative` (dlm_lsp/sampler.py) without
the server: the target checks `[frontier token, draft...]` in one causal call over its cached
keys/values, the agreeing prefix of the draft plus the target's own next token is committed, and
the cache keeps the accepted tokens only. The text is the target's greedy text whatever the
drafts; what a drafter changes is tau, the mean number of tokens committed per target call
(1.0 left to right). This is how the drafter is validated during training: on cursors of
validation files, against the same target.

`TargetSession` is the frozen target over one growing text: per-layer keys/values and the
residual streams of the layers a drafter reads, for every token run so far.

A proposer is `propose(session, history, length) -> list[int]`: `history` is the text so far
(its last token is the frontier, which the session has not run yet), so the session holds the
target's states of every position before the frontier — a drafter's context before its anchor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .model import Denoiser

Proposer = Callable[["TargetSession", Sequence[int], int], list[int]]


class TargetSession:
    """The target's keys/values and chosen layer states (0: embedding, L: last block) of every
    token run so far, batch 1; `run` extends them, `truncate` drops a rejected tail."""

    def __init__(self, target: Denoiser, layers: Sequence[int] = ()):
        self.target = target
        self.layers = list(layers)
        self.keys: list[torch.Tensor] = []  # per block (1, Hkv, P, D)
        self.values: list[torch.Tensor] = []
        self.states: torch.Tensor | None = None  # (1, P, K·d), K = len(layers)
        self.length = 0
        self.extra: dict = {}  # proposers' caches of committed positions (copied shallowly)

    @torch.no_grad()
    def run(self, ids: Sequence[int]) -> torch.Tensor:
        """Run `ids` after the text so far (causal); their next-token logits (T, V)."""
        target = self.target
        T = len(ids)
        device = target.embed.weight.device
        positions = torch.arange(self.length, self.length + T, device=device)[None]
        x = target.embed(torch.tensor([list(ids)], device=device))  # (1, T, d)
        cos, sin = target.rotary(positions, x.dtype)
        causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()
        allowed = torch.cat([torch.ones(T, self.length, dtype=torch.bool, device=device),
                             causal], dim=1)[None]  # (1, T, P+T)
        states = {0: x}
        for index, block in enumerate(target.blocks):
            if self.length:
                x, k, v = block(x, cos, sin, allowed, self.keys[index], self.values[index])
                self.keys[index] = torch.cat([self.keys[index], k], dim=2)
                self.values[index] = torch.cat([self.values[index], v], dim=2)
            else:
                x, k, v = block(x, cos, sin, allowed)
                self.keys.append(k)
                self.values.append(v)
            states[index + 1] = x
        if self.layers:
            new = torch.cat([states[layer] for layer in self.layers], dim=-1)  # (1, T, K·d)
            self.states = new if self.states is None else torch.cat([self.states, new], dim=1)
        self.length += T
        return target.logits(x)[0]  # (T, V)

    def truncate(self, length: int) -> None:
        """Keep the first `length` tokens (the accepted ones)."""
        self.keys = [k[:, :, :length] for k in self.keys]
        self.values = [v[:, :, :length] for v in self.values]
        if self.states is not None:
            self.states = self.states[:, :length]
        self.length = length

    def copy(self) -> "TargetSession":
        other = TargetSession(self.target, self.layers)
        other.keys, other.values = list(self.keys), list(self.values)  # tensors never mutated
        other.states, other.length = self.states, self.length
        other.extra = dict(self.extra)
        return other


@dataclass
class Decoded:
    tokens: list[int]  # the committed continuation (the target's greedy text)
    calls: int  # target calls after the prompt
    drafted: int  # drafted tokens checked
    accepted: int  # drafted tokens the target agreed with

    @property
    def tau(self) -> float:
        """Tokens committed per target call."""
        return len(self.tokens) / max(self.calls, 1)


def speculative_decode(session: TargetSession, prompt: Sequence[int], n_new: int,
                       propose: Proposer | None, draft_length: int) -> Decoded:
    """Greedy continuation of `prompt` (n_new tokens) by draft-and-check.

    `session` holds nothing yet or exactly `prompt[:-1]` (a prefilled copy shared by several
    proposers); the prompt's last token is the first frontier. Each call checks
    `[frontier, draft...]`, commits the draft's agreeing prefix and the target's next token,
    and truncates the cache to the accepted tokens. Drafts are cut so that no call commits
    past n_new tokens.
    """
    if session.length == 0 and len(prompt) > 1:
        session.run(prompt[:-1])
    if session.length != len(prompt) - 1:
        raise ValueError("the session must hold the prompt but its last token")
    history = list(prompt)
    tokens: list[int] = []
    calls = drafted = accepted = 0
    while len(tokens) < n_new:
        room = min(draft_length, n_new - len(tokens) - 1)
        draft = list(propose(session, history, room))[:room] if propose and room > 0 else []
        greedy = session.run([history[-1]] + draft).argmax(-1).tolist()  # (1 + len(draft),)
        calls += 1
        agree = 0
        while agree < len(draft) and draft[agree] == greedy[agree]:
            agree += 1
        session.truncate(session.length - (len(draft) - agree))  # frontier + accepted draft
        committed = greedy[: agree + 1]
        history += committed
        tokens += committed
        drafted += len(draft)
        accepted += agree
    return Decoded(tokens=tokens, calls=calls, drafted=drafted, accepted=accepted)


@dataclass
class GreedyReference:
    """A prompt's greedy continuation by the target, decoded one token per call, and the
    session that decoded it (it holds the target's states of prompt + continuation but its
    last token). Drafters are scored against it by `replay`."""

    prompt: list[int]
    continuation: list[int]
    session: TargetSession


def greedy_reference(target: Denoiser, prompt: Sequence[int], n_new: int,
                     layers: Sequence[int]) -> GreedyReference:
    session = TargetSession(target, layers)
    decoded = speculative_decode(session, prompt, n_new, None, 0)
    session.keys, session.values = [], []  # only the states are read from here on
    return GreedyReference(list(prompt), decoded.tokens, session)


class _Prefix:
    """A read-only view of a reference session cut at the frontier: what a proposer sees in
    the loop (the target's states of the positions before the frontier)."""

    def __init__(self, session: TargetSession, length: int, extra: dict):
        self.target, self.layers = session.target, session.layers
        self.states, self.length, self.extra = session.states, length, extra


def replay(reference: GreedyReference, propose: Proposer, draft_length: int) -> Decoded:
    """`speculative_decode` without the target calls: since the loop is lossless, the text it
    commits is the greedy continuation, and a check accepts exactly the draft's agreeing
    prefix with it (the target's output at an accepted position is the one greedy decoding
    computed). So tau is computed from the continuation alone, free of the numerical noise
    of checking a batch of positions in bf16 (a near-tie can flip between a one-token call
    and an eight-token one), and a proposer costs only its own passes."""
    prompt, continuation = reference.prompt, reference.continuation
    n_new = len(continuation)
    extra: dict = {}
    done = calls = drafted = accepted = 0
    while done < n_new:
        room = min(draft_length, n_new - done - 1)
        history = prompt + continuation[:done]
        view = _Prefix(reference.session, len(history) - 1, extra)
        draft = list(propose(view, history, room))[:room] if room > 0 else []
        agree = 0
        while agree < len(draft) and draft[agree] == continuation[done + agree]:
            agree += 1
        calls += 1
        drafted += len(draft)
        accepted += agree
        done += agree + 1
    return Decoded(tokens=list(continuation), calls=calls, drafted=drafted, accepted=accepted)


def drafter_proposer(drafter, min_confidence: float = 0.0) -> Proposer:
    """A proposer drafting with a trained `Drafter` (model_export.drafter) on the session's
    target features: the block [frontier, mask...] against every position before it. The
    fused context is cached in the session (committed positions never change). With
    `min_confidence`, the draft stops before the first guess less probable than that. The
    first guess's probability is left in `session.extra["drafter_first"]`."""

    @torch.no_grad()
    def propose(session: TargetSession, history: Sequence[int], length: int) -> list[int]:
        n = session.length
        fused = session.extra.get("drafter_fused")
        have = 0 if fused is None else min(fused.shape[1], n)
        if have < n:
            new = drafter.fusion(session.states[:, have:n].to(drafter.mask_embedding.dtype))
            fused = new if have == 0 else torch.cat([fused[:, :have], new], dim=1)
        fused = fused[:, :n]
        session.extra["drafter_fused"] = fused
        device = fused.device
        logits = drafter(session.target, torch.tensor([[history[-1]]], device=device),
                         torch.tensor([[n]], device=device), fused,
                         torch.arange(n, device=device)[None])[0, 0]  # (L-1, V)
        probs, ids = logits.float().softmax(-1).max(-1)
        session.extra["drafter_first"] = float(probs[0])
        keep = length
        if min_confidence > 0:
            low = (probs < min_confidence).nonzero()
            if len(low):
                keep = min(keep, int(low[0]))
        return ids[:keep].tolist()

    return propose


def confident_drafter_else_lookup(drafter_propose: Proposer, lookup,
                                  threshold: float = 0.5) -> Proposer:
    """The drafter's draft when its first guess is at least `threshold` probable, else the
    prompt-lookup draft if there is one (else the drafter's after all)."""

    def propose(session, history, length):
        draft = drafter_propose(session, history, length)
        if session.extra.get("drafter_first", 1.0) >= threshold or length <= 0:
            return draft
        return lookup.draft(history, length) or draft

    return propose


def lookup_then(lookup, fallback: Proposer) -> Proposer:
    """The prompt-lookup draft when it has one (a match of >= its min n-gram), else
    `fallback`'s."""

    def propose(session, history, length):
        draft = lookup.draft(history, length) if length > 0 else []
        return draft if draft else fallback(session, history, length)

    return propose


def tokens_per_call(results: Sequence[Decoded]) -> float:
    """Mean over cursors of tokens per target call (the bench's per-request mean)."""
    return sum(r.tau for r in results) / max(len(results), 1)


__all__ = ["Decoded", "GreedyReference", "Proposer", "TargetSession",
           "confident_drafter_else_lookup", "drafter_proposer", "greedy_reference",
           "lookup_then", "replay",
           "speculative_decode", "tokens_per_call"]
