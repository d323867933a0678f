"""`dlm-lsp triton-repo MODEL_DIR OUT`: a Triton Inference Server model repository.

    OUT/dlm_complete/config.pbtxt   Python backend, dynamic batching, instance groups
    OUT/dlm_complete/1/model.py     imports dlm_lsp.remote.triton_model.CompleteModel
    OUT/dlm_complete/1/model/       the model directory (card, tokenizer, graphs)
    OUT/dlm_card/config.pbtxt       serves model.json and tokenizer.json to clients
    OUT/dlm_card/1/model.py, model.json, tokenizer.json

The server's Python needs `pip install dlm-lsp` (numpy, onnxruntime-gpu, tokenizers); see
docs/TRITON.md for the stock container.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from ..modelcard import ModelError, load_card
from .triton_model import MODEL_SUBDIR
from .wire import CARD_FILES, CARD_MODEL, COMPLETE_MODEL

KINDS = {"auto": "KIND_AUTO", "gpu": "KIND_GPU", "cpu": "KIND_CPU"}


@dataclass(frozen=True, kw_only=True)
class RepoSettings:
    """How Triton should run the completion model."""

    max_batch_size: int = 16  # requests one execute() may fill together
    max_queue_delay_us: int = 2000  # how long a request may wait for others to join its batch
    instances: int = 1  # model instances (per GPU with kind gpu)
    kind: str = "auto"  # auto (GPU when Triton sees one), gpu or cpu
    device: str = "auto"  # the ONNX Runtime device inside a GPU instance
    threads: int = 0  # ONNX Runtime CPU threads per instance; 0 = one per physical core
    group_by_canvas: str = "auto"  # one lockstep batch per canvas length: auto (CPU), true, false


def complete_config(s: RepoSettings) -> str:
    """config.pbtxt of the completion model (the wire format is dlm_lsp.remote.wire)."""
    def tensor(name: str, kind: str, dims: str, ragged: bool = False) -> str:
        extra = " allow_ragged_batch: true" if ragged else ""
        return f'  {{ name: "{name}" data_type: {kind} dims: [ {dims} ]{extra} }}'

    inputs = ",\n".join([
        tensor("context_ids", "TYPE_INT64", "-1", True),
        tensor("context_positions", "TYPE_INT64", "-1", True),
        tensor("canvas_positions", "TYPE_INT64", "-1", True),
        tensor("canvas_lengths", "TYPE_INT64", "-1", True),
        tensor("sampler", "TYPE_STRING", "1"),
    ])
    outputs = ",\n".join([
        tensor("canvas", "TYPE_INT64", "-1"),
        tensor("steps", "TYPE_INT32", "1"),
        tensor("committed_per_step", "TYPE_INT32", "-1"),
    ])
    return f"""name: "{COMPLETE_MODEL}"
backend: "python"
max_batch_size: {s.max_batch_size}
input [
{inputs}
]
output [
{outputs}
]
dynamic_batching {{
  max_queue_delay_microseconds: {s.max_queue_delay_us}
}}
instance_group [ {{ count: {s.instances} kind: {KINDS[s.kind]} }} ]
parameters {{ key: "device" value: {{ string_value: "{s.device}" }} }}
parameters {{ key: "threads" value: {{ string_value: "{s.threads}" }} }}
parameters {{ key: "group_by_canvas" value: {{ string_value: "{s.group_by_canvas}" }} }}
"""


CARD_CONFIG = f"""name: "{CARD_MODEL}"
backend: "python"
max_batch_size: 0
input [ {{ name: "name" data_type: TYPE_STRING dims: [ 1 ] }} ]
output [ {{ name: "content" data_type: TYPE_STRING dims: [ 1 ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
"""

MODEL_PY = '''"""Written by `dlm-lsp triton-repo`; the model lives in the dlm-lsp package."""

from dlm_lsp.remote.triton_model import {cls} as TritonPythonModel  # noqa: F401
'''


def write_repository(model_dir: str | Path, out: str | Path,
                     settings: RepoSettings = RepoSettings()) -> Path:
    """Write the repository for `model_dir` into `out` (replacing what dlm-lsp wrote there)."""
    card = load_card(model_dir)
    if settings.kind not in KINDS:
        raise ValueError(f"kind {settings.kind!r}: expected one of {', '.join(KINDS)}")
    out = Path(out)
    complete, card_model = out / COMPLETE_MODEL, out / CARD_MODEL
    for folder in (complete, card_model):
        if folder.exists():
            shutil.rmtree(folder)
    model = complete / "1" / MODEL_SUBDIR
    model.mkdir(parents=True)
    files = {"model.json", card.tokenizer, *(card.weights and [card.weights] or [])}
    files |= {f for g in card.graphs.values() for f in (g.encoder, g.decoder)}
    for name in sorted(files):
        shutil.copy2(card.path(name), model / name)
        data = card.path(name).with_name(name + ".data")  # ONNX external data, when separate
        if data.is_file():
            shutil.copy2(data, model / data.name)
    (complete / "config.pbtxt").write_text(complete_config(settings))
    (complete / "1" / "model.py").write_text(MODEL_PY.format(cls="CompleteModel"))
    (card_model / "1").mkdir(parents=True)
    (card_model / "config.pbtxt").write_text(CARD_CONFIG)
    (card_model / "1" / "model.py").write_text(MODEL_PY.format(cls="CardModel"))
    for name, source in zip(CARD_FILES, ("model.json", card.tokenizer)):
        shutil.copy2(card.path(source), card_model / "1" / name)
    return out


def cmd_triton_repo(args: argparse.Namespace) -> int:
    """Write the repository and say how to serve it."""
    settings = RepoSettings(max_batch_size=args.max_batch_size,
                            max_queue_delay_us=args.max_queue_delay_us,
                            instances=args.instances, kind=args.kind, threads=args.threads,
                            group_by_canvas=args.group_by_canvas)
    try:
        out = write_repository(args.model_dir, args.out, settings)
    except ModelError as exc:
        raise SystemExit(f"dlm-lsp: {exc}") from None
    print(f"wrote {out}/{{{COMPLETE_MODEL},{CARD_MODEL}}}; serve it with\n"
          f"  tritonserver --model-repository {out.resolve()}\n"
          "and point editors at it: dlm-lsp --remote grpc://HOST:8001", file=sys.stderr)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The `triton-repo` subcommand."""
    p = sub.add_parser("triton-repo", help="write a Triton Inference Server model repository")
    p.add_argument("model_dir", metavar="MODEL_DIR", help="a model directory")
    p.add_argument("out", metavar="OUT", help="the repository folder to write")
    defaults = RepoSettings()
    p.add_argument("--max-batch-size", type=int, default=defaults.max_batch_size)
    p.add_argument("--max-queue-delay-us", type=int, default=defaults.max_queue_delay_us)
    p.add_argument("--instances", type=int, default=defaults.instances,
                   help="model instances (per GPU with --kind gpu)")
    p.add_argument("--kind", choices=tuple(KINDS), default=defaults.kind)
    p.add_argument("--threads", type=int, default=defaults.threads,
                   help="ONNX Runtime CPU threads per instance (0: one per physical core)")
    p.add_argument("--group-by-canvas", choices=("auto", "true", "false"),
                   default=defaults.group_by_canvas,
                   help="one lockstep batch per canvas length (auto: on CPU instances)")
    p.set_defaults(func=cmd_triton_repo)
