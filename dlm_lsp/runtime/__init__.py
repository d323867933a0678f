"""Model runtimes behind the sampler's `DenoiserRuntime` protocol."""

from .onnx import OnnxDenoiser, bound_malloc, release_freed

__all__ = ["OnnxDenoiser", "bound_malloc", "release_freed"]
