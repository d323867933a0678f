"""Cancel storms and load: 1,000 inline-completion requests at typing speed, most superseded or
cancelled. Every one is answered once, none with a completion for a version the server had
already moved past, and memory, threads and asyncio tasks come back to where they were.
"""

from __future__ import annotations

import time

import pytest

from .storm import storm
from .wire import WireServer, probe_argv

MB = 1024 * 1024


def _probe(server: WireServer, settled=lambda figures: True) -> dict:
    """The server's figures once `settled(figures)` holds: finished work winds down on the
    server's loop and threads after its answer was sent, so ask again until then (at most
    30 s; a leak never settles)."""
    deadline = time.monotonic() + 30
    while True:
        answer = server.call("reliability/probe", {})
        assert "result" in answer, answer
        figures = dict(answer["result"])
        figures["os_threads"] = server.threads()
        # threads other than the executor's workers, which grow on demand up to a bound
        figures["other_threads"] = figures["threads"] - figures["executor_threads"]
        figures["other_os_threads"] = figures["os_threads"] - figures["executor_threads"]
        if settled(figures) or time.monotonic() > deadline:
            return figures
        time.sleep(0.1)


# Seen once on a loaded box: one more thread outside the default executor after a storm
# than before it, with nothing growing since (another on-demand pool). A leak grows with
# the storm's thousand requests; a thread or two does not.
SPARE_THREADS = 2


def _no_leak(before: dict):
    """What `after` must show: no more tasks, threads or in-flight futures than `before`."""
    def settled(after: dict) -> bool:
        return (after["tasks"] <= before["tasks"]
                and after["other_threads"] <= before["other_threads"] + SPARE_THREADS
                and after["other_os_threads"] <= before["other_os_threads"] + SPARE_THREADS
                and after["pending"] - before["pending"] < 10)
    return settled


@pytest.mark.parametrize("count", [1_000, pytest.param(5_000, marks=pytest.mark.slow, id="5000")])
def test_cancel_storm(count, slow_synthetic_model, tmp_path):
    with WireServer(probe_argv("--model", str(slow_synthetic_model), log_level="warning"),
                    stderr_path=tmp_path / "stderr.log") as server:
        server.initialize()
        # warm up: the executor's threads, ONNX Runtime's arenas, the tokenizer's caches
        storm(server, "file:///warm.py", 150, seed=1)
        server.notify("textDocument/didClose", {"textDocument": {"uri": "file:///warm.py"}})
        before = _probe(server)
        result = storm(server, "file:///storm.py", count, seed=2)
        server.notify("textDocument/didClose", {"textDocument": {"uri": "file:///storm.py"}})
        after = _probe(server, _no_leak(before))
        assert server.alive(), server.stderr_tail()
        assert not server.duplicates()
        latencies = sorted(result.latencies_ms)
        p50, p99 = latencies[len(latencies) // 2], latencies[int(len(latencies) * 0.99)]
        print(f"\nstorm: {result.requests} requests in {result.seconds:.1f}s, "
              f"{result.cancels_sent} cancels sent, {result.non_empty} completions, "
              f"{result.cancelled} cancelled, {len(result.errors)} errors, "
              f"{len(result.stale)} stale; latency p50 {p50:.0f} ms p99 {p99:.0f} ms\n"
              f"before {before}\nafter  {after}\n"
              f"RSS growth {(after['rss'] - before['rss']) / MB:+.2f} MB")
    assert result.answered == result.requests == count
    assert not result.errors, result.errors[:3]
    assert not result.stale, f"answered for a stale version: {result.stale[:10]}"
    assert result.non_empty > 0, "the storm should let some completions through"
    assert after["rss"] - before["rss"] < 10 * MB
    assert after["tasks"] <= before["tasks"], "asyncio tasks leaked"
    assert after["documents"] == before["documents"] == 0
    # the default executor may start idle workers up to its bound (how many depends on how
    # many requests overlapped); any other thread would be a leak
    assert after["executor_threads"] <= after["executor_max"], "executor over its bound"
    assert after["other_threads"] <= before["other_threads"] + SPARE_THREADS, "threads leaked"
    assert after["other_os_threads"] <= before["other_os_threads"] + SPARE_THREADS, \
        "threads leaked"
    # BUG (pygls 2.1.1): a notification handled by a generator builtin (didOpen/didChange/
    # didClose) leaves its Future in protocol._request_futures forever: ~1-2 KB per keystroke
    assert after["pending"] - before["pending"] < 10, (
        f"{after['pending'] - before['pending']} handler futures leaked in "
        f"protocol._request_futures over {count} keystrokes")
