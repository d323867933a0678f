"""postprocess.py: golden cases per filter — (document with █, raw model output) → completion.

Each row: (filter, language, document, generated, expected text or None, closers replaced).
`closers replaced` is how many document characters after the cursor the completion replaces
(Completion.end - hole.end).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dlm_lsp.languages import syntax_for
from dlm_lsp.modelcard import DEFAULT_CANVAS_BUCKETS as BUCKETS
from dlm_lsp.plan import plan_completion, plan_holes
from dlm_lsp.postprocess import Completion, document_eol, finish

CURSOR = "█"


def complete(language: str, document: str, generated: str) -> tuple[Completion | None, str]:
    offset = document.index(CURSOR)
    text = document.replace(CURSOR, "")
    syntax = syntax_for(language)
    tree = syntax.parser().parse(text.encode()) if syntax else None
    plan = plan_completion(text, offset, tree, syntax, buckets=BUCKETS,
                           count_tokens=lambda s: len(s) // 3, language_id=language)
    return finish(plan, 0, generated, text=text, syntax=syntax), text


BLOCK_20 = "\n" + "\n".join(f"    x{i} = {i}" for i in range(20))
def ITEMS(count: int, pattern: str) -> str:  # noqa: N802 - reads as a table constant
    """`count` lines of `pattern`, the first without its indentation (the cursor has it)."""
    return "\n".join(pattern.format(i) for i in range(count)).lstrip()


BLOCK_16 = "\n" + "\n".join(f"    x{i} = {i}" for i in range(16))

GOLDEN = [
    # (a) line endings and the leading newline mess
    ("newlines", "python", "def f(x):█\n", "\n\n\n    return x", "\n    return x", 0),
    ("newlines", "python", "def f(x):\n    █\n", "\n\n    return x", "return x", 0),
    ("newlines", "javascript", "function f() {\r\n  █\r\n}\r\n", "let a = 1;\r\n  return a;",
     "let a = 1;\r\n  return a;", 0),
    ("newlines", "go", "func f() {\n\t█\n}\n", "a := 1\r\tb := 2", "a := 1\n\tb := 2", 0),
    ("newlines", "python", "x = 1\r█", "\ny = 2", "y = 2", 0),
    # (b) single line
    ("single_line", "python", "x = █\n", "compute(1)\nprint(x)", "compute(1)", 0),
    ("single_line", "javascript", "foo(█);\n", "a, b);\nbar();", "a, b);", 2),
    ("single_line", "rust", "let n = █\n", "\n42;", None, 0),
    ("single_line", "plaintext", "hello wor█\n", "ld\nmore", "ld", 0),
    # (c) leaving the planned block
    ("block_exit", "python", "def f(x):█\n",
     "\n    y = x + 1\n    return y\ndef g():\n    pass", "\n    y = x + 1\n    return y", 0),
    ("block_exit", "go", "func f() {\n\tif x {█\n}\n", "\n\t\ty()\n\t}\n}", "\n\t\ty()\n\t}", 0),
    ("block_exit", "javascript", "foo(a,\n    █\n", "b,\n    c);\nbar();", "b,\n    c);", 0),
    ("block_exit", "typescript", "class C {\n  m() {\n    █\n  }\n}\n",
     "return 1;\n  }\n  n() {}", "return 1;", 0),
    ("block_exit", "python", "def f():\n    x = 1\n    █\n\nprint(f())\n",
     "return x\nprint(1)", "return x", 0),
    # (d) max lines
    ("max_lines", "python", "def f():█\n", BLOCK_20, BLOCK_16, 0),
    ("max_lines", "javascript", "const a = [\n  █\n", ITEMS(12, "  {},"), ITEMS(8, "  {},"), 0),
    ("max_lines", "plaintext", "steps:\n  █\n", ITEMS(30, "  - s{}"), ITEMS(16, "  - s{}"), 0),
    # (e) a tail that repeats the suffix
    ("suffix_repeat", "python", "def f(x):\n    █\n    return x\n", "y = x * 2\n    return x",
     "y = x * 2", 0),
    ("suffix_repeat", "javascript", "function f() {\n  █\n}\n", "return 1;\n}", "return 1;", 0),
    ("suffix_repeat", "python", "if a █ b:\n    pass\n", "and not b:", "and not", 0),
    ("suffix_repeat", "rust", "fn f() {\n    let a = 1;\n    █\n    a\n}\n",
     "let b = 2;\n    a\n}", "let b = 2;", 0),
    ("suffix_repeat", "go", "func f() {\n\tif x {\n\t\t█\n\t}\n}\n", "y()\n\t}", "y()", 0),
    # (f) closers: replace what the editor auto-inserted, keep brackets balanced
    ("closers", "javascript", "foo(█)\n", "a, b)", "a, b)", 1),
    ("closers", "javascript", "foo(█)\n", "bar()", "bar()", 0),
    ("closers", "python", 'print("█")\n', 'hi")', 'hi")', 2),
    ("closers", "python", 'print("█")\n', 'hi"', 'hi"', 1),
    ("closers", "javascript", "function f() {█}\n", "\n  return 1;\n}", "\n  return 1;\n}", 1),
    ("closers", "javascript", "if (a) {█}\n", "\n  b();", "\n  b();\n", 0),
    ("closers", "python", "foo(\n    a,\n    █\n)\n", "b)", "b", 0),
    ("closers", "rust", "let v = vec![1, █];\n", "2]", "2]", 1),
    ("closers", "go", "x := f(g(█))\n", "1))", "1))", 2),
    # (g) trailing lines that add syntax errors
    ("syntax", "python", "def f(x):\n    █\n", "return x\n    )))", "return x", 0),
    ("syntax", "javascript", "const a = 1;\n█\n", "let b = 2;\nlet = ;", "let b = 2;", 0),
    ("syntax", "go", "func f() {\n\t█\n}\n", "x := 1\n\tfunc(", "x := 1", 0),
    ("syntax", "rust", "fn main() {\n    █\n}\n", "let = ;", None, 0),
    # (h) trailing whitespace, empty results
    ("whitespace", "python", "x = █\n", "1   ", "1", 0),
    ("whitespace", "python", "def f():█\n", "\n    a = 1   \n    return a  \n\n\n",
     "\n    a = 1\n    return a", 0),
    ("whitespace", "javascript", "foo(█);\n", "   ", None, 0),
    ("whitespace", "plaintext", "a█b\n", "x ", "x ", 0),
]


@pytest.mark.parametrize(("kind", "language", "document", "generated", "expected", "replaced"),
                         GOLDEN, ids=[f"{g[0]}-{g[1]}-{i}" for i, g in enumerate(GOLDEN)])
def test_golden(kind, language, document, generated, expected, replaced):
    completion, text = complete(language, document, generated)
    if expected is None:
        assert completion is None
        return
    assert completion is not None
    offset = document.index(CURSOR)
    assert (completion.text, completion.start, completion.end - offset) == (
        expected, offset, replaced)


def test_at_least_three_cases_per_filter():
    kinds: dict[str, int] = {}
    for kind, *_ in GOLDEN:
        kinds[kind] = kinds.get(kind, 0) + 1
    assert len(kinds) == 8 and min(kinds.values()) >= 3


@pytest.mark.parametrize(("document", "generated", "after"), [
    ('print("█")\n', 'hi")', 'print("hi")\n'),
    ("function f() {█}\n", "\n  return 1;\n}", "function f() {\n  return 1;\n}\n"),
    ("if (a) {█}\n", "\n  b();", "if (a) {\n  b();\n}\n"),
])
def test_applied_completion_reads_right(document, generated, after):
    completion, text = complete("javascript", document, generated)
    assert text[: completion.start] + completion.text + text[completion.end :] == after


def test_fill_hole_rewrite_keeps_its_range():
    text = "def f(x):\n    return x+1\n"
    start = text.index("x+1")
    plan = plan_holes(text, [(start, start + 3)], None, syntax_for("python"),
                      buckets=BUCKETS, count_tokens=lambda s: len(s) // 3)
    completion = finish(plan, 0, "x + 1", text=text, syntax=syntax_for("python"))
    assert completion == Completion("x + 1", start, start + 3)


def test_second_hole_of_a_fill_plan():
    text = "a = \nb = \n"
    plan = plan_holes(text, [(4, 4), (9, 9)], None, None, buckets=BUCKETS,
                      count_tokens=lambda s: len(s) // 3)
    assert finish(plan, 1, "2\nc = 3", text=text, syntax=None) == Completion("2", 9, 9)


def test_document_eol():
    assert document_eol("a\r\nb") == "\r\n"
    assert document_eol("a\rb") == "\r"
    assert document_eol("ab") == "\n"


_CODE = st.text(alphabet="ab =:{}()[]\"'\n\t ;😀", max_size=60)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_CODE, _CODE, st.data(), st.sampled_from(["python", "go", "typescript", "plaintext"]))
def test_finish_never_crashes_and_stays_in_the_document(text, generated, data, language):
    offset = data.draw(st.integers(0, len(text)))
    syntax = syntax_for(language)
    tree = syntax.parser().parse(text.encode()) if syntax else None
    plan = plan_completion(text, offset, tree, syntax, buckets=BUCKETS,
                           count_tokens=lambda s: len(s) // 3, language_id=language)
    completion = finish(plan, 0, generated, text=text, syntax=syntax)
    if completion is not None:
        assert completion.start == offset <= completion.end <= len(text)
        assert completion.text.strip()
        assert "\r" not in completion.text or "\r" in text
