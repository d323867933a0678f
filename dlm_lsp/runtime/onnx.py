"""The ONNX Runtime denoiser: encoder and decoder sessions behind the `Denoiser` protocol.

Provider choice: CUDA when the installed onnxruntime offers it and a session really gets it
(checked with `sess.get_providers()` after creation, since ORT silently falls back to the CPU
when CUDA libraries are missing), else CPU. Both paths use IO binding: on CUDA the context's
keys/values stay on the device between denoise steps and only the small per-position outputs
come back to the host; on the CPU binding simply avoids copying them per step.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..layout import Layout
from ..modelcard import GraphFiles, ModelCard, ModelError

log = logging.getLogger(__name__)

ENCODER_INPUTS = ("input_ids", "position_ids", "attention_mask")
ENCODER_OUTPUTS = ("keys", "values")
DECODER_INPUTS = ("canvas_ids", "canvas_position_ids", "keys", "values", "context_mask")
DECODER_OUTPUTS = ("pred_ids", "pred_prob", "canvas_prob")


def _import_ort() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:  # pragma: no cover - a broken install
        raise ModelError(
            "onnxruntime is not installed: pip install onnxruntime (or onnxruntime-gpu)"
        ) from exc
    return onnxruntime


def _cpu_threads(requested: int) -> int:
    if requested > 0:
        return requested
    try:
        import psutil

        physical = psutil.cpu_count(logical=False)
    except Exception:  # psutil missing or unable to tell
        physical = None
    return max(1, min(physical or os.cpu_count() or 1, 8))


def _cuda_driver_present() -> bool:
    """Whether an NVIDIA driver is loadable; without one a CUDA session cannot start, and
    trying costs a second of loading the fp16 graphs for nothing."""
    import ctypes

    try:
        ctypes.CDLL("libcuda.so.1")
        return True
    except OSError:
        return os.name == "nt"  # Windows: let ORT try


@dataclass
class ContextState:
    """Encoded context of one request: keys/values as OrtValues plus the context mask."""

    keys: Any
    values: Any
    context_mask: np.ndarray


class OnnxDenoiser:
    """Encoder + decoder sessions for one model directory."""

    returns_logits = False  # True when the decoder has the optional `logits` output

    def __init__(self, card: ModelCard, device: str = "auto", threads: int = 0) -> None:
        ort = _import_ort()
        self.card = card
        self._ort = ort
        available = ort.get_available_providers()
        want_cuda = (device in ("auto", "cuda") and "CUDAExecutionProvider" in available
                     and _cuda_driver_present())
        if device == "cuda" and not want_cuda:
            log.warning("device=cuda asked but onnxruntime offers %s; using the CPU", available)
        self.provider = "CPU"
        if want_cuda:
            try:
                self._open(card.graphs_for("cuda"), ["CUDAExecutionProvider"], threads)
                if all(s.get_providers()[0] == "CUDAExecutionProvider" for s in self._sessions()):
                    self.provider = "CUDA"
                else:
                    log.warning("CUDA provider unavailable at session creation; using the CPU")
            except ModelError:
                raise
            except Exception as exc:
                log.warning("CUDA session failed (%s); using the CPU", exc)
        if self.provider == "CPU":
            self._open(card.graphs_for("cpu"), ["CPUExecutionProvider"], threads)
        self._device = "cuda" if self.provider == "CUDA" else "cpu"
        self._check_signatures()
        self.returns_logits = "logits" in {o.name for o in self.decoder.get_outputs()}
        log.info(
            "model %s %s on %s (%s)", card.name, card.version, self.provider, self.graphs.encoder
        )

    def _sessions(self) -> tuple[Any, Any]:
        return self.encoder, self.decoder

    def _open(self, graphs: GraphFiles, providers: list[str], threads: int) -> None:
        ort = self._ort
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = _cpu_threads(threads)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # ORT's own warnings go to stderr only when severe
        if providers[0] == "CUDAExecutionProvider":
            providers = providers + ["CPUExecutionProvider"]
        self.graphs = graphs
        sessions = []
        for name in (graphs.encoder, graphs.decoder):
            path = self.card.path(name)
            try:
                sessions.append(ort.InferenceSession(str(path), options, providers=providers))
            except Exception as exc:
                raise ModelError(f"cannot load {path}: {exc}") from exc
        self.encoder, self.decoder = sessions

    def _check_signatures(self) -> None:
        names = {i.name for i in self.encoder.get_inputs()}
        outs = {o.name for o in self.encoder.get_outputs()}
        if not set(ENCODER_INPUTS) <= names or not set(ENCODER_OUTPUTS) <= outs:
            raise ModelError(f"{self.graphs.encoder}: inputs/outputs are not the encoder contract")
        names = {i.name for i in self.decoder.get_inputs()}
        outs = {o.name for o in self.decoder.get_outputs()}
        if not set(DECODER_INPUTS) <= names or not set(DECODER_OUTPUTS) <= outs:
            raise ModelError(f"{self.graphs.decoder}: inputs/outputs are not the decoder contract")

    def encode(self, layout: Layout) -> ContextState:
        """Run the encoder once; keys/values stay where the provider computed them."""
        ids = np.asarray([layout.context_ids], dtype=np.int64)
        positions = np.asarray([layout.context_positions], dtype=np.int64)
        mask = np.ones_like(ids)
        binding = self.encoder.io_binding()
        binding.bind_cpu_input("input_ids", ids)
        binding.bind_cpu_input("position_ids", positions)
        binding.bind_cpu_input("attention_mask", mask)
        binding.bind_output("keys", self._device)
        binding.bind_output("values", self._device)
        self.encoder.run_with_iobinding(binding)
        keys, values = binding.get_outputs()
        return ContextState(keys=keys, values=values, context_mask=mask)

    def denoise_step(
        self, state: object, canvas_ids: np.ndarray, canvas_positions: np.ndarray,
        need_logits: bool = False,
    ) -> tuple[np.ndarray, ...]:
        """One decoder call; only the per-position argmax and probabilities come back, and
        the full logits when asked (a few steps per request at most)."""
        assert isinstance(state, ContextState)
        binding = self.decoder.io_binding()
        binding.bind_cpu_input("canvas_ids", np.ascontiguousarray(canvas_ids, dtype=np.int64))
        binding.bind_cpu_input(
            "canvas_position_ids", np.ascontiguousarray(canvas_positions, dtype=np.int64)
        )
        binding.bind_ortvalue_input("keys", state.keys)
        binding.bind_ortvalue_input("values", state.values)
        binding.bind_cpu_input("context_mask", state.context_mask)
        names = DECODER_OUTPUTS + (("logits",) if need_logits else ())
        for name in names:
            binding.bind_output(name, "cpu")
        self.decoder.run_with_iobinding(binding)
        outputs = binding.copy_outputs_to_cpu()
        pred_ids, pred_prob, canvas_prob = outputs[:3]
        result = (pred_ids, pred_prob.astype(np.float32), canvas_prob.astype(np.float32))
        return result + (outputs[3],) if need_logits else result
