"""python -m model_export: corpus → tokenizer → train → export → verify (→ heldout).

Each step reads what the previous one wrote; see model_export/README.md for the full recipe.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def cmd_corpus(args) -> int:
    from .corpus import build_corpus, default_roots

    roots = [Path(r) for r in args.roots]
    if not roots or args.with_defaults:
        roots = default_roots() + roots
    print(f"corpus from {len(roots)} roots: " + ", ".join(map(str, roots)))
    heldout = Path(args.exclude_heldout) if args.exclude_heldout else None
    stats = build_corpus(roots, Path(args.out), val_permille=args.val_permille,
                         exclude_heldout=heldout, max_project_bytes=args.max_project_bytes)
    print(json.dumps(stats.to_json(), indent=2))
    return 0


def cmd_tokenizer(args) -> int:
    from .corpus import read_corpus
    from .tokenizer import round_trip_report, save_tokenizer, train_tokenizer

    corpus = Path(args.corpus)
    total = sum(json.loads((corpus / "stats.json").read_text())["bytes"].values())
    share = min(1.0, args.sample_bytes / max(total, 1))
    keep = int(share * 1000)

    def sample():
        for record in read_corpus(corpus / "train.jsonl.zst"):
            if int(record["sha256"][:8], 16) % 1000 < keep:  # a spread-out, stable sample
                yield record["text"]

    print(f"training BPE (vocab {args.vocab_size}) on ~{share:.0%} of {total / 1e6:.0f} MB")
    tokenizer = train_tokenizer(sample(), vocab_size=args.vocab_size)
    val = [r["text"] for r in read_corpus(corpus / "val.jsonl.zst")]
    report = round_trip_report(tokenizer, val)
    report["vocab_size"] = tokenizer.get_vocab_size()
    report["trained_on_bytes_share"] = share
    save_tokenizer(tokenizer, Path(args.out), report)
    print(json.dumps(report, indent=2))
    return 0 if report["round_trip_exact"] == report["files"] else 1


def cmd_train(args) -> int:
    from .train import main_from_args

    return main_from_args(args)


def cmd_validate(args) -> int:
    from .train import validate_from_args

    return validate_from_args(args)


def cmd_export(args) -> int:
    from .export import main_from_args

    return main_from_args(args)


def cmd_import(args) -> int:
    from .gguf_import import main_from_args

    return main_from_args(args)


def cmd_fuse(args) -> int:
    from .fused import main_from_args

    return main_from_args(args)


def cmd_train_drafter(args) -> int:
    from .train_drafter import main_from_args

    return main_from_args(args)


def cmd_export_drafter(args) -> int:
    from .drafter_export import main_from_args

    return main_from_args(args)


def cmd_verify(args) -> int:
    from .export import verify_from_args

    return verify_from_args(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m model_export",
        description="Build the dlm-lsp diffusion model: corpus → tokenizer → train → export → "
                    "verify. Each step writes files the next one reads.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="STEP")

    p = sub.add_parser("corpus", help="collect, filter, de-duplicate and split source files",
                       description="Walk source roots (default: this Python's stdlib and "
                       "installed packages), drop tiny/huge/minified/generated/vendored files "
                       "and duplicates, split train/val by content hash, write "
                       "OUT/{train,val}.jsonl.zst and OUT/stats.json (counts, bytes, licences).")
    p.add_argument("roots", nargs="*", help="directories to read (default: stdlib + site-packages)")
    p.add_argument("--out", default="runs/corpus", help="output directory")
    p.add_argument("--val-permille", type=int, default=20, help="validation share, per mille")
    p.add_argument("--with-defaults", action="store_true",
                   help="read the default roots (stdlib + site-packages) as well as ROOTS")
    p.add_argument("--exclude-heldout", default=None, metavar="TASKS",
                   help="leave out the files this held-out set (e.g. benchmarks/heldout.jsonl.gz) "
                   "was cut from: same package-relative path or near-identical content")
    p.add_argument("--max-project-bytes", type=int, default=None,
                   help="keep at most about this many bytes of one project (package, crate, ...)")
    p.set_defaults(func=cmd_corpus)

    p = sub.add_parser("tokenizer", help="train the byte-level BPE tokenizer on the corpus",
                       description="Train a byte-level BPE (special tokens <|pad|> <|mask|> "
                       "<|endofspan|> <|file|> at ids 0..3) on a stable sample of the training "
                       "split, then check decode(encode(x)) == x on every validation file.")
    p.add_argument("--corpus", default="runs/corpus")
    p.add_argument("--out", default="runs/tokenizer.json")
    p.add_argument("--vocab-size", type=int, default=8192)
    p.add_argument("--sample-bytes", type=int, default=30_000_000,
                   help="about how many corpus bytes to train on")
    p.set_defaults(func=cmd_tokenizer)

    from .gguf_import import add_import_arguments

    p = sub.add_parser("import", help="import a pretrained GGUF model (LLaMA) as a checkpoint",
                       description="Read a GGUF file with ggml's `gguf` package, map it onto the "
                       "denoiser (grouped-query attention, RoPE rows back in rotate-half order, "
                       "tied head) as the AR model it is (causal canvas, shifted predictions), "
                       "and write the checkpoint and the tokenizer rebuilt from the file.")
    add_import_arguments(p)
    p.set_defaults(func=cmd_import)

    from .train import add_train_arguments

    p = sub.add_parser("train", help="train the denoiser (CPU, one GPU, or torchrun DDP)",
                       description="Masked-diffusion training on infilling examples shaped like "
                       "the server's requests. Writes checkpoints, log.jsonl and loss.png to "
                       "--out; resumes from --out/last.pt when it exists. Under torchrun it "
                       "runs DDP across the launched processes.")
    add_train_arguments(p)
    p.set_defaults(func=cmd_train)

    from .train import add_validate_arguments

    p = sub.add_parser("validate", help="score checkpoints on one set of validation examples",
                       description="Masked CE and content_ce (real code tokens only, at t=0.15 "
                       "and t=1, and at t=0.15 without the context) of each checkpoint on the "
                       "same validation examples and masks: compares runs fairly.")
    add_validate_arguments(p)
    p.set_defaults(func=cmd_validate)

    from .train_drafter import add_train_drafter_arguments

    p = sub.add_parser("train-drafter", help="train the block-diffusion drafter (DFlash) on "
                       "the frozen imported target",
                       description="Train a small drafter that reads the frozen target's "
                       "hidden states and guesses a block of tokens in one pass; the target "
                       "checks each block in one causal call. Checkpoints --out/last.pt every "
                       "--checkpoint-minutes and on SIGTERM (--resume goes on from it); "
                       "validation tau (tokens per target call: drafter, prompt lookup, both) "
                       "to --out/curve.jsonl at the start and at every checkpoint.")
    add_train_drafter_arguments(p)
    p.set_defaults(func=cmd_train_drafter)

    from .export import add_export_arguments, add_verify_arguments

    p = sub.add_parser("export", help="write a model directory (card, tokenizer, ONNX graphs)",
                       description="Export encoder/decoder ONNX graphs (fp32, fp16, int8), check "
                       "parity with PyTorch, time fp32 vs int8 on CPU, keep the faster CPU "
                       "variant and write model.json.")
    add_export_arguments(p)
    p.set_defaults(func=cmd_export)

    from .fused import add_fuse_arguments

    p = sub.add_parser("fuse", help="rebuild a directory's q4 graphs in ONNX Runtime's fused shape",
                       description="Rebuild the exported q4 encoder/decoder with ONNX Runtime's "
                       "fused LLaMA kernels (GroupQueryAttention, RotaryEmbedding, "
                       "SkipSimplifiedLayerNormalization) over the same tensors of the same "
                       "weights file (unchanged); --ship makes them the card's CPU graphs.")
    add_fuse_arguments(p)
    p.set_defaults(func=cmd_fuse)

    from .drafter_export import add_export_drafter_arguments

    p = sub.add_parser("export-drafter", help="write a trained drafter's ONNX graph and the "
                       "card's drafter block into a model directory",
                       description="Export a train-drafter checkpoint as drafter.onnx beside "
                       "the target's fused graphs: the drafter's own weights (float16) in the "
                       "graph, the target's embedding, final norm and head read from the "
                       "directory's weights file (unchanged); the card's drafter block says "
                       "what it is (layers, block, params, training tokens and minutes, the "
                       "checkpoint's validation tau when its curve has it).")
    add_export_drafter_arguments(p)
    p.set_defaults(func=cmd_export_drafter)

    p = sub.add_parser("verify", help="check a model directory: card, parity, timings",
                       description="Load model.json with the runtime's loader, run both graphs "
                       "with onnxruntime and compare with the PyTorch checkpoint when given.")
    add_verify_arguments(p)
    p.set_defaults(func=cmd_verify)

    try:  # written separately; the CLI works without it
        from . import heldout
    except ImportError:
        heldout = None
    if heldout is not None and hasattr(heldout, "add_parser"):
        heldout.add_parser(sub)
    else:
        p = sub.add_parser("heldout", help="write a held-out infilling evaluation set "
                           "(not available in this checkout)")
        p.set_defaults(func=lambda args: (print("model_export/heldout.py is missing",
                                                file=sys.stderr), 2)[1])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
