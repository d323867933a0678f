"""The Triton Python-backend models that `dlm-lsp triton-repo` writes (their `model.py` only
imports these classes): `dlm_complete` runs whole completions, a dynamic batch at a time, and
`dlm_card` serves the model card and tokenizer to clients.

Triton hands `execute` every request of the batch it formed; the batched sampler fills them in
lockstep (one encoder call, then one decoder call per step over the canvases still open), each
request answered with its own canvas. The pure part, `fill_requests`, is tested without Triton.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from ..layout import anchored
from ..modelcard import ModelCard, load_card
from ..sampler import denoise_batch
from .wire import (CARD_FILES, REQUEST_INPUTS, WireError, check_request, parse_request,
                   response_tensors)

log = logging.getLogger(__name__)

MODEL_SUBDIR = "model"  # the model directory inside a dlm_complete version folder


def fill_requests(denoiser: Any, card: ModelCard, requests: Sequence[dict[str, Any]],
                  cancelled: Sequence[Callable[[], bool]] | None = None, *,
                  group_by_canvas: bool = False) -> list[dict[str, Any] | Exception]:
    """Answer a batch of requests (their input tensors by name): output tensors by name, or
    the exception that refuses one request (a WireError, or a cancellation).

    `group_by_canvas`: one lockstep batch per canvas length instead of one for all, so that a
    line completion is not padded to a block's canvas (on a CPU padding costs its full price;
    on a GPU one call for all is cheaper than several).
    """
    answers: list[dict[str, Any] | Exception] = [WireError("not run")] * len(requests)
    rows, layouts, settings, checks = [], [], [], []
    for index, tensors in enumerate(requests):
        try:
            layout, options = parse_request(tensors)
            options = check_request(layout, options, vocab_size=card.vocab_size,
                                    max_context=card.max_context, max_position=card.max_position)
            if card.shift:  # the wire carries positions; the anchors follow from them
                try:
                    layout = anchored(layout)
                except ValueError as exc:
                    raise WireError(str(exc)) from None
        except WireError as exc:
            answers[index] = exc
            continue
        rows.append(index)
        layouts.append(layout)
        settings.append(options)
        checks.append(cancelled[index] if cancelled else (lambda: False))
    groups: dict[int, list[int]] = {}
    for k, layout in enumerate(layouts):
        groups.setdefault(sum(layout.canvas_lengths) if group_by_canvas else 0, []).append(k)
    for members in groups.values():
        results = denoise_batch(denoiser, [layouts[k] for k in members], card.special_tokens,
                                [settings[k] for k in members], [checks[k] for k in members])
        for k, result in zip(members, results):
            answers[rows[k]] = (
                InterruptedError("cancelled by the client") if result is None else
                response_tensors(layouts[k], result, card.special_tokens.end_of_span))
    return answers


def _throttled(check: Callable[[], bool], every_s: float = 0.05) -> Callable[[], bool]:
    """`check`, asked at most every `every_s` (a cancellation check is a round trip to the
    server process; the sampler asks before every step)."""
    last, seen = [0.0], [False]

    def throttled() -> bool:
        now = time.monotonic()
        if not seen[0] and now - last[0] >= every_s:
            last[0], seen[0] = now, bool(check())
        return seen[0]

    return throttled


def _parameters(config: dict[str, Any]) -> dict[str, str]:
    return {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}


class CompleteModel:
    """`dlm_complete`: a whole completion (encode + denoise loop) per request."""

    cancel_check_s = 0.05  # how often a request asks whether its client cancelled it

    def initialize(self, args: dict[str, str]) -> None:
        import triton_python_backend_utils as pb_utils

        from ..runtime import OnnxDenoiser

        self.pb = pb_utils
        params = _parameters(json.loads(args["model_config"]))
        kind = args.get("model_instance_kind", "CPU")
        device = "cpu" if kind == "CPU" else params.get("device", "auto")
        if kind == "GPU":  # each instance is its own process: show it only its GPU
            os.environ["CUDA_VISIBLE_DEVICES"] = str(args.get("model_instance_device_id", "0"))
        directory = Path(args["model_repository"]) / args["model_version"] / MODEL_SUBDIR
        self.card = load_card(directory)
        self.denoiser = OnnxDenoiser(self.card, device, int(params.get("threads", "0") or 0))
        grouping = params.get("group_by_canvas", "auto")  # auto: on the CPU only
        self.group_by_canvas = (grouping == "true" or grouping == "auto"
                                and self.denoiser.provider == "CPU")
        pb_utils.Logger.log_info(f"dlm_complete: {self.card.name} {self.card.version} on "
                                 f"{self.denoiser.provider} ({args.get('model_instance_name')})")

    def execute(self, requests: list[Any]) -> list[Any]:
        pb = self.pb
        tensors = []
        for request in requests:
            named = {}
            for name in REQUEST_INPUTS + ("sampler",):
                tensor = pb.get_input_tensor_by_name(request, name)
                if tensor is not None:
                    named[name] = tensor.as_numpy()
            tensors.append(named)
        checks = [_throttled(request.is_cancelled, self.cancel_check_s)
                  if hasattr(request, "is_cancelled")
                  else (lambda: False) for request in requests]
        try:
            answers = fill_requests(self.denoiser, self.card, tensors, checks,
                                    group_by_canvas=self.group_by_canvas)
        except Exception as exc:  # a runtime failure fails this batch, not the server
            pb.Logger.log_error(f"dlm_complete: {type(exc).__name__}: {exc}")
            answers = [exc] * len(requests)
        dropped = sum(isinstance(answer, InterruptedError) for answer in answers)
        if dropped:
            pb.Logger.log_info(f"dlm_complete: {dropped} of {len(requests)} requests cancelled "
                               "by their clients, dropped from the batch")
        responses = []
        for answer in answers:
            if isinstance(answer, Exception):
                code = (pb.TritonError.CANCELLED if isinstance(answer, InterruptedError)
                        and hasattr(pb.TritonError, "CANCELLED") else None)
                error = (pb.TritonError(str(answer), code) if code is not None
                         else pb.TritonError(f"{type(answer).__name__}: {answer}"))
                responses.append(pb.InferenceResponse(output_tensors=[], error=error))
            else:
                responses.append(pb.InferenceResponse(
                    output_tensors=[pb.Tensor(name, value) for name, value in answer.items()]))
        return responses


class CardModel:
    """`dlm_card`: model.json or tokenizer.json by name, so a client needs only the URL."""

    def initialize(self, args: dict[str, str]) -> None:
        import triton_python_backend_utils as pb_utils

        self.pb = pb_utils
        folder = Path(args["model_repository"]) / args["model_version"]
        self.files = {name: (folder / name).read_bytes() for name in CARD_FILES}

    def execute(self, requests: list[Any]) -> list[Any]:
        import numpy as np

        pb, responses = self.pb, []
        for request in requests:
            tensor = pb.get_input_tensor_by_name(request, "name")
            raw = tensor.as_numpy().reshape(-1)[0] if tensor is not None else b""
            name = raw.decode() if isinstance(raw, bytes) else str(raw)
            if name not in self.files:
                responses.append(pb.InferenceResponse(output_tensors=[], error=pb.TritonError(
                    f"unknown file {name!r}; ask for one of {', '.join(CARD_FILES)}")))
                continue
            content = np.array([self.files[name]], dtype=np.object_)
            responses.append(pb.InferenceResponse(output_tensors=[pb.Tensor("content", content)]))
        return responses
