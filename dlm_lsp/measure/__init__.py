"""The measurement tools, apart from the server: `dlm-lsp bench` (latency of the real server
over stdio), `dlm-lsp eval` (infilling quality on a benchmark file, generated code run only in
`sandbox`), and the small statistics and table helpers they share."""
