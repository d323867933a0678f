"""Completions served by NVIDIA Triton Inference Server (see docs/TRITON.md).

`wire` is the request/response format both ends share, `triton_model` the Python-backend model
that runs a whole completion on the server, `triton_repo` the `dlm-lsp triton-repo` command
that writes its model repository, `client` what a dlm-lsp sends it, and `failover` the switch
to the local model when the server cannot answer.
"""
