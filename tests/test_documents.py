"""documents.py: position encodings, incremental edits and incremental parsing."""

from __future__ import annotations

import logging

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dlm_lsp.documents import DocumentStore, LineIndex, PositionError, UnknownDocument
from dlm_lsp.languages import syntax_for

URI = "file:///t.py"


def store_with(text: str, language: str = "python", encoding: str = "utf-16") -> DocumentStore:
    store = DocumentStore(encoding)
    store.open(URI, language, 1, text)
    return store


# ---------------------------------------------------------------- positions


@pytest.mark.parametrize(
    ("encoding", "character", "offset"),
    [
        ("utf-16", 0, 0),
        ("utf-16", 1, 1),  # after "a"
        ("utf-16", 2, 1),  # inside the surrogate pair of 😀: rounds to its start
        ("utf-16", 3, 2),  # after 😀
        ("utf-16", 4, 3),  # after 中
        ("utf-16", 5, 4),
        ("utf-16", 99, 4),  # past the line end: clamps
        ("utf-8", 1, 1),
        ("utf-8", 3, 1),  # inside 😀's 4 bytes
        ("utf-8", 5, 2),
        ("utf-8", 8, 3),  # 中 is 3 bytes
        ("utf-8", 9, 4),
        ("utf-32", 2, 2),
        ("utf-32", 3, 3),
        ("utf-32", 9, 4),
    ],
)
def test_offset_at_encodings(encoding, character, offset):
    snap = store_with("a😀中b\nnext", encoding=encoding).get(URI)
    assert snap.offset_at(0, character) == offset


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16", "utf-32"])
def test_position_round_trip(encoding):
    text = "x = '😀'\r\n# 中文 ok\rlast 🎉 line\n"
    snap = store_with(text, encoding=encoding).get(URI)
    for offset in range(len(text) + 1):
        if text[offset - 1 : offset + 1] == "\r\n":
            continue  # between \r and \n is not a position
        assert snap.offset_at(*snap.position_at(offset)) == offset


def test_position_at_counts_utf16_units():
    snap = store_with("😀x\n中y").get(URI)
    assert snap.position_at(1) == (0, 2)
    assert snap.position_at(2) == (0, 3)
    assert snap.position_at(4) == (1, 1)
    assert snap.position_at(5) == (1, 2)


@pytest.mark.parametrize("text", ["a\nb\nc", "a\r\nb\r\nc", "a\rb\rc", "a\r\nb\nc"])
def test_all_line_endings_split_lines(text):
    snap = store_with(text).get(URI)
    assert [snap.text[snap.offset_at(i, 0)] for i in range(3)] == ["a", "b", "c"]
    assert snap.offset_at(0, 5) == 1  # clamps before the line break, even "\r\n"


def test_line_past_the_end_clamps_to_document_end():
    snap = store_with("ab\ncd").get(URI)
    assert snap.offset_at(7, 0) == 5
    assert snap.offset_at(1, 99) == 5


def test_negative_position_is_an_error():
    snap = store_with("ab").get(URI)
    with pytest.raises(PositionError):
        snap.offset_at(-1, 0)
    with pytest.raises(PositionError):
        snap.offset_at(0, -2)


def test_unknown_document():
    store = DocumentStore()
    with pytest.raises(UnknownDocument):
        store.get("file:///nope")
    with pytest.raises(UnknownDocument):
        store.change("file:///nope", 2, [(None, "x")])


def test_bad_encoding_is_refused():
    with pytest.raises(ValueError):
        DocumentStore("utf-7")


# ---------------------------------------------------------------- edits


def test_edit_after_emoji_uses_utf16_columns():
    store = store_with("s = '😀'\n")
    snap = store.change(URI, 2, [(((0, 7), (0, 7)), "!")])  # after the emoji (2 units)
    assert snap.text == "s = '😀!'\n"


def test_edit_at_line_end_and_multi_line_edit():
    store = store_with("def f():\n    pass\n\nx = 1\n")
    snap = store.change(URI, 2, [(((0, 8), (0, 8)), "  # hi")])
    assert snap.text.startswith("def f():  # hi\n")
    snap = store.change(URI, 3, [(((1, 4), (3, 1)), "return 2\ny")])
    assert snap.text == "def f():  # hi\n    return 2\ny = 1\n"
    assert str(snap.tree.root_node) == str(syntax_for("python").parser().parse(
        snap.text.encode()).root_node)


def test_crlf_edits_that_split_and_join_breaks():
    store = store_with("a\r\nb\r\n")
    snap = store.change(URI, 2, [(((0, 1), (1, 0)), "\r")])  # "\r\n" → "\r"
    assert snap.text == "a\rb\r\n"
    assert snap.offset_at(1, 0) == 2
    snap = store.change(URI, 3, [(((0, 1), (1, 0)), "\r\nX\n")])
    assert snap.text == "a\r\nX\nb\r\n"
    assert snap.offset_at(2, 0) == 5


def test_several_changes_in_one_notification_apply_in_order():
    store = store_with("abc\n")
    snap = store.change(URI, 2, [(((0, 0), (0, 1)), "X"), (((0, 3), (0, 3)), "Y"), (None, "new")])
    assert snap.text == "new"
    snap = store.change(URI, 3, [(((0, 3), (0, 3)), "\nz"), (((1, 0), (1, 1)), "w")])
    assert snap.text == "new\nw"


def test_snapshot_tree_is_never_edited():
    store = store_with("def f():\n    return 1\n")
    before = store.get(URI)
    shape = str(before.tree.root_node)
    store.change(URI, 2, [(((1, 11), (1, 12)), "(1 +")])
    assert str(before.tree.root_node) == shape
    assert before.text == "def f():\n    return 1\n"
    assert before.tree.root_node.end_byte == len(before.text)


def test_unknown_language_has_no_tree():
    store = DocumentStore()
    snap = store.open("file:///a.txt", "plaintext", 1, "hello")
    assert snap.tree is None and snap.syntax is None
    assert store.change("file:///a.txt", 2, [(((0, 5), (0, 5)), "!")]).text == "hello!"


def test_close_forgets_the_document():
    store = store_with("x")
    store.open("file:///b.py", "python", 1, "y")
    assert len(store) == 2
    store.close(URI)
    with pytest.raises(UnknownDocument):
        store.get(URI)
    store.close(URI)  # closing twice is fine
    assert len(store) == 1


def test_huge_buffer_has_no_tree_and_logs_once(caplog):
    text = "x = 1\n" * 400_000  # 2.4 MB
    store = DocumentStore(max_parse_bytes=2_000_000)
    with caplog.at_level(logging.WARNING, logger="dlm_lsp.documents"):
        snap = store.open(URI, "python", 1, text)
        for version in range(2, 5):
            snap = store.change(URI, version, [(((5, 0), (5, 0)), "y")])
    assert snap.tree is None
    assert snap.offset_at(399_999, 3) == 6 * 399_999 + 3 + 3
    assert sum("no syntax tree" in r.message for r in caplog.records) == 1


def test_ten_megabytes_and_nul_characters_do_not_crash():
    store = DocumentStore()
    text = ("a\0b = '中'\n" * 1_000_000)[:10_000_000]
    snap = store.open(URI, "python", 1, text)
    assert snap.tree is None
    snap = store.change(URI, 2, [(((500_000, 2), (500_000, 3)), "\0\0")])
    assert snap.text[snap.offset_at(500_000, 0) :].startswith("a\0\0\0 = ")
    small = store.open("file:///n.py", "python", 1, "x = '\0'\n")
    assert small.tree is not None


# ---------------------------------------------------------------- properties

ALPHABET = "ab (){}:\n\r\t'😀中é"
_texts = st.text(alphabet=ALPHABET, max_size=40)


@st.composite
def _edit_scripts(draw):
    text = draw(_texts)
    edits = []
    for _ in range(draw(st.integers(1, 8))):
        edits.append((draw(st.integers(0, 10)), draw(st.integers(0, 12)),
                      draw(st.integers(0, 10)), draw(st.integers(0, 12)), draw(_texts)))
    encoding = draw(st.sampled_from(["utf-16", "utf-8", "utf-32"]))
    return text, edits, encoding


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_edit_scripts())
def test_incremental_edits_match_reference(script):
    """Random edits applied incrementally give the reference text, line index and tree."""
    text, edits, encoding = script
    store = DocumentStore(encoding)
    store.open(URI, "python", 1, text)
    reference = text
    for version, (l0, c0, l1, c1, new) in enumerate(edits, start=2):
        snap = store.get(URI)
        a, b = snap.offset_at(l0, c0), snap.offset_at(l1, c1)
        a, b = min(a, b), max(a, b)
        reference = reference[:a] + new + reference[b:]
        snap = store.change(URI, version, [(((l0, c0), (l1, c1)), new)])
        assert snap.text == reference
        assert list(snap.lines.starts) == list(LineIndex.build(reference).starts)
    fresh = syntax_for("python").parser().parse(reference.encode("utf-8", "surrogatepass"))
    assert str(snap.tree.root_node) == str(fresh.root_node)
    assert snap.tree.root_node.end_point == fresh.root_node.end_point


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet="{}();x=1 \n\"'", max_size=60), st.data())
def test_incremental_parse_matches_fresh_parse_for_rust(text, data):
    store = DocumentStore()
    store.open("file:///a.rs", "rust", 1, text)
    for version in range(2, 5):
        snap = store.get("file:///a.rs")
        lines = len(snap.lines)
        line = data.draw(st.integers(0, lines))
        char = data.draw(st.integers(0, 10))
        new = data.draw(st.text(alphabet="{}();x=1 \n\"'", max_size=6))
        snap = store.change("file:///a.rs", version, [(((line, char), (line, char + 1)), new)])
    fresh = syntax_for("rust").parser().parse(snap.text.encode())
    assert str(snap.tree.root_node) == str(fresh.root_node)
