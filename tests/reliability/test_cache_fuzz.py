"""The context cache never serves a stale context: a seeded random editing session through two
real servers over stdio, one with `contextCache: true` and one with `contextCache: false`,
gets the same answer to every request, and the cached server's state for a document is always
what a fresh encoding of its tokens gives (cache_fuzz.py says what is sent and compared).

Two tiny random-weight causal models (`cache_fuzz.MODELS`): a format-2 denoiser, and one shaped
like an imported autoregressive model. The default run is a few hundred edits each; the slow
one (-m slow) 20,000 each, as `python benchmarks/fuzz_long.py --cache` runs one.
"""

from __future__ import annotations

import json
from contextlib import ExitStack

import pytest

from tests.causal_model import build_exported_model

from .cache_fuzz import MODELS, CacheFuzz, save_log, server_pair

pytest.importorskip("onnx")


@pytest.fixture(scope="module", params=sorted(MODELS))
def model(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / request.param
    return build_exported_model(folder, **MODELS[request.param])


def run(model, folder, edits: int, seed: int) -> dict:
    with ExitStack() as stack:
        cached, reference = server_pair(stack, model, folder)
        fuzz = CacheFuzz(cached, reference, seed)
        result = fuzz.run(edits)
        for server in (cached, reference):
            assert server.alive(), server.stderr_tail()
            assert not server.duplicates()
    print(f"\ncache fuzz ({model.name}, seed {seed}): {json.dumps(result.figures())}")
    if result.differences:
        first = result.differences[0]
        saved = save_log(fuzz.log[: first["messages"]], folder / "reproducer.jsonl")
        raise AssertionError(
            f"{len(result.differences)} of {result.requests} answers differ with the cache on "
            f"(session up to the first: {saved}, cache_fuzz.replay sends it again); the first:\n"
            + json.dumps(first, ensure_ascii=False, indent=1)[:6000])
    assert result.requests >= edits  # a request after every edit (and after other actions)
    assert result.states_checked > 0.9 * result.requests
    # the cache was used: most of the context came from it, not from the encoder
    assert result.encoded_tokens < 0.5 * result.context_tokens, result.figures()
    return result.figures()


def test_cached_answers_equal_uncached_answers(model, tmp_path):
    run(model, tmp_path, edits=250, seed=0)


@pytest.mark.slow
@pytest.mark.timeout(7200)
def test_cached_answers_equal_uncached_answers_long(model, tmp_path):
    run(model, tmp_path, edits=20_000, seed=1)
