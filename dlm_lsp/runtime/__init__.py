"""Model runtimes behind the sampler's `Denoiser` protocol."""

from .onnx import OnnxDenoiser

__all__ = ["OnnxDenoiser"]
