"""Loading the settings at the edge: every problem at once, each with its fix (`load_settings`).

The fields and their sources are `r1ft.settings`; this module adds what pydantic-settings does not: the
`.env` lines it would skip, unknown `R1FT_*` names with the closest valid one, one line per invalid field
(never a secret's value), and the cross-field checks of `r1ft.validation`, run on the valid fields.
"""

from __future__ import annotations

import difflib
import io
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from r1ft.settings import ENVIRON, PREFIX, SECRET_FIELDS, Settings, env_names
from r1ft.validation import cross_checks


class SettingsError(Exception):
    """Every problem found in the settings, each with its fix."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


def read_env_file(path: Path) -> tuple[dict[str, str], list[str]]:
    """The `.env` file's variables (python-dotenv's parser, as pydantic-settings uses it), and as problems
    what python-dotenv skips with only a warning: a file that is not UTF-8, a line it cannot parse (whose
    setting would silently keep its default), named by number and variable, never by value (a secret)."""
    from dotenv import dotenv_values
    from dotenv.parser import parse_stream

    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        return {}, [f"env file {path}: not UTF-8 text (byte {e.start}); save it as UTF-8"]
    problems = [
        f"env file {path} line {b.original.line} ({_line_name(b.original.string)}): cannot be parsed (an "
        "unclosed quote, or no '='?), so it would be ignored: write NAME=value"
        for b in parse_stream(io.StringIO(text))
        if b.error
    ]
    return {k: v for k, v in dotenv_values(path).items() if v is not None}, problems


def _line_name(line: str) -> str:
    """The variable a `.env` line sets, when what precedes its '=' is a name; '?' otherwise (no value shown)."""
    name = line.split("=", 1)[0].strip().removeprefix("export ").strip()
    return name if re.fullmatch(r"[A-Za-z_]\w*", name) else "?"


def unknown_names(env: Mapping[str, str]) -> list[str]:
    """A problem line for every `R1FT_*` name that is not a setting, with the closest valid name."""
    known = [name for name in env_names() if name.startswith(PREFIX)]
    problems = []
    for name in sorted(env):
        upper = name.upper()
        if upper.startswith(PREFIX) and upper not in known:
            close = difflib.get_close_matches(upper, known, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}?" if close else "see .env.example for the valid names"
            problems.append(f"{name}: unknown setting; {hint}")
    return problems


def _field_problems(err: ValidationError) -> tuple[list[str], set[str]]:
    """One line per invalid field, naming its variable, the value (never a secret's) and what it is; and
    the fields that failed."""
    by_name = {}
    for env_name, field in env_names().items():
        by_name.setdefault(field, env_name)
    lines, failed = [], set()
    for e in err.errors():
        key = str(e["loc"][0]) if e["loc"] else "?"
        field = key if key in Settings.model_fields else env_names().get(key, key)
        failed.add(field)
        value = e.get("input")
        shown = "" if field in SECRET_FIELDS or isinstance(value, dict) else f" (got {value!r})"
        info = Settings.model_fields.get(field)
        what = f"; it is {info.description}" if info is not None and info.description else ""
        lines.append(f"{by_name.get(field, key)}: {e['msg']}{shown}{_closest(e)}{what}")
    return lines, failed


def _closest(e: Any) -> str:
    """For a value outside a fixed set of choices (a Literal field): the closest choice, if one is close."""
    if e["type"] != "literal_error" or not isinstance(e.get("input"), str):
        return ""
    choices = re.findall(r"'([^']*)'", str(e.get("ctx", {}).get("expected", "")))
    close = difflib.get_close_matches(e["input"].strip().lower(), choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def load_settings(
    environ: Mapping[str, str] | None = None,
    env_file: Path | None = Path(".env"),
    *,
    env_file_required: bool = False,
) -> Settings:
    """Parse and validate every setting at once; raise SettingsError listing every problem with its fix.

    `environ` defaults to the process environment; `env_file` is read when it exists (a missing one is an
    error when `env_file_required`, i.e. the user named it). The process environment wins over the file.
    """
    env = dict(os.environ if environ is None else environ)
    problems = []
    file_values: dict[str, str] = {}
    if env_file is not None:
        if Path(env_file).is_file():
            file_values, problems = read_env_file(Path(env_file))
        elif env_file_required:
            problems.append(f"--env-file {env_file}: no such file; fix the path (or leave --env-file out)")
    problems += unknown_names({**file_values, **env})
    token = ENVIRON.set(env)
    try:
        settings, failed = _build(env_file if file_values else None, {})
        if settings is None:
            field_lines, failed_fields = failed
            problems += field_lines
            # The cross-field checks still run, on the valid fields, with the invalid ones at their defaults.
            defaults = {
                f: Settings.model_fields[f].default for f in failed_fields if f in Settings.model_fields
            }
            settings, _ = _build(env_file if file_values else None, defaults)
    finally:
        ENVIRON.reset(token)
    if settings is not None:
        problems += [p for p in cross_checks(settings) if p not in problems]
    if problems:
        raise SettingsError(problems)
    assert settings is not None
    return settings


def _build(env_file: Path | None, overrides: dict[str, Any]) -> tuple[Settings | None, Any]:
    """Settings from the sources; (None, (problem lines, failed fields)) when a field is invalid."""
    try:
        return Settings(_env_file=env_file, **overrides), None
    except ValidationError as err:
        return None, _field_problems(err)
