"""The text of `.env.example`, derived from the Settings fields (a test keeps the file equal to it).

Regenerate: `python -c 'from r1ft.env_example import env_example_text as t; open(".env.example", "w").write(t())'`
"""

from __future__ import annotations

from r1ft.settings import PREFIX, Settings


def _prefixed_field(field: str) -> bool:
    return Settings.model_fields[field].validation_alias is None


def env_example_text() -> str:
    """The text of `.env.example`: every variable with its default and its one-line description."""
    lines = [
        "# r1ft settings. Copy to .env, fill in what you need, and pass it with `docker run --env-file .env`.",
        "# Every R1FT_* variable is listed, commented out, with its default: uncomment what you change (an",
        "# explicit value also overrides the preset's). An unknown R1FT_* name is an error.",
        "# Write values without quotes: `docker run --env-file` keeps quote characters literally.",
        "# In the image, leave R1FT_WORK_DIR unset: it is /workspace, which the disk watchdog measures.",
    ]
    section = ""
    for name, info in Settings.model_fields.items():
        if not _prefixed_field(name):
            continue
        group = (info.json_schema_extra or {}).get("section", section)
        if group != section:
            section = group
            lines += ["", f"# --- {section} ---"]
        default = info.default
        shown = (
            str(default).lower() if isinstance(default, bool) else ("" if default is None else str(default))
        )
        lines.append(f"# {info.description}")
        lines.append(f"#{PREFIX}{name.upper()}={shown}")
    lines += [
        "",
        "# --- secrets and platform variables (standard names) ---",
        "# Hub write token, needed for R1FT_OUTPUT=hf://... (and for gated or private models/datasets)",
        "#HF_TOKEN=",
        "# S3 credentials for R1FT_OUTPUT=s3://... ; the endpoint for R2, MinIO, Backblaze, Wasabi...",
        "#AWS_ACCESS_KEY_ID=",
        "#AWS_SECRET_ACCESS_KEY=",
        "#AWS_SESSION_TOKEN=",
        "#AWS_DEFAULT_REGION=",
        "#AWS_ENDPOINT_URL=",
        "# Set by Vast.ai inside the instance (CONTAINER_ID, CONTAINER_API_KEY): leave them out of this file.",
        "",
    ]
    return "\n".join(lines)
