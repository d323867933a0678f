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
from dlm_lsp.postprocess import Completion, document_eol, finish, scope_closed

CURSOR = "█"


def planned(language: str, document: str):
    """(plan, text, syntax) at the document's cursor mark."""
    offset = document.index(CURSOR)
    text = document.replace(CURSOR, "")
    syntax = syntax_for(language)
    tree = syntax.parser().parse(text.encode()) if syntax else None
    plan = plan_completion(text, offset, tree, syntax, buckets=BUCKETS,
                           count_tokens=lambda s: len(s) // 3, language_id=language)
    return plan, text, syntax


def complete(language: str, document: str, generated: str) -> tuple[Completion | None, str]:
    plan, text, syntax = planned(language, document)
    return finish(plan, 0, generated, text=text, syntax=syntax), text


BLOCK_20 = "\n" + "\n".join(f"    x{i} = {i}" for i in range(20))
def ITEMS(count: int, pattern: str) -> str:  # noqa: N802 - reads as a table constant
    """`count` lines of `pattern`, the first without its indentation (the cursor has it)."""
    return "\n".join(pattern.format(i) for i in range(count)).lstrip()


ELIF_CHAIN = "\n".join(f"    elif x == '{c}':\n        return {i}"
                       for i, c in enumerate("bcdefg")).lstrip()
BLOCK_16 = "\n" + "\n".join(f"    x{i} = {i}" for i in range(16))

GOLDEN = [
    # (a) line endings and the leading newline mess
    ("newlines", "python", "def f(x):█\n", "\n\n\n    return x", "\n    return x", 0),
    ("newlines", "python", "def f(x):\n    █\n", "\n\n    return x", "return x", 0),
    ("newlines", "javascript", "function f() {\r\n  █\r\n}\r\n", "let a = 1;\r\n  return a;",
     "let a = 1;\r\n  return a;", 0),
    ("newlines", "go", "func f() {\n\t█\n}\n", "a := 1\r\tb := 2", "a := 1\n\tb := 2", 0),
    ("newlines", "python", "x = 1\r█", "\ny = 2", "y = 2", 0),
    # (b) single line; one statement (a blank line before code at its level): the first line
    # and the block or bracket it opens
    ("single_line", "python", "def f(x):\n    y = g(x)\n    █\n    return y\n",
     "z = h(y)\n    y = z\n", "z = h(y)", 0),
    ("single_line", "python", "def f(xs):\n    total = 0\n█\n    return total\n",
     "    for x in xs:\n        total += x\n    print(total)\n",
     "    for x in xs:\n        total += x", 0),
    ("single_line", "python", "def f(x):\n    y = 1\n    █\n    return y\n",
     "y = g(\n        x,\n    )\n    y += 1", "y = g(\n        x,\n    )", 0),
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
    # no line end parses: the first line is cut at its last token boundary that does
    ("syntax", "python", "def f(x):\n    █\n", "y = g(\n        x,", "y = g", 0),
    ("syntax", "python", "raise Error('fifo req█ires path')\n", "uired')", "uired", 0),
    ("syntax", "python", "x = [a, b█]\ny = 1\n", ", c, d = 2", ", c, d", 0),
    # (h) trailing whitespace, empty results
    ("whitespace", "python", "x = █\n", "1   ", "1", 0),
    ("whitespace", "python", "def f():█\n", "\n    a = 1   \n    return a  \n\n\n",
     "\n    a = 1\n    return a", 0),
    ("whitespace", "javascript", "foo(█);\n", "   ", None, 0),
    ("whitespace", "plaintext", "a█b\n", "x ", "x ", 0),
    # (i) a blank line's first line dedents to an enclosing block (and the block goes on
    # from that level); a level no block opens, or one inside a brace language, does not
    ("dedent", "python",
     "for c in s:\n    if c == '(':\n        d += 1\n█\n        d -= 1\nprint(d)\n",
     "    elif c == ')':\n        d -= 2\nprint(0)", "    elif c == ')':\n        d -= 2", 0),
    ("dedent", "python", "def f(xs):\n    for x in xs:\n        if x:\n            return x\n█",
     "    return None\n\n\ndef g():\n    pass", "    return None", 0),
    ("dedent", "python", "def f(xs):\n    for x in xs:\n        y = x\n█", "  z = 1", None, 0),
    ("dedent", "python", "def f(x):\n    if x:\n█", "    return 1", None, 0),
    ("dedent", "javascript", "function f() {\n  if (a) {\n    b();\n█\n}\n", "  c();", None, 0),
    # (j) where the completion reaches the suffix (whitespace aside), it ends
    ("suffix_overlap", "python", "D = {\n    'one': 1,\n█\n    'three': 3,\n    'four': 4,\n}\n",
     "    'two': 2,\n    'three': 3,\n    'four': 4,\n    'five': 5,", "    'two': 2,", 0),
    ("suffix_overlap", "python", "def f(x):\n    y = x█\n    return y * 2\n",
     " + 1\n        return y * 2\n\n\nprint(f(1))", " + 1", 0),
    ("suffix_overlap", "plaintext", "one two thr█ee four five six seven\n",
     "ee four five six seven eight", None, 0),
    ("suffix_overlap", "python", "x = compute(alpha, be█ta, gamma, delta)\n",
     "ta_0, beta, gamma, delta)", "ta_0, be", 0),  # be + ta_0, be + ta, gamma...
    ("suffix_overlap", "python",
     "def f(s):\n    for c in s:\n        if c:\n            depth = 1\n█\n"
     "            depth -= 1\n    return depth\n",
     "        elif c == ')':\n            depth  -=  1\n        else:\n            depth = 0",
     "        elif c == ')':", 0),
    # in the middle of a line: where the completion starts writing the rest of the line
    ("suffix_overlap", "python", "total = compute(a█, c)\n", ", b, c)", ", b", 0),
    ("suffix_overlap", "python", "value = first█second + 1\n", "_and_sec", "_and_", 0),
    ("suffix_overlap", "python", "n = len█(xs)\n", "(xs) + 1", None, 0),
    # a short line (`pass`, `}`) is the suffix's only when the next one is too
    ("suffix_overlap", "python", "def f():\n    █\n    pass\n    return 1\n",
     "x = 1\n    pass\n    y = 2", "x = 1\n    pass\n    y = 2", 0),
    ("suffix_overlap", "javascript", "function f() {\n  if (a) {\n    █\n  }\n}\n",
     "b();\n  }\n}", "b();", 0),
    # (k) a line pattern the model loops on stops after REPEAT_CAP copies; one the file
    # already has (a table, an elif chain) does not
    ("repetition", "python", "def f(x):\n    █\n",
     "\n".join(f"    if x == {i}:\n        return {i}" for i in range(8)).lstrip(),
     "\n".join(f"    if x == {i}:\n        return {i}" for i in range(4)).lstrip(), 0),
    ("repetition", "python", "def f(x):\n    if x == 'a':\n        return 1\n    █\n",
     ELIF_CHAIN, ELIF_CHAIN, 0),
    ("repetition", "python", "NAMES = {\n    'zero': 0,\n    'one': 1,\n    █\n",
     "\n".join(f"    'n{i}': {i}," for i in range(2, 10)).lstrip(),
     "\n".join(f"    'n{i}': {i}," for i in range(2, 10)).lstrip(), 0),
    ("repetition", "python", "KEYWORDS = [\n    █\n",
     "\n".join("    'def', 'def', 'def'," for i in range(8)).lstrip(),
     "\n".join("    'def', 'def', 'def'," for i in range(4)).lstrip(), 0),
    ("repetition", "python", "def f():\n    █\n",
     "\n".join(f"    x{i} = {i}" for i in range(8)).lstrip(),
     "\n".join(f"    x{i} = {i}" for i in range(8)).lstrip(), 0),
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
    assert len(kinds) == 11 and min(kinds.values()) >= 3


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


def closed_at(language: str, document: str, generated: str) -> bool:
    plan, text, syntax = planned(language, document)
    return scope_closed(plan, 0, generated, text=text, syntax=syntax)


DICT = "D = {\n    'one': 1,\n█\n    'three': 3,\n    'four': 4,\n}\n"


@pytest.mark.parametrize(("generated", "closed"), [
    ("    'two': 2,\n", False),  # the suffix is not reached yet
    ("    'two': 2,\n    'three': 3", False),  # the line may still go on
    ("    'two': 2,\n    'three': 3,\n", True),  # a finished line is the suffix's
])
def test_decoding_stops_where_the_suffix_begins(generated, closed):
    assert closed_at("python", DICT, generated) is closed


def test_decoding_stops_at_a_runaway_pattern_and_finish_agrees():
    document = "def f(x):\n    █\n"
    copies = [f"    if x == {i}:\n        return {i}\n" for i in range(6)]
    loop = "".join(copies).lstrip()
    assert not closed_at("python", document, "".join(copies[:4]).lstrip())
    assert closed_at("python", document, loop)
    completion, _ = complete("python", document, loop)
    assert completion.text == "".join(copies[:4]).lstrip().rstrip("\n")


def test_decoding_stops_at_a_dedented_line_below_the_dedent():
    document = "for c in s:\n    if c:\n        d = 1\n█\nprint(d)\n"
    assert not closed_at("python", document, "    elif c == 2:\n        d = 2\n")
    assert closed_at("python", document, "    elif c == 2:\n        d = 2\nprint")

