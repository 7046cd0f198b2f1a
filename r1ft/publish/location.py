"""Where a run is published and collected from: `hf://owner/name[@revision]`, `s3://bucket/prefix`, a
`file://` URI or a path. Parsed and checked here, and nowhere else (settings, publishing, collecting and
the model card all take a `Location`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlparse

# Hub repo ids: owner/name of letters, digits, '-', '_', '.', no '--' or '..', at most 96 characters.
_HUB_PART = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")
# Git branch names the Hub accepts for a revision (no spaces, '..', '~^:?*[\\', no leading '-').
_REVISION = re.compile(r"[A-Za-z0-9._/-]+")
# S3 bucket names: 3-63 lowercase letters, digits, '.', '-'; starting and ending with a letter or digit.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IP = re.compile(r"\d+\.\d+\.\d+\.\d+")  # S3 refuses bucket names formatted as IP addresses
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
# hf:/x, s3:bucket/x, file:/x: one of ours missing a slash, which would otherwise be a local directory
_NEAR_SCHEME = re.compile(r"^(hf|s3|file):(?!//)", re.IGNORECASE)


class LocationError(ValueError):
    """A location that cannot be used; the message says how to write it."""


@dataclass(frozen=True)
class Location:
    """A parsed destination or source. `kind` is "hf", "s3" or "local"; the other fields are that kind's."""

    kind: Literal["hf", "s3", "local"]
    repo: str = ""  # hf: owner/name
    revision: str = ""  # hf: a branch ("" = main)
    bucket: str = ""  # s3
    prefix: str = ""  # s3: no leading or trailing '/'
    path: Path | None = None  # local: as given (relative paths are relative to the working directory)

    @property
    def remote(self) -> bool:
        """Whether it lives outside this machine (a Hub repo or a bucket), so it outlives the instance."""
        return self.kind in ("hf", "s3")

    @property
    def uri(self) -> str:
        if self.kind == "hf":
            return f"hf://{self.repo}" + (f"@{self.revision}" if self.revision else "")
        if self.kind == "s3":
            return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        return str(self.path)

    def __str__(self) -> str:
        return self.uri


def parse_location(uri: str) -> Location:
    """The location `uri` names; LocationError (saying what to write instead) when it cannot be used."""
    text = uri.strip()
    if not text:
        raise LocationError("empty location; use hf://owner/name, s3://bucket/prefix or a directory path")
    if text.startswith("hf://"):
        return _hub(text)
    if text.startswith("s3://"):
        return _s3(text)
    if text.startswith("file://"):
        parsed = urlparse(text)
        if parsed.netloc not in ("", "localhost"):  # file://host/path names another machine's file
            raise LocationError(
                f"{text!r} names the host {parsed.netloc!r}; a file:// location is on this machine: write "
                "file:///absolute/path (three slashes) or a plain path"
            )
        path = unquote(parsed.path)
        if not path:
            raise LocationError(f"{text!r} names no directory; use file:///absolute/path or a plain path")
        return Location("local", path=Path(path))
    if _SCHEME.match(text):
        raise LocationError(f"unknown scheme in {text!r}; use hf://, s3://, file:// or a path")
    near = _NEAR_SCHEME.match(text)
    if near:
        scheme = near.group(1).lower()
        raise LocationError(
            f"{text!r} is not a {scheme}:// location (it would be a local directory named so): write "
            f"{scheme}://{text[near.end() :].lstrip('/')}"
        )
    return Location("local", path=Path(text).expanduser())


def _hub(text: str) -> Location:
    repo, at, revision = text[5:].partition("@")
    repo = repo.strip("/")
    parts = repo.split("/")
    ok = (
        len(parts) == 2
        and len(repo) <= 96
        and all(_HUB_PART.fullmatch(p) for p in parts)
        and not any(bad in repo for bad in ("--", ".."))
    )
    if not ok:
        raise LocationError(f"{text!r} is not hf://owner/name[@revision] (letters, digits, '-', '_', '.')")
    if at and not revision:
        raise LocationError(f"{text!r} has an empty revision after '@': name a branch or leave out '@'")
    bad_revision = revision and (
        not _REVISION.fullmatch(revision)
        or ".." in revision
        or revision.startswith(("-", "/"))
        or revision.endswith(("/", ".lock"))
    )
    if bad_revision:
        raise LocationError(f"{text!r}: {revision!r} is not a valid branch name")
    return Location("hf", repo=repo, revision=revision)


def _s3(text: str) -> Location:
    bucket, _, prefix = text[5:].partition("/")
    if not bucket:
        raise LocationError(f"{text!r} has no bucket; use s3://bucket/prefix")
    if not _BUCKET.fullmatch(bucket) or ".." in bucket or _IP.fullmatch(bucket):
        raise LocationError(
            f"{text!r}: {bucket!r} is not a valid bucket name (3-63 lowercase letters, digits, '.', '-')"
        )
    prefix = prefix.strip("/")
    parts = prefix.split("/") if prefix else []
    if any(p in ("", ".", "..") for p in parts):
        raise LocationError(
            f"{text!r}: the prefix must be plain names separated by '/' (no '.', '..' or '//')"
        )
    return Location("s3", bucket=bucket, prefix=prefix)


def output_location(output: str, run_id: str) -> Location:
    """The destination of a run: R1FT_OUTPUT, or the directory runs/<run id> under the working directory."""
    if output.strip():
        return parse_location(output)
    if not run_id:
        raise LocationError("R1FT_OUTPUT is empty, so the destination is runs/<run id>: the run id is needed")
    return Location("local", path=Path("runs") / run_id)
