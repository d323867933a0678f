"""Training and export of the dlm-lsp diffusion model (`python -m model_export --help`).

corpus.py → tokenizer.py → data.py + model.py → train.py → export.py; see README.md.
"""
