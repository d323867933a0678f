"""The shipped model between a prefix and a suffix (issue 30): the code after the cursor
decides where a completion ends, and a dlm/fill reads it.

The four editor cases of the issue, each at column 1 of an empty line, through
`Engine.complete_text` (what the server's inline completion calls), and a dlm/fill of an empty
function body (`Engine.fill_text`, what dlm/fill calls)."""

from __future__ import annotations

import ast

import pytest

from dlm_lsp.engine import Engine
from dlm_lsp.settings import Settings

PARENS = '''def count_parens(s):
    depth = 0
    for c in s:
        if c == '(':
            depth += 1

            depth -= 1
    return depth


def first_negative(xs):
    for i, x in enumerate(xs):
        if x < 0:
            return i

'''

DIGITS = '''DIGITS = {
    'zero': 0,
    'one': 1,

    'three': 3,
    'four': 4,
}


def mean(xs):
    total = 0

    return total / len(xs)
'''

SUMMARY = '''def summary(values):
<|hole|>


def mean(values):
    return sum(values) / len(values)


def spread(values):
    return max(values) - min(values)
'''


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(settings=Settings(threads=1))


def line_offset(text: str, line: int) -> int:
    """Offset of column 1 of 1-based `line`."""
    return sum(len(part) + 1 for part in text.split("\n")[: line - 1])


def complete(engine: Engine, text: str, line: int) -> str:
    result = engine.complete_text(text, line_offset(text, line), "python")
    assert result.completion is not None, f"line {line}: no completion"
    return result.completion.text


def indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def test_line_6_dedents_to_the_if(engine):
    text = complete(engine, PARENS, 6)
    first = text.split("\n")[0]
    assert first.strip() and indent(first) == 8, text  # the `if`'s level: `elif ...:`
    at = line_offset(PARENS, 6)
    ast.parse(PARENS[:at] + text + PARENS[at:])  # it parses in place


def test_line_15_dedents_to_the_for(engine):
    text = complete(engine, PARENS, 15)
    first = text.split("\n")[0]
    assert first.strip() and indent(first) == 4, text  # the `for`'s level: `return ...`


def test_line_4_writes_the_missing_entry_and_none_of_the_suffix(engine):
    assert complete(engine, DIGITS, 4) == "    'two': 2,"


def test_line_12_stops_before_the_suffix(engine):
    text = complete(engine, DIGITS, 12)
    assert "return total / len(xs)" not in text
    suffix_lines = {line.strip() for line in DIGITS.split("\n")[12:] if line.strip()}
    assert not suffix_lines & {line.strip() for line in text.split("\n")}, text
    assert sum(line.lstrip().startswith(("for ", "while ")) for line in text.split("\n")) <= 1


def test_fill_of_an_empty_body_uses_names_defined_after_it(engine):
    at = SUMMARY.index("<|hole|>")
    text = SUMMARY.replace("<|hole|>", "")
    result = engine.fill_text(text, [(at, at)], "python")
    (start, end, body) = result.edits[0]
    assert (start, end) == (at, at) and body.strip(), body
    assert "mean(" in body or "spread(" in body, body  # both are defined only after the hole
    ast.parse(text[:at] + body + text[at:])


MARK = '''def mark(fn):
    fn.marked = True

    return fn
'''


def test_a_greedy_line_that_is_the_suffix_gives_way_to_another_candidate(engine):
    """The greedy line at line 3 is `return fn`, the suffix's next line: cut, it leaves
    nothing (reranking its cuts only); other candidates (the beam's, `emptyRerank`'s) then
    give an answer that is not the suffix again."""
    at = line_offset(MARK, 3)
    first = engine.complete_text(MARK, at, "python", settings=Settings(
        threads=1, empty_rerank=0, inline_suffix_rerank=1))
    assert first.completion is None and first.generated.strip() == "return fn"
    text = complete(engine, MARK, 3)
    assert text.strip() and text.strip() != "return fn", text
    ast.parse(MARK[:at] + text + MARK[at:])


def test_the_beam_on_one_appended_state_equals_re_sending_each_hypothesis(engine, monkeypatch):
    """The beam's hypotheses share one state (each call appends its one input and masks the
    other hypotheses' out): the candidates, and so the answer, are the ones the beam finds
    re-sending each hypothesis's tokens after the anchor (the reference)."""
    from dlm_lsp import context_cache, rerank
    from dlm_lsp.engine import Engine as EngineClass

    monkeypatch.setattr(rerank, "BRANCH", "beam")
    found: list[list[list[int]]] = []
    beam = EngineClass._beam_candidates

    def spy(self, *args, **kwargs):
        candidates, calls = beam(self, *args, **kwargs)
        found.append(candidates)
        return candidates, calls

    monkeypatch.setattr(EngineClass, "_beam_candidates", spy)
    settings = Settings(threads=1, inline_suffix_rerank=3)
    answers = {}
    for appending in (True, False):
        monkeypatch.setattr(context_cache.DocumentDenoiser, "masks",
                            property(lambda self, on=appending: on))
        found.clear()
        done = engine.complete_text(DIGITS, line_offset(DIGITS, 12), "python",
                                    settings=settings)
        answers[appending] = (done.completion.text if done.completion else None,
                              [list(c) for c in found[0]])
    assert answers[True][1] and len(answers[True][1]) >= 2  # the beam found others
    assert answers[True] == answers[False]
