"""Secrets never leave the process: their values (and anything shaped like a credential) are masked in
every message, log line and report."""

from __future__ import annotations

import re
from collections.abc import Iterable

from r1ft.settings import SECRET_FIELDS, Settings

# Credential identifiers that are not secret values but must not be published either: Hub tokens
# (hf_...) and AWS access key ids (AKIA... long-term, ASIA... temporary).
_SHAPES = (
    (re.compile(r"\bhf_[A-Za-z0-9]{20,}\b"), "hf_***"),
    (re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"), "AKIA***"),
)


def secret_values(settings: Settings) -> list[str]:
    """Every secret's value, and the AWS access key id (an identifier that is not published either)."""
    values = []
    for name in SECRET_FIELDS:
        secret = getattr(settings, name, None)
        if secret is not None and secret.get_secret_value():
            values.append(secret.get_secret_value())
    if settings.aws_access_key_id:
        values.append(settings.aws_access_key_id)
    return values


def redact(text: str, secrets: Iterable[str]) -> str:
    """`text` with every secret value, and anything shaped like a credential, replaced by ***."""
    for value in secrets:
        if value:
            text = text.replace(value, "***")
    for pattern, mask in _SHAPES:
        text = pattern.sub(mask, text)
    return text
