"""dlm-lsp: multi-line code completion from a masked-diffusion language model."""

__version__ = "0.1.0"
