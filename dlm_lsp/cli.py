"""The `dlm-lsp` command: the server (stdio or TCP) and one-shot commands for people and scripts.

    dlm-lsp                          serve LSP on stdio (what editors start)
    dlm-lsp --tcp [HOST:]PORT        serve LSP on TCP (loopback unless a host is given)
    dlm-lsp --remote grpc://HOST:PORT  completions from a Triton server (docs/TRITON.md)
    dlm-lsp triton-repo MODEL_DIR OUT  write the Triton model repository for a model
    dlm-lsp complete FILE --line L --col C
    dlm-lsp fill FILE [--write]
    dlm-lsp doctor
    dlm-lsp bench ... / dlm-lsp eval FILE.jsonl ...
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Sequence

from . import __version__
from .settings import LOG_LEVELS, STRATEGIES, Settings

log = logging.getLogger("dlm_lsp")

# subcommands defined in their own modules: name → module exposing add_parser(subparsers)
_PLUGIN_COMMANDS = {"bench": "dlm_lsp.measure.bench", "eval": "dlm_lsp.measure.evaluate",
                    "triton-repo": "dlm_lsp.remote.triton_repo"}


def _setup_logging(level: str) -> None:
    # stderr only: when serving on stdio, stdout is the protocol channel
    logging.basicConfig(
        stream=sys.stderr,
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _parse_tcp(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected [HOST:]PORT, got {value!r}") from None
    if not 0 < number < 65536:
        raise argparse.ArgumentTypeError(f"port {number} out of range")
    return host or "127.0.0.1", number


def _parse_remote(value: str) -> str:
    from .remote.wire import parse_remote_url

    try:
        parse_remote_url(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def _common(parser: argparse.ArgumentParser, top: bool = False) -> None:
    # Subcommands suppress their defaults so that `dlm-lsp --model X complete ...` keeps X.
    def default(value):
        return value if top else argparse.SUPPRESS

    parser.add_argument("--model", metavar="DIR", default=default(None),
                        help="model directory (default: the model shipped in the package)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default=default("auto"),
                        help="where the denoiser runs (default: CUDA when available)")
    parser.add_argument("--log-level", choices=LOG_LEVELS, default=default("warning"),
                        help="stderr log level")


def _settings(args: argparse.Namespace, **overrides) -> Settings:
    return Settings(model_dir=args.model, device=args.device, log_level=args.log_level,
                    remote=getattr(args, "remote", None), **overrides)


def _engine(args: argparse.Namespace, **overrides):
    from .engine import Engine

    settings = _settings(args, **overrides)
    if settings.remote:  # one-shot commands ask the server, with no fallback
        from .modelcard import ModelError
        from .remote.failover import remote_engine

        try:
            return remote_engine(settings)
        except ModelError as exc:
            raise SystemExit(f"dlm-lsp: {exc}") from None
    return Engine(settings=settings)


def _read(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SystemExit(f"dlm-lsp: cannot read {path}: {exc}") from None


def _sampler_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=None, help="max denoise steps")
    parser.add_argument("--threshold", type=float, default=None, help="commit threshold")
    parser.add_argument("--strategy", choices=STRATEGIES, default=None,
                        help="default: the model card's")


def _sampler_overrides(args: argparse.Namespace) -> dict:
    return {"max_steps": args.steps, "threshold": args.threshold, "strategy": args.strategy}


def cmd_complete(args: argparse.Namespace) -> int:
    """Print the completion at a 1-based line and column of FILE."""
    from .languages import language_id_for_path

    text = _read(args.file)
    lines = text.splitlines(keepends=True)
    if args.line < 1 or args.line > max(1, len(lines)):
        raise SystemExit(f"dlm-lsp: line {args.line} outside 1..{len(lines)}")
    offset = sum(len(line) for line in lines[: args.line - 1]) + args.col - 1
    line_text = lines[args.line - 1].rstrip("\r\n") if lines else ""
    if args.col < 1 or args.col - 1 > len(line_text):
        raise SystemExit(f"dlm-lsp: column {args.col} outside 1..{len(line_text) + 1}")
    engine = _engine(args, **_sampler_overrides(args))
    language = args.language or language_id_for_path(args.file)
    result = engine.complete_text(text, offset, language)
    completion = result.completion
    if args.json:
        print(json.dumps({
            "text": completion.text if completion else "",
            "start": completion.start if completion else offset,
            "end": completion.end if completion else offset,
            "scope": result.plan.holes[0].scope if result.plan and result.plan.holes else None,
            "canvas": result.plan.holes[0].canvas_length if result.plan and result.plan.holes else None,
            "steps": result.steps,
            "tokens": result.tokens,
            "latency_ms": round(result.elapsed_s * 1000, 2),
            "provider": engine.provider,
        }))
    else:
        sys.stdout.write(completion.text if completion else "")
        sys.stdout.write("\n")
    return 0


def cmd_fill(args: argparse.Namespace) -> int:
    """Fill every hole marker of FILE; print the result or write it back."""
    from .languages import language_id_for_path, syntax_for

    text = _read(args.file)
    engine = _engine(args, hole_marker=args.marker, **_sampler_overrides(args))
    language = args.language or language_id_for_path(args.file)

    class _Snap:  # a file is a one-version document
        uri, version = Path(args.file).resolve().as_uri(), 0

    snap = _Snap()
    snap.text, snap.language_id, snap.syntax, snap.tree = text, language, syntax_for(language), None
    if args.marker not in text:
        raise SystemExit(f"dlm-lsp: no {args.marker} marker in {args.file}")
    result = engine.fill_markers(snap, args.marker)
    out, last = [], 0
    for start, end, new_text in result.edits:
        out += [text[last:start], new_text]
        last = end
    out.append(text[last:])
    filled = "".join(out)
    if args.write:
        Path(args.file).write_text(filled, encoding="utf-8")
        print(f"{args.file}: {len(result.edits)} holes filled in {result.steps} steps, "
              f"{result.elapsed_s * 1000:.0f} ms", file=sys.stderr)
    else:
        sys.stdout.write(filled)
    return 0


DOCTOR_SAMPLE = "def mean(xs):\n    total = 0\n    for x in xs:\n        "


def cmd_doctor(args: argparse.Namespace) -> int:
    """Say which model, which providers, and how fast one completion is here."""
    import onnxruntime

    from .modelcard import ModelError

    print(f"dlm-lsp {__version__}, python {sys.version.split()[0]}")
    print(f"onnxruntime {onnxruntime.__version__}: {', '.join(onnxruntime.get_available_providers())}")
    try:
        started = time.perf_counter()
        engine = _engine(args)
        load_ms = (time.perf_counter() - started) * 1000
    except ModelError as exc:
        print(f"model: ERROR {exc}")
        return 1
    card = engine.card
    print(f"model: {card.name} {card.version} from {card.directory}")
    arch = card.extra.get("architecture", {})
    params = arch.get("params") or arch.get("parameters")
    print(f"  layers {card.n_layers}, heads {card.n_heads}x{card.head_dim}, vocab {card.vocab_size}"
          + (f", {params:,} parameters" if params else ""))
    training = card.extra.get("training", {})
    if training:
        print(f"  trained: {json.dumps(training)[:300]}")
    print(f"provider in use: {engine.provider} (graphs {engine.denoiser.graphs.encoder}, "
          f"{engine.denoiser.graphs.decoder}); loaded in {load_ms:.0f} ms")
    engine.complete_text(DOCTOR_SAMPLE, len(DOCTOR_SAMPLE), "python")  # warm-up
    times, result = [], None
    for _ in range(5):
        result = engine.complete_text(DOCTOR_SAMPLE, len(DOCTOR_SAMPLE), "python")
        times.append(result.elapsed_s * 1000)
    times.sort()
    text = result.completion.text if result and result.completion else ""
    print(f"one block completion: {times[len(times) // 2]:.0f} ms median of 5, "
          f"{result.steps} steps, {result.tokens} tokens")
    print("completion:\n" + "\n".join("  | " + line for line in text.splitlines()))
    return 0


def serve(args: argparse.Namespace) -> int:
    """Serve LSP on stdio or TCP."""
    from .server import create_server

    server = create_server(_settings(args))
    if args.tcp:
        host, port = args.tcp
        log.warning("serving LSP on tcp://%s:%d%s", host, port,
                    "" if host in ("127.0.0.1", "localhost", "::1") else
                    " — NOT loopback: anyone who can reach this address can read your buffers")
        server.start_tcp(host, port)
    else:
        server.start_io()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dlm-lsp",
        description="Multi-line code completion from a masked-diffusion language model. "
        "With no command: serve LSP on stdio.",
    )
    parser.add_argument("--version", action="version", version=f"dlm-lsp {__version__}")
    parser.add_argument("--tcp", metavar="[HOST:]PORT", type=_parse_tcp,
                        help="serve on TCP instead of stdio (host defaults to 127.0.0.1)")
    parser.add_argument("--stdio", action="store_true", help="serve on stdio (the default)")
    parser.add_argument("--remote", metavar="grpc://HOST:PORT", type=_parse_remote,
                        help="denoise on this Triton server (dlm-lsp triton-repo); plan, cache "
                        "and postprocess here; the local model answers while it cannot")
    _common(parser, top=True)
    sub = parser.add_subparsers(dest="command")

    p = sub.add_parser("complete", help="print the completion at a position of a file")
    p.add_argument("file")
    p.add_argument("--line", type=int, required=True, help="1-based line")
    p.add_argument("--col", type=int, required=True, help="1-based column (characters)")
    p.add_argument("--language", help="language id (default: from the file extension)")
    p.add_argument("--json", action="store_true", help="print a JSON object with timings")
    _sampler_options(p)
    _common(p)
    p.set_defaults(func=cmd_complete)

    p = sub.add_parser("fill", help="fill every hole marker in a file")
    p.add_argument("file")
    p.add_argument("--marker", default="<|hole|>", help="the hole marker (default <|hole|>)")
    p.add_argument("--write", action="store_true", help="write the result back to FILE")
    p.add_argument("--language", help="language id (default: from the file extension)")
    _sampler_options(p)
    _common(p)
    p.set_defaults(func=cmd_fill)

    p = sub.add_parser("doctor", help="which model, which providers, how fast here")
    _common(p)
    p.set_defaults(func=cmd_doctor)

    for name, module in _PLUGIN_COMMANDS.items():
        try:
            importlib.import_module(module).add_parser(sub)
        except ImportError as exc:  # an optional command whose dependency is missing
            stub = sub.add_parser(name, help=f"(unavailable: {exc})")
            stub.set_defaults(func=lambda args, exc=exc: sys.exit(f"dlm-lsp: {exc}"))
            continue
    for action in sub.choices.values():
        if not any(a.dest == "model" for a in action._actions):
            _common(action)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.log_level)
    func = getattr(args, "func", None)
    if func is None:
        return serve(args)
    return int(func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
