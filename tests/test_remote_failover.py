"""Failover between a remote engine and the local one, with fake engines and a fake clock."""

import pytest

from dlm_lsp.engine import CompletionResult, FillResult
from dlm_lsp.remote.client import RemoteError
from dlm_lsp.remote.failover import FailoverEngine
from dlm_lsp.sampler import Cancelled
from dlm_lsp.settings import Settings


class FakeEngine:
    def __init__(self, name, fail=False):
        self.name, self.fail, self.calls = name, fail, 0
        self.card, self.provider, self.settings, self.forgotten = name, name, None, []

    def complete(self, snapshot, offset, settings=None, *, cancelled):
        self.calls += 1
        if self.fail:
            raise RemoteError("connection refused")
        if cancelled():
            raise Cancelled
        return CompletionResult(None, backend=self.name)

    def fill(self, snapshot, ranges, settings=None, *, cancelled):
        self.calls += 1
        if self.fail:
            raise RemoteError("timed out")
        return FillResult([], backend=self.name)

    def forget(self, key):
        self.forgotten.append(key)


class Clock:
    now = 0.0

    def __call__(self):
        return self.now


def make(fallback="local", remote_fails=False, unreachable=False):
    remote, local = FakeEngine("remote", remote_fails), FakeEngine("local")
    warnings, clock = [], Clock()
    made = {"remote": 0, "local": 0}

    def remote_factory(settings):
        made["remote"] += 1
        if unreachable and made["remote"] == 1:
            raise RemoteError("no route to host")
        return remote

    def local_factory(settings):
        made["local"] += 1
        assert settings.remote is None
        return local

    engine = FailoverEngine(Settings(remote="grpc://127.0.0.1:1", remote_fallback=fallback),
                            warn=warnings.append, remote_factory=remote_factory,
                            local_factory=local_factory, retry_s=30, clock=clock)
    return engine, remote, local, warnings, clock, made


def test_the_remote_answers_while_it_can_and_the_local_model_is_never_loaded():
    engine, remote, local, warnings, _, made = make()
    assert engine.complete(None, 0).backend == "remote"
    assert engine.fill(None, []).backend == "remote"
    assert made == {"remote": 1, "local": 0} and warnings == []
    assert engine.provider == "remote"


def test_a_failing_remote_warns_once_falls_back_and_is_retried_later():
    engine, remote, local, warnings, clock, _ = make(remote_fails=True)
    assert engine.complete(None, 0).backend == "local"
    assert engine.fill(None, []).backend == "local"  # within retry_s: the remote is not asked
    assert remote.calls == 1 and len(warnings) == 1 and "127.0.0.1:1" in warnings[0]
    assert engine.remote_error == "connection refused"
    clock.now = 31
    assert engine.complete(None, 0).backend == "local"
    assert remote.calls == 2 and len(warnings) == 1  # asked again; same outage, no new warning
    remote.fail = False
    clock.now = 62
    assert engine.complete(None, 0).backend == "remote"
    assert engine.remote_error is None
    remote.fail = True
    clock.now = 63
    engine.complete(None, 0)
    assert len(warnings) == 2  # a new outage is a new warning


def test_an_unreachable_server_at_start_is_tried_again_later():
    engine, remote, local, warnings, clock, made = make(unreachable=True)
    assert engine.complete(None, 0).backend == "local"
    assert made["remote"] == 1 and "no route" in warnings[0]
    clock.now = 31
    assert engine.complete(None, 0).backend == "remote"


def test_empty_fallback_answers_nothing_without_loading_a_model():
    engine, remote, local, warnings, _, made = make(fallback="empty", remote_fails=True)
    assert engine.complete(None, 0).backend == "none"
    assert engine.fill(None, []).edits == []
    assert made["local"] == 0 and len(warnings) == 1 and "no completions" in warnings[0]


def test_newest_request_wins_and_cancellation_is_not_a_failure():
    engine, remote, local, warnings, _, _ = make()
    stale = engine.supersede("a")
    assert not stale()
    engine.supersede("a")
    assert stale()
    with pytest.raises(Cancelled):
        engine.complete(None, 0, cancelled=stale)
    assert warnings == []
    engine.forget("a")
    assert remote.forgotten == ["a"]
