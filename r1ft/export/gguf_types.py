"""GGUF output types r1ft can produce and check (kept light: read by the settings validator).

f16, bf16 and q8_0 are the types llama.cpp's `convert_hf_to_gguf.py` writes itself (f16 and bf16 are
lossless from the bf16 merged model; q8_0 is about half their size, 1.9 GB for the 1.5B model). q4_k_m,
q5_k_m and q6_k are llama-quantize's k-quant mixes (1.1, 1.3 and 1.5 GB for the 1.5B model); q4_k_m is the
usual on-device choice.
"""

SUPPORTED_GGUF_TYPES = frozenset({"f16", "bf16", "q8_0", "q4_k_m", "q5_k_m", "q6_k"})
