"""The protocol fuzzer of tests/reliability/test_fuzz_wire.py, run for longer; with --cache, the
context cache's differential fuzz of tests/reliability/test_cache_fuzz.py.

    python benchmarks/fuzz_long.py [--examples 2000] [--minutes 10] [--seed 0]
    python benchmarks/fuzz_long.py --cache [--edits 20000] [--seed 1] [--model format2|shifted]

--cache: one seeded editing session sent to two servers, `contextCache` on and off, with a tiny
causal model; prints the edits, requests, differences (answers, status figures or a cached
state that a fresh encoding contradicts) and seconds, and saves the session up to the first
difference as reproducer.jsonl (`cache_fuzz.replay` sends it again).

Each example is a hostile LSP session (out-of-range positions, wrong versions, lone surrogates,
binary text, unknown languages/URIs/methods, closed documents, garbage frames, cancels) sent to
one `python -m dlm_lsp` process with a synthetic model; after each, the invariants: the process
is alive, every request got exactly one response, and a normal request gets a completion.
Hypothesis shrinks the first failure to a minimal session and prints it. Bounded by --examples
and --minutes (examples past the time limit are skipped).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from hypothesis import HealthCheck, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from reliability.fuzz import Session, actions, answers_bad_params, check_session  # noqa: E402
from reliability.synthetic_model import build_synthetic_model  # noqa: E402
from reliability.wire import WireServer, server_argv  # noqa: E402


def cache_fuzz(args) -> int:
    """The context cache's differential fuzz for `args.edits` edits (see the docstring)."""
    import json
    from contextlib import ExitStack

    from causal_model import build_exported_model
    from reliability.cache_fuzz import MODELS, CacheFuzz, save_log, server_pair

    out = Path(args.out or tempfile.mkdtemp(prefix="dlm-cache-fuzz-"))
    out.mkdir(parents=True, exist_ok=True)
    model = build_exported_model(out / args.model, **MODELS[args.model])
    with ExitStack() as stack:
        fuzz = CacheFuzz(*server_pair(stack, model, out), args.seed)
        result = fuzz.run(args.edits, max_differences=args.max_differences)
    print(f"cache fuzz ({args.model}, seed {args.seed}): {json.dumps(result.figures())}",
          flush=True)
    if result.differences:
        saved = save_log(fuzz.log[: result.differences[0]["messages"]],
                         out / "reproducer.jsonl")
        print(f"first difference (session up to it: {saved}):\n"
              + json.dumps(result.differences[0], ensure_ascii=False, indent=1)[:6000])
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", action="store_true",
                        help="the context cache's differential fuzz instead")
    parser.add_argument("--edits", type=int, default=20_000, help="--cache: document edits")
    parser.add_argument("--model", choices=("format2", "shifted"), default="format2",
                        help="--cache: which tiny causal model")
    parser.add_argument("--max-differences", type=int, default=20,
                        help="--cache: stop after this many")
    parser.add_argument("--out", default=None, help="--cache: where the model and logs go")
    args = parser.parse_args(argv)
    if args.cache:
        return cache_fuzz(args)
    temp = tempfile.TemporaryDirectory(prefix="dlm-fuzz-")
    model = build_synthetic_model(Path(temp.name) / "synthetic")
    server = WireServer(server_argv("--model", str(model), log_level="warning"),
                        stderr_path=Path(temp.name) / "stderr.log")
    figures = {"sessions": 0, "messages": 0, "requests": 0}
    deadline = time.monotonic() + args.minutes * 60
    try:
        server.initialize()
        bad_params = answers_bad_params(server)
        print(f"fuzz: server answers unstructurable requests: {bad_params}", flush=True)

        @seed(args.seed)  # reproducible runs
        @settings(max_examples=args.examples, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(data=st.data())
        def session(data):
            if time.monotonic() > deadline:
                return
            run = Session(server, tag=f"s{figures['sessions']}")
            for action in data.draw(actions(bad_params)):
                run.run(action)
            check_session(run)
            figures["sessions"] += 1
            figures["messages"] += run.messages
            figures["requests"] += len(run.request_ids)
            if figures["sessions"] % 100 == 0:
                print(f"  {figures}", flush=True)

        started = time.monotonic()
        session()
        print(f"fuzz: {figures} in {time.monotonic() - started:.0f}s; bytes sent "
              f"{server.bytes_sent}; alive {server.alive()}; duplicates {server.duplicates()}",
              flush=True)
        return 0
    finally:
        server.close()
        temp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
