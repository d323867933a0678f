"""The typing-through cache."""

from dlm_lsp.cache import TypingCache
from dlm_lsp.postprocess import Completion

TEXT = "def f(xs):\n    \nprint(1)\n"
AT = TEXT.index("    \n") + 4


def shown():
    cache = TypingCache()
    cache.remember("u", TEXT, AT, Completion(text="return sum(xs)", start=AT, end=AT))
    return cache


def test_typing_through_returns_the_rest():
    typed = TEXT[:AT] + "ret" + TEXT[AT:]
    got = shown().lookup("u", typed, AT + 3)
    assert got == Completion(text="urn sum(xs)", start=AT + 3, end=AT + 3)


def test_diverging_keystroke_misses():
    typed = TEXT[:AT] + "rex" + TEXT[AT:]
    assert shown().lookup("u", typed, AT + 3) is None


def test_changed_suffix_misses():
    typed = TEXT[:AT] + "ret" + TEXT[AT:].replace("print(1)", "print(2)")
    assert shown().lookup("u", typed, AT + 3) is None


def test_typed_everything_misses_and_other_document_misses():
    full = TEXT[:AT] + "return sum(xs)" + TEXT[AT:]
    cache = shown()
    assert cache.lookup("u", full, AT + len("return sum(xs)")) is None
    assert cache.lookup("other", TEXT, AT) is None


def test_replaced_closers_move_with_the_cursor():
    text = "print(\n"
    at = len("print(")
    text = "print()\n"
    cache = TypingCache()
    cache.remember("u", text, at, Completion(text="x)", start=at, end=at + 1))
    typed = "print(x)\n"
    assert cache.lookup("u", typed, at + 1) == Completion(text=")", start=at + 1, end=at + 2)


def test_capacity_bounds_documents():
    cache = TypingCache(capacity=2)
    for uri in "abc":
        cache.remember(uri, TEXT, AT, Completion(text="pass", start=AT, end=AT))
    assert cache.lookup("a", TEXT[:AT] + "p" + TEXT[AT:], AT + 1) is None
    assert cache.lookup("c", TEXT[:AT] + "p" + TEXT[AT:], AT + 1) is not None
