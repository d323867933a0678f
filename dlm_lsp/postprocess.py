"""Trim decoded text to what the plan asked for: `finish(plan, index, generated, ...)`.

Each filter is a small function ``(draft, context) -> draft | None`` (None: nothing worth
showing), chained in `FILTERS` in the order below, after Tabby's postprocess. Inside the chain
line endings are ``\\n``; the document's own line ending is restored at the end.

1. `normalize_newlines`        — \\r\\n and \\r become \\n.
2. `drop_leading_blank_lines`  — a run of blank lines at the start ("newline mess").
3. `keep_first_line`           — single-line holes stop at the first newline; one-statement
                                 holes after the first line and the block it opens.
4. `cut_at_block_exit`         — the first line that leaves the block (indent below the body,
                                 or a closer of a bracket opened before the hole) ends it; on a
                                 blank line a first line dedented to an enclosing block's level
                                 sets the level; a closing line the suffix also has is cut.
5. `cap_lines`                 — at most `max_lines` lines.
6. `cut_at_suffix_overlap`     — where the completion starts writing the text after the hole
                                 (whitespace aside; in the middle of a line, the rest of that
                                 line) it is over: cut there.
7. `cut_runaway_repetition`    — a line pattern repeated past `REPEAT_CAP` copies that the
                                 prefix does not have itself (a degenerate loop) ends there.
8. `drop_suffix_repeat`        — a tail that repeats the text after the hole.
9. `strip_trailing_whitespace` — on every line; blank lines at the end.
10. `replace_closers`          — never duplicate auto-inserted closers; balance brackets.
11. `drop_syntax_errors`       — the longest cut (line ends, then the first line's token
                                 boundaries) that adds no tree-sitter error in place.

Filters 1–7 decide where the scope ends; `scope_closed` runs them on a partly decoded text
(`Context.final` false: the last, unfinished line is not judged by content) so that decoding
stops as soon as more tokens could no longer change what `finish` keeps.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace

from dlm_lsp.languages import Syntax
from dlm_lsp.plan import InfillPlan, Hole
from dlm_lsp.text import OPENERS, QUOTES, indent_of, line_end, line_start, split_lines, tokens

_LONE_CR = re.compile(r"\r(?!\n)")
_SUFFIX_CHARS = 2000  # how much of the text after a hole the suffix rules read
# cut_at_suffix_overlap: this many non-space characters of the suffix, written by the
# completion, mean it has reached the suffix; at the very end of a finished completion a
# shorter run counts when at least OVERLAP_TAIL long (the canvas ended mid-repeat)
OVERLAP_CHARS = 16
OVERLAP_TAIL = 8
# cut_runaway_repetition: copies of one line pattern (1-3 lines, literals aside) a completion
# may write in a row when the lines above the cursor do not already have that pattern
REPEAT_CAP = 4
_REPEAT_PERIODS = (1, 2, 3)
_LITERALS = re.compile(r"(?<![\w.])\d+(?:\.\d+)?|'(?:[^'\\\n]|\\.)*'|\"(?:[^\"\\\n]|\\.)*\"")


@dataclass(frozen=True)
class Completion:
    """Text to put in place of document text [start, end)."""

    text: str  # replaces document text [start, end)
    start: int  # == hole.start
    end: int  # >= hole.end; > hole.end when it replaces auto-inserted closers


@dataclass(frozen=True)
class Draft:
    """A completion being trimmed: its text (``\\n`` line endings) and where it ends."""

    text: str
    end: int


@dataclass(frozen=True)
class Context:
    """What the filters read: the document around the hole and the hole's rules."""

    document: str
    plan: InfillPlan
    hole: Hole
    syntax: Syntax | None
    before: str  # the cursor line before hole.start
    after: str  # the line after hole.end, to its end
    final: bool = True  # the text is all there is (False: decoding goes on, see scope_closed)

    @classmethod
    def of(cls, plan: InfillPlan, index: int, document: str, syntax: Syntax | None,
           final: bool = True) -> Context:
        """The context of hole `index` of `plan`."""
        hole = plan.holes[index]
        before = document[line_start(document, hole.start) : hole.start]
        after = document[hole.end : line_end(document, hole.end)]
        return cls(document, plan, hole, syntax, before, after, final)

    @property
    def suffix(self) -> str:
        """The document after the hole (after the closers the completion may replace), as far
        as the suffix rules look."""
        start = self.hole.end + len(self.hole.stop.closers)
        return self.document[start : start + _SUFFIX_CHARS]

    @property
    def blank_before(self) -> bool:
        """Whether the cursor line is blank up to the hole."""
        return not self.before.strip()


Filter = Callable[[Draft, Context], "Draft | None"]


def _with_text(draft: Draft, text: str) -> Draft | None:
    return replace(draft, text=text) if text.strip() else None


# ---------------------------------------------------------------------------- filters


def normalize_newlines(draft: Draft, ctx: Context) -> Draft | None:
    """Use ``\\n`` inside the chain whatever the model wrote."""
    return _with_text(draft, draft.text.replace("\r\n", "\n").replace("\r", "\n"))


def drop_leading_blank_lines(draft: Draft, ctx: Context) -> Draft | None:
    """Leading blank lines: none on a blank cursor line, at most one after text.

    On a blank cursor line the first real line is shifted left by the cursor's indentation
    when it carries it, since the cursor already stands there.
    """
    text = draft.text
    lead = re.match(r"(?:[ \t]*\n)+", text)
    if not lead:
        return draft
    rest = text[lead.end() :]
    if not ctx.blank_before:
        return _with_text(draft, "\n" + rest)
    if rest.startswith(ctx.before):
        rest = rest[len(ctx.before) :]
    return _with_text(draft, rest)


def keep_first_line(draft: Draft, ctx: Context) -> Draft | None:
    """Single-line holes end at the first newline. A one-statement hole keeps its first line
    and, when that line opens a block or a bracket (``for x in xs:``, ``f(``), the lines
    indented deeper than it that follow (the body, the arguments), up to one at its level."""
    stop = ctx.hole.stop
    if stop.single_line:
        return _with_text(draft, draft.text.split("\n", 1)[0])
    if not stop.one_statement:
        return draft
    lines = split_lines(draft.text)
    first = lines[0]
    opened = first.rstrip().endswith((":", "{")) or any(
        depth > 0 for _, _, depth in list(_bracket_walk(first, _quote_state(ctx.before)))[-1:])
    if not opened:
        return _with_text(draft, first)
    level = indent_of(first) + (len(ctx.before) if ctx.blank_before else 0)
    keep = 1
    while keep < len(lines) and (not lines[keep].strip() or indent_of(lines[keep]) > level):
        keep += 1
    if keep < len(lines) and indent_of(lines[keep]) == level and lines[keep].strip()[0] in ")]}":
        keep += 1  # the line that closes the bracket at the first line's level
    return _with_text(draft, "\n".join(lines[:keep]))


def cut_at_block_exit(draft: Draft, ctx: Context) -> Draft | None:
    """Cut at the first line indented below `min_indent`, or after the line that closes a
    bracket opened before the hole (the statement or block is then over). A dedented line that
    closes such a bracket (a block's `}`) is kept as the last line."""
    stop = ctx.hole.stop
    lines = split_lines(draft.text)
    quote = _quote_state(ctx.before)
    closing = _first_closing_line(lines, quote)
    keep = len(lines) if closing is None or stop.single_line else closing + 1
    if closing is not None and keep == closing + 1 and _suffix_closes_too(lines, closing, ctx):
        keep = closing  # the suffix has that closing line already
    min_indent = stop.min_indent
    first = indent_of(lines[0]) + (len(ctx.before) if ctx.blank_before else 0)
    if lines[0].strip() and not stop.first_line_free and first in stop.dedent_to:
        min_indent = first  # an `elif`, a `return` after a loop: the block goes on from there
    for i, line in enumerate(lines[:keep]):
        if min_indent is None or not line.strip() or (i == 0 and stop.first_line_free):
            continue
        indent = indent_of(line) + (len(ctx.before) if i == 0 and ctx.blank_before else 0)
        if indent < min_indent:
            keep = i + 1 if i == closing and line.strip()[0] in ")]}" else i
            break
    return _with_text(draft, "\n".join(lines[:keep]))


def cut_at_suffix_overlap(draft: Draft, ctx: Context) -> Draft | None:
    """Cut where the completion starts writing the text after the hole.

    An autoregressive model that reads no suffix runs on into the code that follows (the
    next dict entries, the rest of the function); the first place from which the completion
    equals the suffix's first `OVERLAP_CHARS` non-space characters (whitespace aside: the
    model's indentation or blank lines may differ) is where the hole ends. When the suffix
    starts with whitespace the completion's trailing whitespace goes too (the suffix brings
    its own line break).
    """
    suffix = ctx.suffix
    target = "".join(suffix.split())[:OVERLAP_CHARS]
    text = draft.text
    chars = [(c, i) for i, c in enumerate(text) if not c.isspace()]
    norm = "".join(c for c, _ in chars)
    # unfinished: only a match on finished lines is final (the last line may still change)
    finished = len(text) if ctx.final else text.rfind("\n")
    at = norm.find(target)
    cut = None
    if len(target) < OVERLAP_TAIL:
        pass  # too little text after the hole to tell a repeat from a coincidence
    elif at >= 0 and chars[at + len(target) - 1][1] < finished:
        cut = chars[at][1]
    elif ctx.final:  # the canvas ended mid-repeat: the completion's tail starts the suffix
        for k in range(max(0, len(norm) - len(target) + 1), len(norm) - OVERLAP_TAIL + 1):
            if target.startswith(norm[k:]):
                cut = chars[k][1]
                break
    for line_cut in (_repeats_next_line(text, ctx, finished),
                     _meets_rest_of_line(text, ctx, finished)):
        if line_cut is not None and (cut is None or line_cut < cut):
            cut = line_cut
    if cut is None:
        return draft
    kept = text[:cut]
    if suffix[:1].isspace() or (cut > 0 and text[cut - 1] == "\n"):
        kept = kept.rstrip()
    return _with_text(draft, kept)


def cut_runaway_repetition(draft: Draft, ctx: Context) -> Draft | None:
    """Stop a completion that repeats one line pattern (1–3 lines, string and number
    literals aside) more than `REPEAT_CAP` times in a row, unless the lines just above the
    cursor have a line of the pattern already (a table, an `elif` chain the file is writing: the
    suffix rules end those). A degenerate loop (``if x == 0: return 0``, ``if x == 1: ...``)
    is cut after its last plausible copy."""
    lines = split_lines(draft.text)
    finished = len(lines) if ctx.final else len(lines) - 1
    absolute = [ctx.before + lines[0], *lines[1:]] if ctx.blank_before else list(lines)
    shapes = [_shape(line) for line in absolute[:finished]]
    above = [_shape(line) for line in _lines_above(ctx.document, ctx.hole.start, 6)]
    for period in _REPEAT_PERIODS:
        for start in range(0, finished - period * (REPEAT_CAP + 1) + 1):
            unit = shapes[start : start + period]
            if not all(unit) or not any(_WORDY.search(line)
                                        for line in absolute[start : start + period]):
                continue  # blank lines, a run of `}` closing nested blocks
            copies = 1
            while shapes[start + copies * period : start + (copies + 1) * period] == unit:
                copies += 1
            if copies <= REPEAT_CAP:
                continue
            if any(shape in above for shape in unit):
                continue  # the file's own pattern (a line of it is just above), not a loop
            keep = start + REPEAT_CAP * period
            return _with_text(draft, "\n".join(lines[:keep]))
    return draft


def cap_lines(draft: Draft, ctx: Context) -> Draft | None:
    """At most `max_lines` lines (a leading newline that ends the cursor line is free)."""
    limit = ctx.hole.stop.max_lines
    if limit is None:
        return draft
    lines = split_lines(draft.text)
    if not lines[0].strip() and len(lines) > 1:
        limit += 1
    return _with_text(draft, "\n".join(lines[:limit]))


def drop_suffix_repeat(draft: Draft, ctx: Context) -> Draft | None:
    """Drop a tail that repeats what follows the hole: the rest of the line, or the next
    non-blank lines (compared with their indentation, so an inner `}` is not an outer one)."""
    text = draft.text
    after = ctx.after if ctx.after.strip() and not ctx.hole.stop.closers else ""
    if after and "\n" not in text:
        for tail in (after.rstrip(), after.strip()):
            if text.rstrip().endswith(tail) and len(text.rstrip()) > len(tail):
                return _with_text(draft, text.rstrip()[: -len(tail)])
    lines = split_lines(text)
    absolute = [ctx.before + lines[0], *lines[1:]]
    following = _following_lines(ctx.document, ctx.hole.end, len(lines))
    for i in range(0 if ctx.blank_before else 1, len(lines)):
        tail = [line.rstrip() for line in absolute[i:] if line.strip()]
        if tail and tail == following[: len(tail)]:
            return _with_text(draft, "\n".join(lines[:i]))
    return draft


def strip_trailing_whitespace(draft: Draft, ctx: Context) -> Draft | None:
    """No trailing whitespace on any line, no blank lines at the end; the last line keeps its
    spaces when document text follows it on the same line (`a█b` filled with ``x ``)."""
    lines = [line.rstrip() for line in split_lines(draft.text)]
    while len(lines) > 1 and not lines[-1]:
        lines.pop()
    if ctx.after.strip() and len(lines) == 1:
        lines[-1] = draft.text.split("\n")[0]
    return _with_text(draft, "\n".join(lines))


def replace_closers(draft: Draft, ctx: Context) -> Draft | None:
    """Never duplicate what the editor auto-inserted after the cursor.

    When the completion ends with (the start of) the closers and those characters close
    something in the prefix, the completion replaces them in the document. A multi-line block
    that leaves them out gets a line break so they land on their own line. Finally, trailing
    closers that close nothing in the completion are dropped when the document provides them
    right after.
    """
    text, closers = draft.text, ctx.hole.stop.closers.lstrip()
    end = ctx.hole.end
    if closers:
        lead = len(ctx.hole.stop.closers) - len(closers)
        for k in range(len(closers), 0, -1):
            if text.endswith(closers[:k]) and _closes_outside(text, closers[:k], ctx.before):
                return replace(draft, end=end + lead + k)
        if "\n" in text and ctx.hole.scope in ("block", "statement"):
            return replace(draft, text=text + "\n" + _indent_text(ctx.before))
        return draft
    return _drop_provided_closers(draft, ctx)


def drop_syntax_errors(draft: Draft, ctx: Context) -> Draft | None:
    """Keep the longest cut of the completion that adds no tree-sitter error in place.

    Whole lines first (longest first): a block that ran on into a broken line keeps the lines
    before it. When no line end parses — a single line, or a first line the canvas cut off
    mid-statement, or a mid-line hole whose text does not join the rest of its line — the
    first line is cut at its token boundaries, longest first (`_token_cuts`), so that
    ``x = foo(`` keeps ``x = foo`` and ``uired")`` before ``ires path")`` keeps ``uired``.
    Nothing that adds an error is ever returned."""
    if ctx.syntax is None:
        return draft
    # two views of "in place": the plan's window (for a prefix-only model it ends at the
    # cursor's line, a broken tail when that line continues a string or bracket), and that
    # window with the next lines (a broken tail when the suffix starts inside a construct
    # only the hole could open: a random span's docstring); no added error in one of them
    reaches = (False, True)
    baseline = [_errors_with(ctx, None, longer) for longer in reaches]

    def fits(candidate: Draft | None) -> bool:
        return candidate is not None and any(
            _errors_with(ctx, candidate, longer) <= base
            for longer, base in zip(reaches, baseline))

    lines = split_lines(draft.text)
    for keep in range(len(lines), 0, -1):
        candidate = draft if keep == len(lines) else _trimmed(draft, "\n".join(lines[:keep]), ctx)
        if fits(candidate):
            return candidate
    for cut in _token_cuts(lines[0]):
        candidate = _trimmed(draft, cut, ctx)
        if fits(candidate):
            return candidate
    return None


def _trimmed(draft: Draft, text: str, ctx: Context) -> Draft | None:
    """`text` (a head of the draft) as a draft, closers handled again (None: no text)."""
    if not ctx.after.strip():
        text = text.rstrip()  # spaces before document text on the line are the draft's own
    candidate = _with_text(Draft(text, ctx.hole.end), text)
    return replace_closers(candidate, ctx) if candidate is not None else None


_TOKEN = re.compile(r"\w+|\s+|[^\w\s]")


def _token_cuts(line: str) -> list[str]:
    """The heads of `line` that end at a token boundary (after a word or a punctuation
    character, never after spaces), longest first, the whole line excluded."""
    ends = [m.end() for m in _TOKEN.finditer(line)][:-1]
    return [line[:end] for end in reversed(ends)
            if line[:end].strip() and not line[end - 1].isspace()]


FILTERS: tuple[Filter, ...] = (
    normalize_newlines,
    drop_leading_blank_lines,
    keep_first_line,
    cut_at_block_exit,
    cap_lines,
    cut_at_suffix_overlap,
    cut_runaway_repetition,
    drop_suffix_repeat,
    strip_trailing_whitespace,
    replace_closers,
    drop_syntax_errors,
)


# the filters that decide where the plan's scope ends (the rest only tidy what is kept)
SCOPE_FILTERS: tuple[Filter, ...] = (normalize_newlines, drop_leading_blank_lines,
                                     keep_first_line, cut_at_block_exit, cap_lines)
# the ones that judge what the text says (not only its lines' indentation and count): on an
# unfinished text they read finished lines only, so a cut they make is final
CONTENT_FILTERS: tuple[Filter, ...] = (cut_at_suffix_overlap, cut_runaway_repetition)


def scope_closed(plan: InfillPlan, index: int, generated: str, *, text: str,
                 syntax: Syntax | None) -> bool:
    """Whether more text after `generated` could no longer change what `finish` keeps: the
    scope filters already cut it before a line that has begun (a single line has ended, a
    line left the block, the line cap was passed). Decoding can stop there."""
    if "\n" not in generated:
        return False
    ctx = Context.of(plan, index, text, syntax, final=False)
    draft: Draft | None = Draft(generated, ctx.hole.end)
    draft = normalize_newlines(draft, ctx)
    draft = drop_leading_blank_lines(draft, ctx) if draft is not None else None
    if draft is None:  # only blank lines so far
        return False
    if ctx.hole.stop.single_line:
        return "\n" in draft.text.lstrip("\n") or "\n" in draft.text[1:]
    lines = split_lines(draft.text)
    kept: Draft | None = draft
    for step in SCOPE_FILTERS[2:]:
        kept = step(kept, ctx) if kept is not None else None
    count = 0 if kept is None else len(split_lines(kept.text))
    # the first line cut off has text (its indent is final), or a later line has begun
    if count < len(lines) - 1 or (count < len(lines) and bool(lines[count].strip())):
        return True
    for step in CONTENT_FILTERS:
        cut = step(draft, ctx)
        if cut is None or cut.text != draft.text:
            return True
    return False


def finish(
    plan: InfillPlan, index: int, generated: str, *, text: str, syntax: Syntax | None
) -> Completion | None:
    """Trim the decoded text of hole `index` to the plan's scope (None: nothing to show)."""
    return trace(plan, index, generated, text=text, syntax=syntax)[0]


def trace(
    plan: InfillPlan, index: int, generated: str, *, text: str, syntax: Syntax | None
) -> tuple[Completion | None, list[tuple[str, str | None]]]:
    """`finish`, and what each filter it ran left: (filter name, text or None) in order. The
    last entry of an empty answer names the filter that emptied it (a measurement's why)."""
    ctx = Context.of(plan, index, text, syntax)
    draft: Draft | None = Draft(generated, ctx.hole.end)
    steps: list[tuple[str, str | None]] = []
    for step in FILTERS:
        if draft is None or not draft.text.strip():
            return None, steps
        draft = step(draft, ctx)
        steps.append((step.__name__, None if draft is None else draft.text))
    if draft is None or not draft.text.strip():
        return None, steps
    completion = Completion(draft.text.replace("\n", document_eol(text)), ctx.hole.start,
                            draft.end)
    return completion, steps


def document_eol(text: str) -> str:
    """The document's line ending (its first one; ``\\n`` when it has none)."""
    match = re.search(r"\r\n|\r|\n", text)
    return match.group(0) if match else "\n"


# ---------------------------------------------------------------------------- helpers


_WORDY = re.compile(r"[A-Za-z_]\w")
_ELSE_IF = re.compile(r"^(\s*)(?:elif|else if|elsif)\b")


def _shape(line: str) -> str:
    """A line with its string and number literals replaced (a pattern's copies differ
    only there): `'one': 1,` and `'two': 2,` have one shape, `x0 = 0` and `x1 = 1` two;
    `elif c == 'b':` has the shape of `if c == 'a':`."""
    if not line.strip():
        return ""
    # an `elif` chain continues the `if` it follows (`else if` likewise)
    return _ELSE_IF.sub(r"\1if", _LITERALS.sub("#", line.rstrip()))


def _repeats_next_line(text: str, ctx: Context, finished: int) -> int | None:
    """Where the first finished line of `text` that is the suffix's next non-blank line
    (whitespace aside) starts, or None. A line of a few characters (`pass`, `}`) counts only
    when the line after it is the suffix's second line too."""
    following = ["".join(line.split()) for line in _following_lines(ctx.document,
                                                                     ctx.hole.end, 2)]
    if not following:
        return None
    judged = text if ctx.final else text[: max(0, finished)]  # finished lines only
    lines = judged.split("\n") if judged else []
    starts, pos = [], 0
    for line in lines:
        starts.append(pos)
        pos += len(line) + 1
    for i in range(0 if ctx.blank_before else 1, len(lines)):
        if "".join(lines[i].split()) != following[0]:
            continue
        if len(following[0]) >= OVERLAP_TAIL - 2 and _WORDY.search(following[0]):
            return starts[i]
        rest = ["".join(line.split()) for line in lines[i + 1 :] if line.strip()]
        if len(following) > 1 and rest[:1] == following[1:2]:
            return starts[i]
    return None


# _meets_rest_of_line: the completion writing this many characters of the rest of the line
# (fewer when the rest is shorter) has reached it
REST_OF_LINE_CHARS = 6
REST_OF_LINE_TAIL = 3  # at the end of a finished first line, a shorter start of it counts


def _meets_rest_of_line(text: str, ctx: Context, finished: int) -> int | None:
    """For a hole in the middle of a line (real code after it), where the completion's first
    line starts writing that code: the first position from which it continues with the rest
    of the line's first `REST_OF_LINE_CHARS` characters, or (the line finished) ends with at
    least `REST_OF_LINE_TAIL` of them. ``foo(a, b) + 1`` before ``, b)`` is ``foo(a``;
    ``uired")`` before ``ired")`` is ``u``. None: it never does (or the hole ends its line)."""
    rest = ctx.after.lstrip()
    if not rest.strip() or ctx.hole.stop.closers:
        return None
    line = text.split("\n", 1)[0]
    ended = ctx.final or "\n" in text[: max(0, finished) + 1]
    head = rest[:REST_OF_LINE_CHARS]
    for p in range(len(line)):
        if line[p].isspace() or (p and not line[:p].strip()):
            continue
        tail = line[p:].rstrip()
        if tail.startswith(head):
            return p  # at 0: the model writes what is already there, nothing to add
        if (p and ended and len(tail) >= min(REST_OF_LINE_TAIL, len(rest))
                and rest.startswith(tail)):
            return p
    return None


def _lines_above(document: str, pos: int, count: int) -> list[str]:
    """The last `count` non-blank lines before the line holding `pos`."""
    head = document[max(0, line_start(document, pos) - 4000) : line_start(document, pos)]
    return [line for line in head.split("\n") if line.strip()][-count:]


def _suffix_closes_too(lines: list[str], closing: int, ctx: Context) -> bool:
    """Whether the completion's closing line (a closer first) is the suffix's next line:
    the same closer at the same indentation (then the document already closes it)."""
    line = lines[closing]
    if not line.strip() or line.strip()[0] not in ")]}":
        return False
    indent = indent_of(line) + (len(ctx.before) if closing == 0 and ctx.blank_before else 0)
    following = ctx.after if ctx.after.strip() else next(
        iter(_following_lines(ctx.document, ctx.hole.end, 1)), "")
    if not following.strip() or following.strip()[0] != line.strip()[0]:
        return False
    base = len(ctx.before) + indent_of(ctx.after) if following is ctx.after else 0
    return indent_of(following) + base == indent


def _indent_text(line: str) -> str:
    return line[: indent_of(line)]


def _following_lines(document: str, end: int, count: int) -> list[str]:
    """The next `count` non-blank lines after the line holding `end` (right-stripped)."""
    found: list[str] = []
    pos = line_end(document, end)
    for line in re.split(r"\r\n|\r|\n", document[pos : pos + 4000])[1:]:
        if line.strip():
            found.append(line.rstrip())
            if len(found) >= count:
                break
    return found


def _quote_state(line: str) -> str | None:
    """The quote still open at the end of `line` (the completion starts inside that string)."""
    last = None
    for last in tokens(line):
        pass
    if last is not None and last.kind == "string" and not last.closed and last.stop == len(line):
        return line[last.start]
    return None


def _bracket_walk(text: str, quote: str | None = None):
    """Yield (line index, bracket, depth after it) for brackets outside simple quoted strings
    (comments are not lexed), starting inside a string quoted with `quote` when given."""
    depth = row = 0
    seen = 0
    for token in tokens(text, quote=quote):
        if token.kind != "bracket":
            continue
        row += text.count("\n", seen, token.start)
        seen = token.start
        c = text[token.start]
        depth += 1 if c in OPENERS else -1
        yield row, c, depth


def _first_closing_line(lines: list[str], quote: str | None = None) -> int | None:
    """The first line on which a bracket opened before the completion is closed."""
    for row, _, depth in _bracket_walk("\n".join(lines), quote):
        if depth < 0:
            return row
    return None


def _unmatched_closers(text: str, quote: str | None = None) -> str:
    """The closing brackets of `text` that close nothing inside it, in order."""
    stack: list[str] = []
    unmatched = []
    for _, c, _ in _bracket_walk(text, quote):
        if c in "([{":
            stack.append(c)
        elif stack and OPENERS[stack[-1]] == c:
            stack.pop()
        else:
            unmatched.append(c)
    return "".join(unmatched)


def _closes_outside(text: str, tail: str, before: str) -> bool:
    """Whether every character of `tail` (the end of `text`) closes something opened before
    the completion: an unmatched bracket, or a quote still open on the cursor line."""
    quote = _quote_state(before)
    brackets = "".join(c for c in tail if c in ")]}")
    if brackets and not _unmatched_closers(text, quote).endswith(brackets):
        return False
    last_line = (before if "\n" not in text else "") + split_lines(text)[-1]
    return all(last_line.count(q) % 2 == 0 for q in set(tail) & set(QUOTES))


def _drop_provided_closers(draft: Draft, ctx: Context) -> Draft | None:
    """Drop trailing closers that close nothing in the completion when the document has the
    same closer next (an inline one, or one on a line at the same indentation)."""
    text = draft.text
    unmatched = _unmatched_closers(text, _quote_state(ctx.before))
    rest = ctx.document[draft.end : draft.end + 2000]
    next_char = rest.lstrip()[:1]
    last = split_lines(text)[-1]
    own_line = not last.strip(")]}; \t")
    if not unmatched or not text.rstrip().endswith(unmatched[-1]) or next_char != unmatched[-1]:
        return draft
    if own_line:
        doc_line = rest.lstrip("\r\n").split("\n")[0]
        if indent_of(doc_line) != indent_of(last) + (len(ctx.before) if "\n" not in text else 0):
            return draft
    trimmed = text.rstrip()
    while trimmed and trimmed[-1] == next_char and unmatched.endswith(trimmed[-1]):
        trimmed, unmatched = trimmed[:-1].rstrip(" \t"), unmatched[:-1]
    return _with_text(draft, trimmed.rstrip())


def _errors_with(ctx: Context, draft: Draft | None, longer: bool = False) -> int:
    """ERROR and MISSING nodes in the plan's window (`longer`: and the
    `SYNTAX_SUFFIX_LINES` lines after it), with `draft` in place of the hole (or the document
    as it is when `draft` is None)."""
    doc, plan = ctx.document, ctx.plan
    start, end = plan.window_start, max(plan.window_end, ctx.hole.end)
    if longer:
        end = _syntax_window_end(doc, end)
    if draft is None:
        window = doc[start:end]
    else:
        tail = doc[draft.end : max(end, draft.end)]
        window = doc[start : ctx.hole.start] + draft.text + tail
    window = _LONE_CR.sub("\n", window)  # tree-sitter grammars do not end lines at a lone \r
    tree = ctx.syntax.parser().parse(window.encode("utf-8", "surrogatepass"))
    return _count_errors(tree.root_node)


SYNTAX_SUFFIX_LINES = 20  # lines after the plan's window that the syntax check reads


def _syntax_window_end(document: str, end: int) -> int:
    """The end of the `SYNTAX_SUFFIX_LINES` lines after `end`'s line (at most 2000
    characters, cut at a line end)."""
    pos = line_end(document, end)
    for _ in range(SYNTAX_SUFFIX_LINES):
        if pos >= len(document) or pos - end > 2000:
            break
        pos = line_end(document, pos + 1)
    return pos


def _count_errors(root) -> int:
    """Nodes that are ERROR or MISSING, descending only into subtrees that have errors."""
    count, stack = 0, [root]
    while stack:
        node = stack.pop()
        if node.is_error or node.is_missing:
            count += 1
        if node.has_error:
            stack.extend(node.children)
    return count
