"""Protocol fuzzing over stdio: whatever an editor (or anything else) writes, the server stays up,
answers every request exactly once, and the next normal request works.

The session strategies and invariants are in fuzz.py; benchmarks/fuzz_long.py runs the same
sessions for longer.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .fuzz import Session, actions, answers_bad_params, check_session
from .wire import WireServer, frame, server_argv

FUZZ_EXAMPLES = 60
FIGURES: dict[str, int] = {"sessions": 0, "messages": 0, "requests": 0}


@pytest.fixture(scope="module")
def wire(synthetic_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "stderr.log"
    with WireServer(server_argv("--model", str(synthetic_model), log_level="warning"),
                    stderr_path=path) as server:
        server.initialize(capabilities={"general": {"positionEncodings": ["utf-16"]}})
        server.bad_params = answers_bad_params(server)  # type: ignore[attr-defined]
        yield server
        assert server.alive(), server.stderr_tail()
        assert not server.duplicates()
    print(f"\nfuzz figures: {FIGURES}, bytes sent {server.bytes_sent}")


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(data=st.data())
def test_fuzzed_sessions_keep_the_invariants(wire, data):
    session = Session(wire, tag=f"s{FIGURES['sessions']}")
    for action in data.draw(actions(wire.bad_params)):
        session.run(action)
    check_session(session)
    FIGURES["sessions"] += 1
    FIGURES["messages"] += session.messages
    FIGURES["requests"] += len(session.request_ids)


def test_huge_binary_and_undecodable_buffers(wire):
    """10 MB and binary buffers, invalid UTF-8 on the wire: answered, and the server lives."""
    session = Session(wire, tag="huge")
    huge = ("def f(x):\n    return x * 2  # 😀\n" * 400_000)[: 10 * 1024 * 1024]
    rnd = random.Random(3)
    binary = bytes(rnd.randrange(256) for _ in range(1 << 20)).decode("latin-1")
    for uri, text in (("file:///huge/h.py", huge), ("file:///huge/b.py", binary),
                      ("file:///huge/z.py", "\x00" * 100_000)):
        wire.open(uri, text)
        wire.change(uri, 2, [
            {"range": {"start": {"line": 5, "character": 0}, "end": {"line": 5, "character": 3}},
             "text": "xyz😀"},
            {"range": {"start": {"line": 10**6, "character": 0},
                       "end": {"line": 10**6, "character": 0}}, "text": "\n# end"}])
        for line, character in ((5, 2), (0, 0), (10**6, 10**6), (3, 10**5)):
            session.request_ids.append(wire.inline(uri, line, character))
        session.request_ids.append(wire.request("textDocument/completion", {
            "textDocument": {"uri": uri}, "position": {"line": 3, "character": 4}}))
        session.request_ids.append(wire.request("dlm/fill", {
            "textDocument": {"uri": uri}, "holes": [
                {"start": {"line": 1, "character": 4}, "end": {"line": 1, "character": 4}}]}))
    # a didOpen whose body is not UTF-8: dropped, and the uri stays unknown
    wire.send_bytes(frame(
        b'{"jsonrpc": "2.0", "method": "textDocument/didOpen", "params": {"textDocument": '
        b'{"uri": "file:///huge/bad-utf8.py", "languageId": "python", "version": 1, '
        b'"text": "def f():\\n    \xff\xfe\xc0\x80"}}}'))
    session.request_ids.append(wire.inline("file:///huge/bad-utf8.py", 1, 4))
    check_session(session, timeout=120)
    opened = wire.call("dlm/status", {})["result"]["openDocuments"]
    assert opened >= 3  # the three huge buffers, and whatever earlier sessions left open
    for uri in ("file:///huge/h.py", "file:///huge/b.py", "file:///huge/z.py"):
        wire.notify("textDocument/didClose", {"textDocument": {"uri": uri}})
    status = wire.call("dlm/status", {})
    assert status["result"]["openDocuments"] == opened - 3


def test_a_request_lsprotocol_cannot_structure_is_answered_invalid_params(wire):
    """BUG (pygls drops it): a negative position gets no response at all. See the report."""
    assert wire.bad_params, (
        "textDocument/inlineCompletion with line -1 got no response in 5 s (expected -32602)")


def test_a_request_without_params_is_answered(wire):
    """BUG (pygls drops it): JSON-RPC params are optional; `dlm/status` without them."""
    answer = wire.wait(wire.request("dlm/status", omit_params=True), timeout=5)
    assert "result" in answer, answer


def test_initialize_succeeds_for_a_client_without_position_encodings(synthetic_model, tmp_path):
    """BUG: str(PositionEncodingKind.Utf16) is 'PositionEncodingKind.Utf16' → initialize errors,
    and initializationOptions are then never applied."""
    with WireServer(server_argv("--model", str(synthetic_model), log_level="warning"),
                    stderr_path=tmp_path / "stderr.log") as server:
        answer = server.initialize(options={"dlm": {"maxSteps": 3}})
        assert "result" in answer, answer.get("error", {}).get("message")
        status = server.call("dlm/status", {})["result"]
        assert status["settings"]["maxSteps"] == 3
