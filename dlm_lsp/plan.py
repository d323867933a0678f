"""What to fill, and with what context: (document, cursor, settings) → `InfillPlan`.

Pure functions. A completion request becomes one hole; a fill request several. For each hole
the plan says

* its *scope* — the rest of the line, the rest of a statement, or a whole block — read from the
  text around the cursor and the syntax tree (`classify`);
* its canvas length, one of the model's fixed buckets, chosen from the scope;
* the stop rules the decoded text must obey (`StopRules`, applied by postprocess.py);

and for the whole request, the text windows around the holes, cut on line boundaries within
token budgets that leave room for the canvases (`max_context`, `max_position`).

Scope rules (documented decisions):

* Text after the cursor that is only closing punctuation (``) ] } " ' ` ; : ,``) was most
  likely auto-inserted by the editor: the cursor counts as at the end of the line, and that text
  becomes `StopRules.closers` (the completion may replace it, never duplicate it).
* Other text after the cursor (the cursor is in the middle of real code): a "line" hole filled
  in place — the model sees the rest of the line as suffix and writes only what goes between.
* After a block opener (Python ``if x:``, ``{`` of a body) or on a blank line in a body: "block".
* Inside an unclosed ``(``/``[``/object literal that continues past the cursor line: "statement".
* Otherwise, at the end of a line: "line".
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal

import tree_sitter

from dlm_lsp.languages import Syntax
from dlm_lsp.text import (BRACE_LANGUAGES, OPENERS, indent_of, line_end, line_start,
                          next_line_start, previous_line_start, tokens)

Scope = Literal["line", "statement", "block", "span"]
CountTokens = Callable[[str], int]

CLOSERS = frozenset(")]}\"'`;:,")
_PY_COMPOUND = re.compile(
    r"^\s*(async\s+)?(def|class|if|elif|else|for|while|with|try|except|finally|match|case)\b"
)
_CASE_LABEL = re.compile(r"^\s*(case\b.*|default\s*):$")
_CONTROL = re.compile(r"\b(if|else|match|while|for|loop|unsafe|async|move|switch|select|func|fn)\b")
_SCAN_CHARS = 20_000  # the bracket scan never lexes more (minified one-line files)
_CHARS_PER_TOKEN = 32  # generous: cursor-line pieces longer than budget * this are cut first
_WORD_OPENER = re.compile(r"(^|\W)(do|then|begin|else)$")
# `{` whose parent is one of these opens a value (an object literal), not a block of statements
_LITERAL_BRACES = frozenset(
    {"object", "object_pattern", "literal_value", "field_initializer_list", "dictionary", "set"}
)


class PlanError(ValueError):
    """Holes that cannot be planned: out of range, overlapping, or no room for context."""


@dataclass(frozen=True, kw_only=True)
class PlanSettings:
    """How much context to send and how much to generate."""

    prefix_tokens: int = 384  # budget for the text before the first hole
    suffix_tokens: int = 128  # budget for the text after the last hole
    max_context: int | None = None  # card.max_context: file token + all segments must fit
    max_position: int | None = None  # card.max_position: context + canvases must fit
    max_block_lines: int = 16  # a block completion stops after this many lines
    prefix_step: int = 0  # > 0: the prefix window's start moves in steps of about this many
    #                       tokens (hysteresis; see `_windows`), so positions stay put while typing
    max_statement_lines: int = 8  # so does the rest of a statement
    line_canvas: int = 16  # target canvas tokens per scope; the smallest bucket >= is used
    statement_canvas: int = 32
    block_canvas: int = 64
    rewrite_headroom: float = 1.5  # a re-written selection may grow by this factor
    scan_lines: int = 200  # how far back the bracket scan may start
    # a blank line before code at its level gets one statement (`one_statement_before`);
    # off: a block, as after any blank line
    one_statement: bool = True


@dataclass(frozen=True, kw_only=True)
class StopRules:
    """Where the decoded text of a hole must end (applied by postprocess.finish)."""

    single_line: bool  # stop at the first newline
    min_indent: int | None  # a later line indented less than this leaves the block
    max_lines: int | None  # most lines kept
    closers: str  # auto-inserted closing text after the cursor: replace, never duplicate
    first_line_free: bool = True  # the first line's indent is not checked (cursor mid-line)
    # on a blank line: the indentation levels of the blocks around the cursor's body (the
    # lines that open them, nearest first) to which the first line may dedent — an `elif`
    # after an `if` body, a `return` after a loop; the block then continues from that level
    dedent_to: tuple[int, ...] = ()
    # one statement: the first line, and the lines of the block or bracket it opens (on a
    # blank line before code at the cursor's level: the gap is most likely one line)
    one_statement: bool = False


@dataclass(frozen=True, kw_only=True)
class Hole:
    """One canvas: where it goes in the document and what may come out of it."""

    start: int  # document offsets; end > start: text to re-write
    end: int
    scope: Scope
    canvas_length: int
    stop: StopRules


@dataclass(frozen=True, kw_only=True)
class InfillPlan:
    """Everything the engine needs to lay out one request and trim its results."""

    language_id: str
    segments: list[str]  # len(holes) + 1 text windows around the holes
    holes: list[Hole]
    window_start: int  # document offsets covered by segments + holes
    window_end: int


@dataclass(frozen=True)
class _Shape:
    """What `classify` decided for one cursor."""

    scope: Scope
    target: int  # canvas tokens wanted
    stop: StopRules


# ---------------------------------------------------------------------------- text helpers


def only_closers(after: str) -> bool:
    """Whether the text after the cursor is only closing punctuation (and spaces)."""
    stripped = after.strip()
    return bool(stripped) and all(c in CLOSERS or c in " \t" for c in stripped)


def _previous_nonblank(text: str, start: int, limit: int = 50) -> str | None:
    """The closest non-blank line above the line starting at `start`."""
    for _ in range(limit):
        if start == 0:
            return None
        start = previous_line_start(text, start)
        line = text[start : line_end(text, start)]
        if line.strip():
            return line
    return None


def _next_nonblank(text: str, end: int, limit: int = 50) -> str | None:
    """The closest non-blank line below the line ending at `end`."""
    for _ in range(limit):
        if end >= len(text):
            return None
        start = next_line_start(text, end)
        end = line_end(text, start)
        if text[start:end].strip():
            return text[start:end]
    return None


# ---------------------------------------------------------------------------- bracket scan


def open_brackets(text: str, start: int, end: int, language_id: str) -> tuple[list[int], bool]:
    """Offsets of the brackets still open at `end` when lexing from `start`, and whether `end`
    lies inside (or at the closing quote of) a string, or inside a comment."""
    stack: list[int] = []
    for token in tokens(text, start, end, language_id):
        if token.kind == "string" and token.stop >= end:
            return stack, True
        if token.kind == "comment" and not token.closed:
            return stack, True
        if token.kind != "bracket":
            continue
        c = text[token.start]
        if c in OPENERS:
            stack.append(token.start)
        elif stack and OPENERS[text[stack[-1]]] == c:
            stack.pop()
    return stack, False


def _scan_start(text: str, cursor_line_start: int, limit: int) -> int:
    """A line start above the cursor where no bracket is open: the last unindented line that
    does not start with a closer (a new top-level statement), at most `limit` lines up."""
    start = cursor_line_start
    for _ in range(limit):
        line = text[start : line_end(text, start)]
        if line.strip() and indent_of(line) == 0 and line[0] not in ")]}":
            return start
        if start == 0:
            return 0
        start = previous_line_start(text, start)
    return start


# ---------------------------------------------------------------------------- classification


def _byte_offset(text: str, offset: int) -> int:
    return len(text[:offset].encode("utf-8", "surrogatepass"))


def _brace_opens_block(text: str, brace: int, tree: tree_sitter.Tree | None) -> bool:
    """Whether the `{` at `brace` opens a block of statements rather than a literal."""
    if tree is not None:
        b = _byte_offset(text, brace)
        node = tree.root_node.descendant_for_byte_range(b, b + 1)
        if node is not None and node.type == "{" and node.parent is not None:
            parent = node.parent.type
            if parent != "ERROR":
                return parent not in _LITERAL_BRACES
    before = text[line_start(text, brace) : brace].rstrip()
    if before == "" or before[-1] in "=(,:[?" or before.endswith("return"):
        return False
    # `p := Point{`, `let p = Point {`, `x := []int{` build a value; `x = if c {` does not
    if _CONTROL.search(before) or before[-1] in ")|":
        return True
    return not re.search(r"((?<![=!<>:])(:?=)(?!=)|\breturn)\s", before)


def _ends_with_opener(text: str, offset: int, before: str, language_id: str, tree) -> bool:
    """Whether the line ends (at the cursor) with something that opens a block."""
    stripped = before.rstrip()
    if not stripped:
        return False
    last = stripped[-1]
    if language_id == "python":
        return last == ":" and bool(_PY_COMPOUND.match(stripped))
    if language_id in BRACE_LANGUAGES:
        if last == "{":
            return _brace_opens_block(text, offset - (len(before) - len(stripped)) - 1, tree)
        return bool(_CASE_LABEL.match(stripped))
    return last in ":{" or bool(_WORD_OPENER.search(stripped))


def classify(
    text: str,
    offset: int,
    tree: tree_sitter.Tree | None,
    language_id: str,
    settings: PlanSettings,
) -> _Shape:
    """Decide the scope, canvas target and stop rules for a cursor (see the module doc)."""
    start, end = line_start(text, offset), line_end(text, offset)
    before, after = text[start:offset], text[offset:end]
    closers = after.rstrip() if only_closers(after) else ""
    line_rules = StopRules(single_line=True, min_indent=None, max_lines=1, closers=closers)
    if after.strip() and not closers:
        return _Shape("line", settings.line_canvas, line_rules)
    scan_from = max(_scan_start(text, start, settings.scan_lines), offset - _SCAN_CHARS)
    stack, in_string = open_brackets(text, scan_from, offset, language_id)
    if in_string:
        return _Shape("line", settings.line_canvas, line_rules)
    indent = indent_of(text[start:end])
    if _ends_with_opener(text, offset, before, language_id, tree):
        below = _next_nonblank(text, end)
        empty_body = below is None or indent_of(below) <= indent
        target = settings.block_canvas * (2 if empty_body else 1)
        return _Shape("block", target, _block_rules(indent + 1, closers, settings))
    if stack and (text[stack[-1]] in "([" or not _brace_opens_block(text, stack[-1], tree)):
        return _statement(text, stack[-1], start, before, closers, settings, line_rules)
    if not before.strip() and not after.strip():
        return _blank_line(text, start, before, language_id, tree, settings)
    target = settings.line_canvas * (1 if before.strip() else 2)
    return _Shape("line", target, line_rules)


def _block_rules(min_indent: int, closers: str, settings: PlanSettings) -> StopRules:
    return StopRules(
        single_line=False, min_indent=min_indent, max_lines=settings.max_block_lines,
        closers=closers,
    )


def _statement(text, bracket, start, before, closers, settings, line_rules) -> _Shape:
    """Inside an open bracket: the rest of a (possibly multi-line) statement."""
    opener_line = line_start(text, bracket)
    if opener_line == start and closers and before.strip():
        return _Shape("line", settings.line_canvas, line_rules)  # `f(█)`: auto-closed, one line
    multi_line = not text[bracket + 1 : line_end(text, bracket)].strip() or opener_line != start
    target = settings.statement_canvas * (2 if multi_line else 1)
    rules = StopRules(
        single_line=False,
        min_indent=indent_of(text[opener_line : line_end(text, opener_line)]),
        max_lines=settings.max_statement_lines,
        closers=closers,
        first_line_free=bool(before.strip()),
    )
    return _Shape("statement", target, rules)


def _blank_line(text, start, before, language_id, tree, settings) -> _Shape:
    """A blank line: write the (rest of the) body it sits in, at the body's indentation."""
    above = _previous_nonblank(text, start)
    above_opens = above is not None and _ends_with_opener(
        text, _line_offset_end(text, above, start), above, language_id, tree
    )
    if before:
        body_indent = len(before)
    elif above is None:
        body_indent = 0
    else:
        body_indent = indent_of(above) + (1 if above_opens else 0)
    target = settings.block_canvas * (2 if above_opens else 1)
    # (in a brace language a dedented line closes a block: `}` is the suffix's, not a dedent)
    levels = () if above_opens or language_id in BRACE_LANGUAGES else tuple(
        level for level in enclosing_levels(text, start, body_indent, settings.scan_lines)
        if level >= len(before))
    # (a body's first lines, right after its opener, often set up several statements)
    one = settings.one_statement and not above_opens and one_statement_before(
        _next_nonblank(text, line_end(text, start)), body_indent)
    rules = replace(_block_rules(body_indent, "", settings), first_line_free=False,
                    dedent_to=levels, one_statement=one)
    return _Shape("block", settings.statement_canvas if one else target, rules)


# which blank lines get one statement (`one_statement_before`), measured on the held-out
# kinds (benchmarks/README.md, issue 30): "level" (the next line is code at the cursor's
# level), "level_or_less" (or dedented below it), "never"
ONE_STATEMENT_RULE = "level"


def one_statement_before(below: str | None, body_indent: int) -> bool:
    """Whether a blank line whose next non-blank line is `below`, in a body at
    `body_indent`, wants one statement: that line is code (not a closer or a comment) at the
    body's level, so the file goes on right after the gap (a missing line between two
    statements, an entry between two entries); a block would run into that code."""
    if ONE_STATEMENT_RULE == "never" or below is None:
        return False
    stripped = below.strip()
    if stripped[0] in ")]}" or stripped.startswith(("#", "//", "/*", "*")):
        return False
    if ONE_STATEMENT_RULE == "level_or_less":
        return indent_of(below) <= body_indent
    return indent_of(below) == body_indent


def enclosing_levels(text: str, start: int, indent: int, limit: int = 200) -> list[int]:
    """The indentation of each block around a body at `indent` whose line starts at
    `start`: walking up, every non-blank line less indented than all below it (the openers
    of the enclosing blocks), nearest first, down to column 0."""
    levels: list[int] = []
    bound = indent
    pos = start
    for _ in range(limit):
        if pos == 0 or bound == 0:
            break
        pos = previous_line_start(text, pos)
        line = text[pos : line_end(text, pos)]
        if line.strip() and indent_of(line) < bound:
            bound = indent_of(line)
            levels.append(bound)
    return levels


def _line_offset_end(text: str, line: str, below_start: int) -> int:
    """Offset of the end of `line`, the closest non-blank line above `below_start`."""
    pos = below_start
    while pos > 0:
        pos = previous_line_start(text, pos)
        if text.startswith(line, pos) and line_end(text, pos) == pos + len(line):
            return pos + len(line.rstrip())
    return len(line.rstrip())


def bucket_for(buckets: Sequence[int], target: int) -> int:
    """The smallest bucket holding `target` tokens (the largest when none does)."""
    ordered = sorted(buckets)
    if not ordered:
        raise PlanError("the model has no canvas buckets")
    return next((b for b in ordered if b >= target), ordered[-1])


# ---------------------------------------------------------------------------- windows


def _take_lines_before(text, pos, floor, budget, count_tokens) -> int:
    """Move `pos` (a line start) up, whole lines at a time, while they fit `budget`."""
    used = 0
    while pos > floor:
        prev = max(previous_line_start(text, pos), floor)
        cost = count_tokens(text[prev:pos])
        if used + cost > budget:
            break
        used, pos = used + cost, prev
    return pos


def _take_lines_after(text, pos, ceiling, budget, count_tokens) -> int:
    """Move `pos` (a line end or the document end) down, whole lines at a time."""
    used = 0
    while pos < ceiling:
        nxt = min(line_end(text, next_line_start(text, pos)), ceiling)
        cost = count_tokens(text[pos:nxt])
        if used + cost > budget:
            break
        used, pos = used + cost, nxt
    return pos


def _trim_left(text: str, start: int, end: int, budget: int, count_tokens) -> int:
    """Cut a single over-long piece from the left (by characters) to fit `budget`."""
    lo, hi = start, end
    while lo < hi:
        mid = (lo + hi) // 2
        if count_tokens(text[mid:end]) <= budget:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _trim_right(text: str, start: int, end: int, budget: int, count_tokens) -> int:
    """Cut a single over-long piece from the right (by characters) to fit `budget`."""
    lo, hi = start, end
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count_tokens(text[start:mid]) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _windows(
    text: str, first: int, last: int, fixed_tokens: int, canvas_total: int,
    settings: PlanSettings, count_tokens: CountTokens, anchor: int | None = None,
) -> tuple[int, int]:
    """The window [start, end) around the holes spanning [first, last).

    `fixed_tokens` are the segments between holes (always sent). The remaining budget is split
    prefix:suffix as the settings say; what one side cannot use (start or end of the file) goes
    to the other, so neither starves.

    With `settings.prefix_step` the prefix's start has hysteresis: `anchor` (the last
    request's start in this document) is kept while the prefix from it fits and is no more
    than two steps short of the room; otherwise the start moves so that the prefix is one step
    short, leaving room to type. A causal model's cached context then stays valid (same
    tokens at the same positions) for hundreds of keystrokes instead of one line; the suffix
    (re-encoded at every keystroke) then never takes the prefix's unused budget.
    """
    cap = settings.prefix_tokens + settings.suffix_tokens
    if settings.max_context is not None:
        cap = min(cap, settings.max_context - 1 - fixed_tokens)
    if settings.max_position is not None:
        cap = min(cap, settings.max_position - 1 - fixed_tokens - canvas_total)
    if cap < 0:
        raise PlanError("the holes and the text between them do not fit the model's context")
    wanted = max(settings.prefix_tokens + settings.suffix_tokens, 1)
    prefix_budget = cap * settings.prefix_tokens // wanted
    suffix_budget = cap - prefix_budget
    reach = _CHARS_PER_TOKEN * (cap + 1)
    head = max(line_start(text, first), first - reach)
    tail = min(line_end(text, last), last + reach)
    head_cost, tail_cost = count_tokens(text[head:first]), count_tokens(text[last:tail])
    if head_cost > prefix_budget:  # the cursor line alone is too long: cut it by characters
        head, head_cost = _trim_left(text, head, first, prefix_budget, count_tokens), prefix_budget
    if tail_cost > suffix_budget + prefix_budget - head_cost:
        tail = _trim_right(text, last, tail, suffix_budget, count_tokens)
        tail_cost = suffix_budget
    end = _take_lines_after(text, tail, len(text), suffix_budget - tail_cost, count_tokens)
    suffix_used = count_tokens(text[last:end])
    room = cap - suffix_used
    step = min(settings.prefix_step, room // 4)
    start = _kept_anchor(text, anchor, head, first, room, step, count_tokens)
    if start is None:
        start = _take_lines_before(text, head, 0, room - step - head_cost, count_tokens)
    # what the prefix cannot use goes to the suffix, but not with hysteresis: a causal
    # model re-encodes the whole suffix on every keystroke, so it stays within its budget
    if step == 0:
        prefix_used = count_tokens(text[start:first])
        end = _take_lines_after(text, end, len(text), cap - prefix_used - suffix_used,
                                count_tokens)
    return _fit_exactly(text, start, first, last, end, cap, count_tokens)


def _kept_anchor(text, anchor, head, first, room, step, count_tokens) -> int | None:
    """`anchor` when the prefix from it still fits `room` tokens, at most two steps short
    (any length when it is the start of the text); None when the start must move."""
    if step <= 0 or anchor is None or not 0 <= anchor <= head or line_start(text, anchor) != anchor:
        return None
    cost = count_tokens(text[anchor:first])
    if cost <= room and (anchor == 0 or cost >= room - 2 * step):
        return anchor
    return None


def _fit_exactly(text, start, first, last, end, cap, count_tokens) -> tuple[int, int]:
    """Drop whole lines from the larger side until the real token counts fit `cap` (per-line
    counts can differ from a whole segment's when the tokenizer merges across lines)."""
    while True:
        prefix, suffix = count_tokens(text[start:first]), count_tokens(text[last:end])
        if prefix + suffix <= cap:
            return start, end
        if prefix >= suffix and start < first:
            nxt = next_line_start(text, line_end(text, start))
            start = nxt if start < nxt <= first else first
        elif end > last:
            last_line = line_start(text, end)
            if last_line <= last:
                end = last
            else:
                end = max(last, last_line - (2 if text[last_line - 2 : last_line] == "\r\n" else 1))
        else:
            return first, last


# ---------------------------------------------------------------------------- plans


def plan_completion(
    text: str,
    offset: int,
    tree: tree_sitter.Tree | None,
    syntax: Syntax | None,
    *,
    buckets: Sequence[int],
    settings: PlanSettings = PlanSettings(),
    count_tokens: CountTokens,
    language_id: str | None = None,
    anchor: int | None = None,
) -> InfillPlan:
    """Plan one completion at `offset` (one hole; segments = [prefix, suffix]); `anchor` is
    the last window start in this document (see `_windows`)."""
    if not 0 <= offset <= len(text):
        raise PlanError(f"offset {offset} outside the document (length {len(text)})")
    language = language_id or (syntax.language_id if syntax else "plaintext")
    shape = classify(text, offset, tree, language, settings)
    hole = Hole(
        start=offset, end=offset, scope=shape.scope,
        canvas_length=bucket_for(buckets, shape.target), stop=shape.stop,
    )
    start, end = _windows(text, offset, offset, 0, hole.canvas_length, settings, count_tokens,
                          anchor)
    return InfillPlan(
        language_id=language, segments=[text[start:offset], text[offset:end]], holes=[hole],
        window_start=start, window_end=end,
    )


def plan_holes(
    text: str,
    ranges: list[tuple[int, int]],
    tree: tree_sitter.Tree | None,
    syntax: Syntax | None,
    *,
    buckets: Sequence[int],
    settings: PlanSettings = PlanSettings(),
    count_tokens: CountTokens,
    language_id: str | None = None,
) -> InfillPlan:
    """Plan several holes at once: gaps (empty ranges) to fill, selections to re-write.

    Holes come back in document order; the text between them is sent whole, the windows
    before the first and after the last share the budgets.
    """
    if not ranges:
        raise PlanError("no holes to fill")
    settings = replace(settings, prefix_step=0)  # a fill is no typing: the whole budget
    spans = sorted(ranges)
    for (s0, e0), (s1, _) in zip(spans, spans[1:]):
        if s1 < e0 or (s1 == e0 and s0 == e0 == s1):
            raise PlanError(f"holes overlap at {s1}")
    if spans[0][0] < 0 or spans[-1][1] > len(text) or any(s > e for s, e in spans):
        raise PlanError("a hole lies outside the document")
    language = language_id or (syntax.language_id if syntax else "plaintext")
    holes = [_span_hole(text, s, e, tree, language, buckets, settings, count_tokens)
             for s, e in spans]
    middles = [text[a.end : b.start] for a, b in zip(holes, holes[1:])]
    fixed = sum(count_tokens(m) for m in middles)
    canvas_total = sum(h.canvas_length for h in holes)
    first, last = spans[0][0], spans[-1][1]
    start, end = _windows(text, first, last, fixed, canvas_total, settings, count_tokens)
    return InfillPlan(
        language_id=language, segments=[text[start:first], *middles, text[last:end]],
        holes=holes, window_start=start, window_end=end,
    )


def _span_hole(text, start, end, tree, language, buckets, settings, count_tokens) -> Hole:
    """One fill hole: a re-write sized from its text, or a gap sized from the syntax around."""
    if end > start:
        selected = text[start:end]
        target = math.ceil(count_tokens(selected) * settings.rewrite_headroom) + 4
        lines = selected.count("\n") + 1
        stop = StopRules(single_line=False, min_indent=None, max_lines=2 * lines + 2, closers="")
    else:
        shape = classify(text, start, tree, language, settings)
        target, stop = shape.target, replace(shape.stop, closers="")
    return Hole(start=start, end=end, scope="span", canvas_length=bucket_for(buckets, target),
                stop=stop)
