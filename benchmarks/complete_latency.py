"""Latency of the one-shot `dlm-lsp complete` command, per scope.

Samples cursor positions from real Python files (default: this Python's standard library) —
the end of a statement line (a "line" completion) and the first line of a block body (a
"block" completion, the cursor after the indentation) — runs `dlm-lsp complete --json` on each
as a user would, and prints p50/p95 of the completion latency the command reports (model work
only) and of the whole process (start, model load, completion), with denoise steps.

    python benchmarks/complete_latency.py -n 20 [--model DIR] [ROOT]
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from dlm_lsp.measure.stats import percentile


def sample_positions(root: Path, count: int, seed: int) -> list[tuple[str, str, int]]:
    """(scope, file text up to the cursor, cursor line) for `count` positions per scope."""
    rng = random.Random(seed)
    files = sorted(p for p in root.glob("*.py") if p.stat().st_size < 200_000)
    rng.shuffle(files)
    found: dict[str, list] = {"line": [], "block": []}
    for path in files:
        try:
            lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        except (OSError, UnicodeDecodeError):
            continue
        for i in rng.sample(range(1, max(2, len(lines) - 1)), min(40, max(0, len(lines) - 2))):
            line, previous = lines[i], lines[i - 1]
            if re.match(r"\s*(#|\"\"\"|'''|@)", line) or not line.strip():
                continue
            indent = line[: len(line) - len(line.lstrip())]
            if previous.rstrip().endswith(":") and len(found["block"]) < count:
                found["block"].append(("block", "".join(lines[:i]) + indent, i))
            elif re.search(r"[\w)\]]\s*$", line) and "=" in line and len(found["line"]) < count:
                cut = line.index("=") + 2  # the user typed up to "x = "
                found["line"].append(("line", "".join(lines[:i]) + line[:cut], i))
            if all(len(v) >= count for v in found.values()):
                return found["line"] + found["block"]
    return found["line"] + found["block"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default=sysconfig.get_paths()["stdlib"])
    parser.add_argument("-n", type=int, default=20, help="positions per scope")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default=None)
    args = parser.parse_args()
    rows: dict[str, list[dict]] = {"line": [], "block": []}
    with tempfile.TemporaryDirectory() as tmp:
        for k, (scope, text, line) in enumerate(sample_positions(Path(args.root), args.n, args.seed)):
            path = Path(tmp) / f"sample{k}.py"
            path.write_text(text, encoding="utf-8")
            col = len(text) - text.rfind("\n")
            command = [sys.executable, "-m", "dlm_lsp", "complete", str(path),
                       "--line", str(line + 1), "--col", str(col), "--json"]
            if args.model:
                command += ["--model", args.model]
            started = time.perf_counter()
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            wall = (time.perf_counter() - started) * 1000
            result = json.loads(done.stdout)
            result["wall_ms"] = wall
            rows[scope].append(result)
    print(f"{'asked':6} {'n':>3} {'planned':>16} {'p50 ms':>8} {'p95 ms':>8} {'steps':>6}"
          f" {'tokens':>6} {'empty':>6} {'process p50 ms':>15}")
    for scope, results in rows.items():
        if not results:
            continue
        latency = [r["latency_ms"] for r in results]
        planned = {}
        for r in results:
            planned[r["scope"]] = planned.get(r["scope"], 0) + 1
        print(f"{scope:6} {len(results):>3} {json.dumps(planned):>16} "
              f"{percentile(latency, 50):8.1f} {percentile(latency, 95):8.1f} "
              f"{sum(r['steps'] for r in results) / len(results):6.2f} "
              f"{sum(r['tokens'] for r in results) / len(results):6.1f} "
              f"{sum(not r['text'] for r in results):>6} "
              f"{percentile([r['wall_ms'] for r in results], 50):15.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
