"""GGUF output types r1ft can produce and verify (kept light: read by the settings validator)."""

SUPPORTED_GGUF_TYPES = frozenset({"f16", "bf16", "q8_0"})
