"""A typist's editor at full speed: an edit, an inline-completion request, sometimes a cancel of
the one before, every few milliseconds. Shared by test_storm.py and benchmarks/soak.py.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

from .edits import position_of
from .wire import WireServer

TYPED = "    total = total + values[index] * 2  # 平均 😀\n    if total > limit:\n        return total\n"
START = "def accumulate(values, limit):\n    total = 0\n    for index in range(len(values)):\n"


@dataclass
class StormResult:
    requests: int = 0
    cancels_sent: int = 0
    answered: int = 0
    non_empty: int = 0
    cancelled: int = 0  # -32800 RequestCancelled
    errors: list[dict] = field(default_factory=list)  # any other error
    stale: list[Any] = field(default_factory=list)  # non-empty answers for an old version
    latencies_ms: list[float] = field(default_factory=list)  # answered requests, send → answer
    seconds: float = 0.0


def storm(server: WireServer, uri: str, count: int, *, seed: int = 0, gap_ms: float = 8.0,
          cancel_share: float = 0.3, timeout: float = 120.0) -> StormResult:
    """`count` edit+request pairs on `uri` (opened here), then wait for every answer."""
    rnd = random.Random(seed)
    text = START
    version = 1
    server.open(uri, text, "python", version)
    sent: list[tuple[Any, int, float]] = []  # (id, version, sent at)
    result = StormResult()
    started = time.perf_counter()
    for i in range(count):
        if rnd.random() < 0.08 and len(text) > len(START):  # backspace
            (sl, sc), (el, ec) = position_of(text, len(text) - 1), position_of(text, len(text))
            change, text = {"range": {"start": {"line": sl, "character": sc},
                                      "end": {"line": el, "character": ec}}, "text": ""}, text[:-1]
        else:
            char = TYPED[i % len(TYPED)]
            line, character = position_of(text, len(text))
            change = {"range": {"start": {"line": line, "character": character},
                                "end": {"line": line, "character": character}}, "text": char}
            text += char
        version += 1
        server.change(uri, version, [change])
        line, character = position_of(text, len(text))
        if sent and rnd.random() < cancel_share:
            server.cancel(sent[-1][0])
            result.cancels_sent += 1
        msg_id = server.inline(uri, line, character)
        sent.append((msg_id, version, time.perf_counter()))
        if len(text) > 3000:  # start a new function now and then, as people do
            text = START
            version += 1
            server.change(uri, version, [{"text": text}])
        time.sleep(rnd.uniform(0, 2 * gap_ms) / 1000)
    server.wait_all([s[0] for s in sent], timeout)
    result.seconds = time.perf_counter() - started
    result.requests = len(sent)
    version_of = {msg_id: v for msg_id, v, _ in sent}
    sent_at = {msg_id: t for msg_id, _, t in sent}
    newest_answered = 0
    for msg_id in server.order:  # answers in the order the server wrote them
        if msg_id not in version_of:
            continue
        answer = server.responses[msg_id][0]
        if "error" in answer:
            if answer["error"]["code"] == -32800:
                result.cancelled += 1
            else:
                result.errors.append(answer)
        elif answer["result"] and answer["result"].get("items"):
            result.non_empty += 1
            # a newer version was already answered, so the server had seen that edit: stale
            if version_of[msg_id] < newest_answered:
                result.stale.append(msg_id)
        newest_answered = max(newest_answered, version_of[msg_id])
        result.answered += 1
    for msg_id, _, t in sent:
        result.latencies_ms.append((server.answered_at.get(msg_id, t) - t) * 1000)
    return result
