"""Model runtimes behind the sampler's `DenoiserRuntime` protocol."""

from .onnx import OnnxDenoiser, bound_malloc

__all__ = ["OnnxDenoiser", "bound_malloc"]
