"""GGUF output types r1ft can produce and verify (kept light: read by the settings validator).

These are the types llama.cpp's `convert_hf_to_gguf.py` writes itself (`--outtype f16|bf16|q8_0`), made
here with the same `gguf` library: f16 and bf16 are lossless from the bf16 merged model, q8_0 is about
half their size (1.9 GB for the 1.5B model). The smaller k-quants (Q4_K_M, ...) need llama.cpp's C
`llama-quantize`; the `gguf` package only reads them, so they are not offered.
"""

SUPPORTED_GGUF_TYPES = frozenset({"f16", "bf16", "q8_0"})
