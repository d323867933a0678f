"""The benchmark's report: measurements summarised per strategy and scope, the parallel sampler
against token-by-token decoding, the typing pass, a table and a plot.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .stats import format_table, mean, ratio, summarize

SCOPES = ("line", "statement", "block")
# "card": the model card's own settings (its strategy: parallel, or speculative for an AR
# model); "left_to_right": the same weights one token per call
STRATEGIES = ("card", "left_to_right")


@dataclass
class Measurement:
    """One request as the client saw it and as the server reported it."""

    strategy: str
    kind: str
    path: str
    latency_ms: float  # client wall clock, request sent → answer received
    server_ms: float | None
    steps: int | None
    tokens: int | None
    scope: str | None
    cached: bool
    suggested: bool
    exact_match: bool
    text: str = ""
    error: str | None = None  # the request failed (JSON-RPC error or timeout)
    rerank_steps: int | None = None  # of `steps`, the suffix reranking's
    drafted: int | None = None  # speculative: drafted tokens the target checked
    accepted: int | None = None  # speculative: drafted tokens it agreed with


def decoding_steps(m: Measurement) -> int:
    """A request's target calls that decoded its text (not the suffix reranking's)."""
    return max(0, (m.steps or 0) - (m.rerank_steps or 0))


def summarize_measurements(measurements: list[Measurement]) -> dict[str, Any]:
    """Per strategy and scope (and 'all'): latency percentiles, steps, tokens/s, exact match."""
    rows: dict[str, dict[str, Any]] = {}
    for strategy in STRATEGIES:
        mine = [m for m in measurements if m.strategy == strategy]
        if not mine:
            continue
        scopes = [s for s in SCOPES if any(m.scope == s for m in mine)]
        others = sorted({m.scope or "none" for m in mine} - set(SCOPES))
        rows[strategy] = {}
        for scope in [*scopes, *others, "all"]:
            group = [m for m in mine if scope == "all" or (m.scope or "none") == scope]
            seconds = sum((m.server_ms or m.latency_ms) for m in group) / 1000
            rows[strategy][scope] = {
                "requests": len(group),
                "latency_ms": summarize([m.latency_ms for m in group]),
                "server_ms": summarize([m.server_ms for m in group if m.server_ms is not None]),
                "steps": mean([m.steps for m in group if m.steps is not None]),
                "tokens": mean([m.tokens for m in group if m.tokens is not None]),
                "tokens_per_s": ratio(sum(m.tokens or 0 for m in group), seconds),
                # what a draft-and-check loop buys: generated tokens per target call of
                # the decoding (the suffix reranking's calls, counted in steps, apart)
                "tokens_per_call": ratio(
                    sum(m.tokens or 0 for m in group if decoding_steps(m)),
                    sum(decoding_steps(m) for m in group)),
                "rerank_steps": mean([m.rerank_steps for m in group
                                      if m.rerank_steps is not None]),
                "drafted": sum(m.drafted or 0 for m in group),
                "accepted": sum(m.accepted or 0 for m in group),
                "exact_match": mean([float(m.exact_match) for m in group]),
                "suggested": mean([float(m.suggested) for m in group]),
                "errors": sum(m.error is not None for m in group),
            }
    return rows


def compare(rows: dict[str, Any]) -> dict[str, Any]:
    """The card's strategy against token-by-token per scope: latency and steps ratios, quality delta."""
    if "card" not in rows or "left_to_right" not in rows:
        return {}
    out = {}
    for scope, fast in rows["card"].items():
        slow = rows["left_to_right"].get(scope)
        if slow is None:
            continue
        out[scope] = {
            "speedup_p50": ratio(slow["latency_ms"]["p50"], fast["latency_ms"]["p50"]),
            "speedup_mean": ratio(slow["latency_ms"]["mean"], fast["latency_ms"]["mean"]),
            "steps_ratio": ratio(slow["steps"], fast["steps"]),
            "exact_match_card": fast["exact_match"],
            "exact_match_left_to_right": slow["exact_match"],
        }
    return out


def summarize_typing(measurements: list[Measurement]) -> dict[str, Any] | None:
    typed = [m for m in measurements if m.strategy == "typing"]
    if not typed:
        return None
    return {
        "keystrokes": len(typed),
        "cached_share": mean([float(m.cached) for m in typed]),
        "latency_ms": summarize([m.latency_ms for m in typed]),
        "cached_latency_ms": summarize([m.latency_ms for m in typed if m.cached]),
    }


def render(report: dict[str, Any]) -> str:
    """The report as terminal tables."""
    lines = [
        f"model {report['model']} on {report['provider']} "
        f"({report['device_note']}); {report['requests']} requests per strategy, "
        f"seed {report['seed']}, {report['warmup']} warm-up excluded; "
        f"{report['files']} files from {report['source']}",
    ]
    headers = ["strategy/scope", "n", "p50 ms", "p95 ms", "p99 ms", "steps", "tok/call",
               "tok/s", "exact%", "shown%"]
    body = []
    for strategy, scopes in report["results"].items():
        for scope, row in scopes.items():
            body.append([
                f"{strategy}/{scope}", row["requests"], row["latency_ms"]["p50"],
                row["latency_ms"]["p95"], row["latency_ms"]["p99"], row["steps"],
                row.get("tokens_per_call"), row["tokens_per_s"],
                None if row["exact_match"] is None else 100 * row["exact_match"],
                None if row["suggested"] is None else 100 * row["suggested"],
            ])
    lines += ["", format_table(headers, body)]
    if report["comparison"]:
        headers = ["scope", "speed-up p50", "speed-up mean", "steps ratio",
                   "exact% card", "exact% token-by-token"]
        body = [[scope, c["speedup_p50"], c["speedup_mean"], c["steps_ratio"],
                 None if c["exact_match_card"] is None else 100 * c["exact_match_card"],
                 None if c["exact_match_left_to_right"] is None
                 else 100 * c["exact_match_left_to_right"]]
                for scope, c in report["comparison"].items()]
        lines += ["", f"card ({report.get('card_strategy') or 'its strategy'}) vs token-by-token "
                  "(same weights, same requests, interleaved):",
                  format_table(headers, body, digits=2)]
    typing = report.get("typing")
    if typing:
        lines += ["", f"typing: {typing['keystrokes']} keystrokes replayed through suggestions; "
                  f"{100 * (typing['cached_share'] or 0):.0f}% answered from the typing-through "
                  f"cache; keystroke p50 {typing['latency_ms']['p50'] or 0:.1f} ms, "
                  f"p95 {typing['latency_ms']['p95'] or 0:.1f} ms"]
    rss = report["rss_mb"]
    lines += ["", "server RSS MiB (after load / after warm-up / after run): " + "; ".join(
        f"{name} {' / '.join('-' if v is None else f'{v:.0f}' for v in values)}"
        for name, values in rss.items())]
    return "\n".join(lines)


def plot(measurements: list[Measurement], report: dict[str, Any], path: str | Path) -> None:
    """Latency distribution per scope and strategy; steps against exact match."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    labels, data = [], []
    for strategy in STRATEGIES:
        for scope in SCOPES:
            values = [m.latency_ms for m in measurements
                      if m.strategy == strategy and m.scope == scope]
            if values:
                labels.append(f"{scope}\n{'card' if strategy == 'card' else 'token×1'}")
                data.append(values)
    if data:
        left.boxplot(data, showfliers=True)
        left.set_xticks(range(1, len(labels) + 1), labels, fontsize=8)
    left.set_yscale("log")
    left.set_ylabel("end-to-end latency (ms)")
    left.set_title(f"latency per scope ({report['provider']})")
    left.grid(alpha=0.3, axis="y")
    for strategy, marker in zip(STRATEGIES, ("o", "s")):
        for scope in SCOPES:
            row = report["results"].get(strategy, {}).get(scope)
            if not row or row["steps"] is None:
                continue
            right.scatter(row["steps"], 100 * row["exact_match"], marker=marker, s=50,
                          label=f"{strategy.replace('_', '-')} {scope}")
            right.annotate(scope, (row["steps"], 100 * row["exact_match"]), fontsize=7,
                           xytext=(4, 4), textcoords="offset points")
    right.set_xscale("log")
    right.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    right.set_ylim(-3, 103)
    right.set_xlabel("denoiser calls per request (mean)")
    right.set_ylabel("exact match (%)")
    right.set_title("steps vs exact match")
    right.grid(alpha=0.3)
    if right.collections:
        right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
