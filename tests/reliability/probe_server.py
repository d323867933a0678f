"""The real dlm-lsp server plus two test-only requests, for reliability tests over stdio.

    python tests/reliability/probe_server.py --model DIR [--fault-marker TEXT] [--log-level L]

It is `dlm_lsp.server.create_server` unchanged, with:

* ``reliability/probe`` → ``{"tasks", "threads", "executor_threads", "executor_max", "rss",
  "documents", "pending"}``: asyncio tasks alive, Python threads (and how many of them are
  asyncio's default executor's, and its bound), resident memory, open documents, entries in
  pygls' in-flight
  future table (to count leaks from inside the process; with PYTHONTRACEMALLOC=N also where
  Python memory grew since the last probe);
* ``reliability/contextCheck`` ``{"uri"}`` → ``{"cached", "tokens", "maxDiff", "scale"}``: the
  document's cached context state (context_cache.py) against a fresh encoding of its tokens,
  the largest difference of their keys/values (~0 unless the state is stale);
* ``reliability/document`` ``{"uri"}`` → ``{"version", "text", "sexp"}``: the server's view of a
  buffer, its tree as an S-expression (None when it keeps no tree), to check for drift;
* ``--fault-marker TEXT``: a completion whose document contains TEXT raises from the denoiser on
  its first denoise step (a fault in the middle of a request).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import threading
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import numpy as np  # noqa: E402
import psutil  # noqa: E402

from dlm_lsp.engine import Engine  # noqa: E402
from dlm_lsp.layout import Layout  # noqa: E402
from dlm_lsp.server import create_server  # noqa: E402
from dlm_lsp.settings import Settings  # noqa: E402


class FaultyDenoiser:
    """Delegates to a real denoiser; raises on the 1st denoise step (after the encoder ran)
    while `armed.on` is set."""

    returns_logits = False

    def __init__(self, inner) -> None:
        self.inner = inner
        self.provider = getattr(inner, "provider", "CPU")
        self.graphs = getattr(inner, "graphs", None)
        self.armed = threading.local()
        self.steps = 0

    def encode(self, layout):
        self.steps = 0
        return self.inner.encode(layout)

    def denoise_step(self, state, canvas_ids, canvas_positions):
        self.steps += 1
        if getattr(self.armed, "on", False) and self.steps == 1:
            raise RuntimeError("injected denoiser fault on step 1")
        return self.inner.denoise_step(state, canvas_ids, canvas_positions)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--fault-marker", default=None)
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args()
    logging.basicConfig(stream=sys.stderr, level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings(model_dir=args.model, log_level=args.log_level)
    engine = Engine(settings=settings)
    if args.fault_marker:
        faulty = FaultyDenoiser(engine.denoiser)
        engine.denoiser = faulty
        complete_text = engine.complete_text

        def armed_complete_text(text, *a, **kw):
            faulty.armed.on = args.fault_marker in text
            try:
                return complete_text(text, *a, **kw)
            finally:
                faulty.armed.on = False

        engine.complete_text = armed_complete_text  # type: ignore[method-assign]
    server = create_server(settings, engine)
    process = psutil.Process()
    snapshots: list = []

    @server.feature("reliability/probe")
    def probe(ls, params=None):
        # asyncio's default executor (the workers of asyncio.to_thread) grows on demand up to
        # its bound; how far depends on how many requests overlapped, i.e. on speed
        executor = getattr(asyncio.get_running_loop(), "_default_executor", None)
        figures = {
            "tasks": len(asyncio.all_tasks()),
            "threads": threading.active_count(),
            "executor_threads": len(getattr(executor, "_threads", ())),
            "executor_max": getattr(executor, "_max_workers", 0),
            "rss": process.memory_info().rss,
            "documents": len(ls.store.uris()),
            # pygls' table of in-flight handler futures: must not grow with finished work
            "pending": len(getattr(ls.protocol, "_request_futures", ())),
        }
        if tracemalloc.is_tracing():  # PYTHONTRACEMALLOC=N: where Python memory grows
            snapshot = tracemalloc.take_snapshot().filter_traces(
                [tracemalloc.Filter(False, tracemalloc.__file__)])
            figures["traced"] = tracemalloc.get_traced_memory()[0]
            if snapshots:
                growth = snapshot.compare_to(snapshots[-1], "traceback")[:3]
                figures["growth"] = [[str(g)] + g.traceback.format()[-16:] for g in growth]
            snapshots[:] = [snapshot]
        return figures

    @server.feature("reliability/contextCheck")
    def context_check(ls, params):
        """The document's cached context against a fresh encoding of the same tokens at the
        same positions: the largest difference of their keys/values (a stale state shows)."""
        uri = params.uri if hasattr(params, "uri") else params["uri"]
        cache = engine.contexts
        with cache._lock:  # a peek: the least-recently-used order stays as it was
            entry = cache._entries.get(uri)
        if entry is None:
            return {"cached": False}
        layout = Layout([int(i) for i in entry.ids], [int(p) for p in entry.positions], [])
        with engine._model_lock:
            fresh = engine.denoiser.encode(layout)
        diff = 0.0
        for name in ("keys", "values"):
            now, kept = np.asarray(getattr(fresh, name)), np.asarray(getattr(entry.state, name))
            if now.shape != kept.shape:
                return {"cached": True, "tokens": len(entry.ids), "maxDiff": float("inf"),
                        "shapes": [list(now.shape), list(kept.shape)]}
            diff = max(diff, float(np.abs(now - kept).max(initial=0.0)))
        scale = float(np.abs(np.asarray(fresh.keys)).max(initial=0.0))
        return {"cached": True, "tokens": len(entry.ids), "maxDiff": diff, "scale": scale}

    @server.feature("reliability/document")
    def document(ls, params):
        uri = params.uri if hasattr(params, "uri") else params["uri"]
        snapshot = ls.store.get(uri)
        return {
            "version": snapshot.version,
            "text": snapshot.text,
            "sexp": str(snapshot.tree.root_node) if snapshot.tree is not None else None,
        }

    server.start_io()


if __name__ == "__main__":
    main()
