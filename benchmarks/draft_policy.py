"""Which drafts pay: prompt-lookup policies replayed on the target's own greedy tokens.

    python benchmarks/draft_policy.py --count 48 --seed 1 [--cases runs/draft_cases.json] \
        [--costs 1:50,2:115,8:165,16:200]

A draft's worth does not depend on the machine: at a cursor the target's greedy continuation
is fixed, and a check commits the draft's agreeing prefix plus one token. So the continuations
are decoded once (left to right through the Engine, cached in --cases), and each policy is
replayed on them without the model: tokens per target call, and drafted tokens sent per call
(what a longer check costs); with --costs (one call's milliseconds by the tokens it sends,
measured on the graphs: benchmarks/graph_calls.py), the modelled milliseconds per token, beside
left to right's one-token calls. Cursors: `dlm_lsp.measure.samples` in standard-library files
(tune with a seed other than the bench's 0, then report the bench).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dlm_lsp.draft import PromptLookup  # noqa: E402


def collect(count: int, seed: int) -> list[dict]:
    """(context ids, greedy tokens, ids after the cursor) at `count` cursors."""
    from dlm_lsp import engine as engine_module
    from dlm_lsp.engine import Engine
    from dlm_lsp.measure.samples import collect_files, default_files, sample_positions
    from dlm_lsp.settings import Settings

    engine = Engine(None, Settings(context_cache=False, strategy="left_to_right"))
    seen: dict = {}
    real = engine_module.denoise

    def spy(denoiser, layout, specials, settings, cancelled, **kw):
        result = real(denoiser, layout, specials, settings, cancelled, **kw)
        seen["context"] = layout.context_ids[: layout.anchors[0] + 1]
        seen["tokens"] = result.canvases[0]
        return result

    engine_module.denoise = spy
    cases = []
    samples = sample_positions(collect_files(default_files(), max(8, count // 2), seed), count,
                               seed)
    for sample in samples:
        seen.clear()
        result = engine.complete_text(sample.text, sample.offset, sample.language_id)
        if not seen:
            continue
        end = result.plan.holes[-1].end
        after = sample.text[end : end + engine.DRAFT_SOURCE_CHARS]
        cases.append({"kind": sample.kind, "scope": result.plan.holes[0].scope,
                      "context": seen["context"], "tokens": seen["tokens"],
                      "after": engine.tokenizer.encode(after, add_special_tokens=False).ids})
        print(f"{len(cases)}/{len(samples)}", file=sys.stderr)
    engine_module.denoise = real
    return cases


def call_ms(costs: dict[int, float], width: int) -> float:
    """One call's modelled time for `width` input tokens: linear between measured widths."""
    known = sorted(costs)
    if width <= known[0]:
        return costs[known[0]]
    for low, high in zip(known, known[1:]):
        if width <= high:
            return costs[low] + (costs[high] - costs[low]) * (width - low) / (high - low)
    return costs[known[-1]] * width / known[-1]


def replay(case: dict, lookup: PromptLookup, length: int,
           costs: dict[int, float] | None = None) -> tuple[int, int, float]:
    """(target calls, drafted tokens, modelled ms) to commit the case's tokens with this
    policy (each call sends the frontier's input and the draft: committed inputs are in the
    state)."""
    tokens, history = case["tokens"], list(case["context"])
    calls = drafted = done = 0
    spent = 0.0
    while done < len(tokens):
        room = min(length, len(tokens) - done - 1)
        draft = lookup.draft(history, room) if room > 0 else []
        agree = 0
        while agree < len(draft) and draft[agree] == tokens[done + agree]:
            agree += 1
        step = min(agree + 1, len(tokens) - done)
        history += tokens[done : done + step]
        done += step
        calls += 1
        drafted += len(draft)
        spent += call_ms(costs, 1 + len(draft)) if costs else 0.0
    return calls, drafted, spent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=48)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cases", type=Path, default=Path("runs/draft_cases.json"))
    parser.add_argument("--costs", default="",
                        help="WIDTH:MS,... one call's time by the tokens it sends")
    args = parser.parse_args()
    costs = {int(w): float(ms) for w, ms in (p.split(":") for p in args.costs.split(",") if p)}
    if args.cases.is_file():
        cases = json.loads(args.cases.read_text())
    else:
        cases = collect(args.count, args.seed)
        args.cases.parent.mkdir(parents=True, exist_ok=True)
        args.cases.write_text(json.dumps(cases))
    tokens = sum(len(c["tokens"]) for c in cases)
    print(f"{len(cases)} cursors, {tokens} greedy tokens (seed {args.seed})")
    if costs:
        print(f"left to right, one token a call: {call_ms(costs, 1):.1f} ms per token")
    print("| min n | max n | draft | reach | suffix | tokens/call all | block | statement | line "
          "| drafted/call | ms/token |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for low, high, length, reach, suffix in itertools.product((1, 2, 3), (4, 8), (4, 8, 16),
                                                              (0, 1, 2), (False, True)):
        row = {}
        sent = calls_all = 0
        spent_all = 0.0
        for scope in ("all", "block", "statement", "line"):
            group = [c for c in cases if scope in ("all", c["scope"])]
            calls = drafted = 0
            spent = 0.0
            for case in group:
                lookup = PromptLookup(min_ngram=low, max_ngram=high, reach=reach,
                                      source=tuple(case["after"]) if suffix else ())
                c, d, ms = replay(case, lookup, length, costs)
                calls, drafted, spent = calls + c, drafted + d, spent + ms
            row[scope] = sum(len(c["tokens"]) for c in group) / max(1, calls)
            if scope == "all":
                sent, calls_all, spent_all = drafted, calls, spent
        print(f"| {low} | {high} | {length} | {reach} | {'yes' if suffix else 'no'} "
              f"| {row['all']:.2f} "
              f"| {row['block']:.2f} | {row['statement']:.2f} | {row['line']:.2f} "
              f"| {sent / max(1, calls_all):.1f} | "
              f"{spent_all / tokens if costs else float('nan'):.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
