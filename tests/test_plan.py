"""plan.py: scope and canvas per cursor (golden table), stop rules, token budgets, holes."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dlm_lsp.languages import syntax_for
from dlm_lsp.modelcard import DEFAULT_CANVAS_BUCKETS as BUCKETS
from dlm_lsp.plan import (
    PlanError,
    PlanSettings,
    bucket_for,
    plan_completion,
    plan_holes,
)

CURSOR = "█"


def by_thirds(text: str) -> int:
    """A fake tokenizer: one token per three characters."""
    return len(text) // 3


def plan_at(language: str, document: str, settings: PlanSettings = PlanSettings(), **kw):
    offset = document.index(CURSOR)
    text = document.replace(CURSOR, "")
    syntax = syntax_for(language)
    tree = syntax.parser().parse(text.encode()) if syntax else None
    plan = plan_completion(
        text, offset, tree, syntax, buckets=BUCKETS, settings=settings,
        count_tokens=kw.get("count_tokens", by_thirds), language_id=language,
    )
    return text, offset, plan


# (language, document with █, scope, canvas bucket)
GOLDEN = [
    # ---- Python
    ("python", "def f(x):█\n", "block", 128),
    ("python", "def f(x):\n    █\n", "block", 128),
    ("python", "def f(x):\n    y = 1\n    █\n", "block", 64),
    ("python", "class A:\n    def m(self):█\n        pass\n", "block", 64),
    ("python", "x = foo(a,█\n", "statement", 32),
    ("python", "x = [\n    1,\n    █\n]\n", "statement", 64),
    ("python", "print(█)\n", "line", 16),
    ("python", "x = █\n", "line", 16),
    ("python", "if a █ b:\n    pass\n", "line", 16),
    ("python", 'd = {"a":█}\n', "line", 16),
    ("python", "s = 'abc█\n", "line", 16),
    ("python", "for i in range(3):  # loop█\n", "line", 16),
    # ---- JavaScript
    ("javascript", "function f() {█}\n", "block", 128),
    ("javascript", "function f() {\n  █\n}\n", "block", 128),
    ("javascript", "function f() {\n  let a = 1;\n  █\n}\n", "block", 64),
    ("javascript", "const o = {█\n", "statement", 64),
    ("javascript", "foo(█);\n", "line", 16),
    ("javascript", "foo(a,\n    █\n", "statement", 64),
    ("javascript", "const x = █;\n", "line", 16),
    ("javascript", "if (x) {█\n  y();\n}\n", "block", 64),
    ("javascript", "switch (k) {\n  case 1:█\n}\n", "block", 128),
    ("javascript", "let s = `a█", "line", 16),
    # ---- TypeScript
    ("typescript", "interface P {█}\n", "block", 128),
    ("typescript", "function f(a: number): number {\n  █\n}\n", "block", 128),
    ("typescript", "const p: P = {█};\n", "line", 16),
    ("typescript", "const xs = [\n  1,\n  █\n];\n", "statement", 64),
    ("typescript", "class C {\n  m(): void {█}\n}\n", "block", 128),
    ("typescript", "let n: number = █\n", "line", 16),
    ("typescript", "call(a, █b);\n", "line", 16),
    ("typescript", "for (const x of xs) {\n  f(x);\n  █\n}\n", "block", 64),
    # ---- Go
    ("go", "func f() {█}\n", "block", 128),
    ("go", "func f() int {\n\t█\n}\n", "block", 128),
    ("go", "func f() {\n\tx := 1\n\t█\n}\n", "block", 64),
    ("go", "p := Point{█\n", "statement", 64),
    ("go", "fmt.Println(█)\n", "line", 16),
    ("go", "if err != nil {█\n", "block", 128),
    ("go", "x := foo(a,\n\t█\n", "statement", 64),
    ("go", "var s = \"ab█\"\n", "line", 16),
    # ---- Rust
    ("rust", "fn f() {█}\n", "block", 128),
    ("rust", "fn f() -> u8 {\n    █\n}\n", "block", 128),
    ("rust", "fn f() {\n    let a = 1;\n    █\n}\n", "block", 64),
    ("rust", "let p = Point {█\n", "statement", 64),
    ("rust", "println!(█);\n", "line", 16),
    ("rust", "fn f<'a>(x: &'a str) {█}\n", "block", 128),
    ("rust", "let v = vec![\n    1,\n    █\n];\n", "statement", 64),
    ("rust", "match x {\n    1 => █\n}\n", "line", 16),
    # ---- plaintext (indentation fallback)
    ("plaintext", "if x then█\n", "block", 128),
    ("plaintext", "loop do\n  █\n", "block", 128),
    ("plaintext", "a:\n  b: 1\n  █\n", "block", 64),
    ("plaintext", "hello wor█\n", "line", 16),
    ("plaintext", "call(a,█\n", "statement", 32),
    ("plaintext", "x = █ + y\n", "line", 16),
    ("plaintext", "items = [\n  █\n", "statement", 64),
    ("plaintext", "def f():\n    body\n█\n", "block", 64),
]


@pytest.mark.parametrize(("language", "document", "scope", "bucket"), GOLDEN)
def test_golden_scope_and_bucket(language, document, scope, bucket):
    _, _, plan = plan_at(language, document)
    hole = plan.holes[0]
    assert (hole.scope, hole.canvas_length) == (scope, bucket)


def test_every_language_has_eight_golden_cases():
    counts: dict[str, int] = {}
    for language, *_ in GOLDEN:
        counts[language] = counts.get(language, 0) + 1
    assert min(counts.values()) >= 8 and len(counts) == 6


# ---------------------------------------------------------------- stop rules


def test_line_scope_is_single_line_with_closers():
    _, _, plan = plan_at("python", 'print("█")\n')
    stop = plan.holes[0].stop
    assert stop.single_line and stop.closers == '")'


def test_mid_line_with_real_text_has_no_closers():
    _, _, plan = plan_at("python", "if a █ b:\n")
    assert plan.holes[0].stop.closers == "" and plan.holes[0].stop.single_line


def test_block_after_opener_needs_deeper_indent():
    _, _, plan = plan_at("python", "    def m(self):█\n")
    stop = plan.holes[0].stop
    assert not stop.single_line and stop.min_indent == 5 and stop.max_lines == 16
    assert stop.first_line_free


def test_block_on_blank_line_uses_body_indent():
    _, _, plan = plan_at("python", "def f():\n    x = 1\n    █\n")
    stop = plan.holes[0].stop
    assert stop.min_indent == 4 and not stop.first_line_free


def test_block_closer_is_recorded():
    _, _, plan = plan_at("javascript", "if (a) {█}\n")
    assert plan.holes[0].stop.closers == "}"


def test_statement_min_indent_is_the_opening_line():
    _, _, plan = plan_at("python", "def f():\n    call(a,\n         █\n")
    stop = plan.holes[0].stop
    assert stop.min_indent == 4 and stop.max_lines == 8


def test_segments_surround_the_cursor():
    text, offset, plan = plan_at("python", "a = 1\nb = █2\nc = 3\n")
    assert plan.segments == [text[:offset], text[offset:]]
    assert (plan.window_start, plan.window_end) == (0, len(text))


def test_bucket_for_picks_smallest_fitting_or_largest():
    assert bucket_for(BUCKETS, 1) == 16
    assert bucket_for(BUCKETS, 33) == 64
    assert bucket_for(BUCKETS, 999) == 128
    with pytest.raises(PlanError):
        bucket_for((), 3)


def test_offset_outside_document():
    with pytest.raises(PlanError):
        plan_completion("ab", 3, None, None, buckets=BUCKETS, count_tokens=by_thirds)


# ---------------------------------------------------------------- budgets

LONG = "".join(f"line_{i:03d} = {i}\n" for i in range(300))  # 15 chars → 5 tokens a line


def _long_doc(line: int) -> str:
    at = line * 15
    return LONG[:at] + CURSOR + LONG[at:]


def test_windows_respect_budgets_and_cut_on_lines():
    settings = PlanSettings(prefix_tokens=50, suffix_tokens=20)
    text, offset, plan = plan_at("python", _long_doc(150), settings)
    prefix, suffix = plan.segments
    assert by_thirds(prefix) + by_thirds(suffix) <= 70  # the suffix's leftover feeds the prefix
    assert by_thirds(suffix) <= 20 and by_thirds(suffix) >= 15 and by_thirds(prefix) >= 45
    assert prefix.startswith("line_") and suffix.endswith(" = " + suffix.split(" = ")[-1])
    assert text[plan.window_start : plan.window_end] == prefix + suffix
    assert plan.window_start == 0 or text[plan.window_start - 1] == "\n"


def test_unused_suffix_budget_goes_to_prefix():
    settings = PlanSettings(prefix_tokens=50, suffix_tokens=50)
    _, _, plan = plan_at("python", _long_doc(298), settings)
    prefix, suffix = plan.segments
    assert by_thirds(suffix) <= 10
    assert by_thirds(prefix) >= 85


def test_unused_prefix_budget_goes_to_suffix():
    settings = PlanSettings(prefix_tokens=50, suffix_tokens=50)
    _, _, plan = plan_at("python", _long_doc(2), settings)
    prefix, suffix = plan.segments
    assert by_thirds(prefix) <= 10
    assert by_thirds(suffix) >= 85


@pytest.mark.parametrize("max_context", [1, 17, 40, 101])
def test_total_context_fits_max_context(max_context):
    settings = PlanSettings(prefix_tokens=80, suffix_tokens=80, max_context=max_context)
    _, _, plan = plan_at("python", _long_doc(150), settings)
    assert sum(by_thirds(s) for s in plan.segments) + 1 <= max_context


def test_max_position_leaves_room_for_the_canvas():
    settings = PlanSettings(prefix_tokens=500, suffix_tokens=500, max_position=200)
    _, _, plan = plan_at("python", "def f():█\n" + LONG, settings)
    used = sum(by_thirds(s) for s in plan.segments) + 1 + plan.holes[0].canvas_length
    assert used <= 200


def test_over_long_cursor_line_is_cut_by_characters():
    settings = PlanSettings(prefix_tokens=10, suffix_tokens=10)
    _, _, plan = plan_at("plaintext", "x" * 300 + CURSOR + "y" * 300, settings)
    assert sum(by_thirds(s) for s in plan.segments) <= 20
    assert plan.segments[0].endswith("x") and plan.segments[1].startswith("y")


def test_budget_with_a_tokenizer_that_merges_across_lines():
    """Per-line counts underestimate this tokenizer; the exact check still holds."""
    def lumpy(text: str) -> int:
        return len(text) // 3 + text.count("\n\n") * 5 + 2

    settings = PlanSettings(prefix_tokens=40, suffix_tokens=40, max_context=60)
    doc = "\n\n".join(f"v{i} = {i}" for i in range(200))
    doc = doc[:700] + CURSOR + doc[700:]
    _, _, plan = plan_at("python", doc, settings, count_tokens=lumpy)
    assert sum(lumpy(s) for s in plan.segments) + 1 <= 60


# ---------------------------------------------------------------- holes


def test_plan_holes_orders_and_sizes_gaps_and_rewrites():
    text = "def f(x):\n    \n    return x\n\ny = f(1)\n"
    gap = text.index("    \n") + 4
    start = text.index("f(1)")
    plan = plan_holes(text, [(start, start + 4), (gap, gap)], syntax_for("python").parser().parse(
        text.encode()), syntax_for("python"), buckets=BUCKETS, count_tokens=by_thirds)
    assert [h.start for h in plan.holes] == [gap, start]
    assert all(h.scope == "span" for h in plan.holes)
    assert plan.holes[0].canvas_length == 128  # blank line in a fresh body → block bucket
    assert plan.holes[1].canvas_length == 16  # 1 token * 1.5 + 4
    assert plan.segments[1] == text[gap:start]
    assert len(plan.segments) == 3


def test_plan_holes_mid_line_gap_gets_line_bucket():
    text = "x = foo(, b)\n"
    plan = plan_holes(text, [(8, 8)], None, None, buckets=BUCKETS, count_tokens=by_thirds)
    assert plan.holes[0].canvas_length == 16 and plan.holes[0].stop.single_line


def test_plan_holes_rewrite_bucket_grows_with_selection():
    text = "a" * 150 + "\n"
    plan = plan_holes(text, [(0, 150)], None, None, buckets=BUCKETS, count_tokens=by_thirds)
    assert plan.holes[0].canvas_length == 128  # 50 tokens * 1.5 + 4 = 79 → 128


@pytest.mark.parametrize("ranges", [[], [(3, 1)], [(0, 5), (4, 6)], [(0, 99)], [(-1, 0)]])
def test_plan_holes_rejects_bad_ranges(ranges):
    with pytest.raises(PlanError):
        plan_holes("abcdefgh", ranges, None, None, buckets=BUCKETS, count_tokens=by_thirds)


def test_plan_holes_middle_too_big_for_context():
    text = "a" * 300
    settings = PlanSettings(max_context=50)
    with pytest.raises(PlanError):
        plan_holes(text, [(0, 0), (300, 300)], None, None, buckets=BUCKETS,
                   settings=settings, count_tokens=by_thirds)


def test_minified_one_line_file_is_planned_within_budget():
    text = "x=[1," * 2_000_000
    plan = plan_completion(text, len(text) // 2, None, None, buckets=BUCKETS,
                           count_tokens=by_thirds)
    assert sum(by_thirds(s) for s in plan.segments) <= 512


_SOURCE = st.text(alphabet="ab :{}()[]\"'#/\n\r\t😀", max_size=80)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_SOURCE, st.data(), st.sampled_from(["python", "javascript", "rust", "plaintext"]))
def test_any_cursor_gets_a_plan_that_tiles_the_window(text, data, language):
    offset = data.draw(st.integers(0, len(text)))
    syntax = syntax_for(language)
    tree = syntax.parser().parse(text.encode("utf-8", "surrogatepass")) if syntax else None
    limits = PlanSettings(prefix_tokens=8, suffix_tokens=4, max_context=10)
    plan = plan_completion(text, offset, tree, syntax, buckets=BUCKETS, settings=limits,
                           count_tokens=by_thirds, language_id=language)
    assert text[plan.window_start : plan.window_end] == "".join(plan.segments)
    assert plan.window_start + len(plan.segments[0]) == offset
    assert sum(by_thirds(s) for s in plan.segments) + 1 <= 10
    assert plan.holes[0].canvas_length in BUCKETS


def _typing(text: str, offset: int, typed: str, settings: PlanSettings):
    """Type `typed` at `offset` one character at a time, planning after each keystroke with
    the last plan's window start as the anchor; yield (text, offset, plan)."""
    anchor = None
    for index in range(len(typed) + 1):
        now = text[:offset] + typed[:index] + text[offset:]
        plan = plan_completion(now, offset + index, None, None, buckets=BUCKETS,
                               settings=settings, count_tokens=by_thirds,
                               language_id="plaintext", anchor=anchor)
        anchor = plan.window_start
        yield now, offset + index, plan


def test_prefix_start_moves_in_steps_while_typing():
    """With hysteresis the window start stays put for many keystrokes and then jumps by about
    a step; without it the start follows the cursor line by line."""
    text = LONG
    offset = text.index("\n", len(text) // 2)
    typed = "\n".join(f"new_{i} = {i * 7}" for i in range(40))
    steady = PlanSettings(prefix_tokens=120, suffix_tokens=30, prefix_step=30)
    sliding = PlanSettings(prefix_tokens=120, suffix_tokens=30)
    starts = [plan.window_start for _, _, plan in _typing(text, offset, typed, steady)]
    slides = [plan.window_start for _, _, plan in _typing(text, offset, typed, sliding)]
    moves = sum(a != b for a, b in zip(starts, starts[1:]))
    assert 0 < moves <= by_thirds(typed) // 30 + 1, moves  # one move per step typed
    assert sum(a != b for a, b in zip(slides, slides[1:])) > 3 * moves
    for now, cursor, plan in _typing(text, offset, typed, steady):
        prefix, suffix = plan.segments
        assert by_thirds(prefix) <= 120 and by_thirds(suffix) <= 30  # never past the budget
        assert by_thirds(prefix) >= 120 - 3 * 30  # and never far short of it
        assert now[plan.window_start : cursor] == prefix


def test_anchor_is_dropped_when_the_cursor_jumps():
    settings = PlanSettings(prefix_tokens=60, suffix_tokens=20, prefix_step=15)
    text = LONG
    far = text.index("\n", len(text) - 200)
    plan = plan_completion(text, far, None, None, buckets=BUCKETS, settings=settings,
                           count_tokens=by_thirds, language_id="plaintext", anchor=0)
    assert plan.window_start > 0 and 60 - 2 * 15 <= by_thirds(plan.segments[0]) <= 60
    plan = plan_completion(text, 40, None, None, buckets=BUCKETS, settings=settings,
                           count_tokens=by_thirds, language_id="plaintext", anchor=far - 100)
    assert plan.window_start == 0


def test_fills_use_the_whole_prefix_budget_without_hysteresis():
    steady = PlanSettings(prefix_tokens=60, suffix_tokens=20, prefix_step=15)
    plain = PlanSettings(prefix_tokens=60, suffix_tokens=20)
    offset = LONG.index("\n", len(LONG) // 2) + 1
    plans = [plan_holes(LONG, [(offset, offset)], None, None, buckets=BUCKETS, settings=s,
                        count_tokens=by_thirds, language_id="plaintext") for s in (steady, plain)]
    assert plans[0].segments == plans[1].segments


def test_blank_line_may_dedent_to_the_enclosing_blocks():
    _, _, plan = plan_at("python", "def f(s):\n    for c in s:\n        if c:\n"
                                   "            x = 1\n█\n")
    stop = plan.holes[0].stop
    assert stop.min_indent == 12 and stop.dedent_to == (8, 4, 0)


def test_no_dedent_under_an_opener_in_leading_whitespace_or_in_braces():
    _, _, plan = plan_at("python", "def f(s):\n    if s:\n█\n")
    assert plan.holes[0].stop.dedent_to == ()  # the body would be empty
    _, _, plan = plan_at("python", "def f(s):\n    if s:\n        x = 1\n    █\n")
    assert plan.holes[0].stop.dedent_to == ()  # typed indentation: nothing to its left
    _, _, plan = plan_at("javascript", "function f() {\n  if (a) {\n    b();\n█\n  }\n}\n")
    assert plan.holes[0].stop.dedent_to == ()


def test_a_blank_line_before_code_at_its_level_wants_one_statement():
    def one(document: str, language: str = "python") -> bool:
        return plan_at(language, document)[2].holes[0].stop.one_statement

    assert one("def f(x):\n    y = g(x)\n    █\n    return y\n")  # between two statements
    assert one("for x in xs:\n    a(x)\n█\n    b(x)\n")  # at column 1 of an empty line
    assert not one("def f(x):\n    █\n    return x\n")  # a fresh body: maybe several lines
    assert not one("def f(x):\n    y = g(x)\n    █\n\ndef h():\n    pass\n")  # dedented
    assert not one("def f(x):\n    y = g(x)\n    █\n    # done\n    return y\n")  # a comment
    assert not one("function f() {\n  a();\n  █\n}\n", "javascript")  # the closer
    assert not one("def f(x):\n    y = g(x)\n    █\n")  # nothing below
    _, _, plan = plan_at("python", "def f(x):\n    y = g(x)\n    █\n    return y\n",
                         PlanSettings(one_statement=False))
    assert not plan.holes[0].stop.one_statement  # off (dlm/fill): a block
