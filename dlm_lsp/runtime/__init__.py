"""Model runtimes behind the sampler's `DenoiserRuntime` protocol."""

from .onnx import OnnxDenoiser

__all__ = ["OnnxDenoiser"]
