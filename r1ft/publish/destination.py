"""What every destination shares: the protocol, the file entries a manifest lists, the results and errors.

One `Destination` protocol, three implementations (`r1ft.publish.local`, `.s3`, `.hub`), opened by
`r1ft.publish.connect`. Paths at a destination are relative to its root and '/'-separated.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from r1ft.files import sha256_file


class PublishError(Exception):
    """Publishing (or collecting) failed for good; the message says where the outputs are and what to run."""


class DestinationDenied(PublishError):
    """The destination refused the credentials or the permission (a settings problem: the message says
    what to fix); retrying does not help."""


class DestinationUnreachable(PublishError):
    """The destination did not answer, or kept failing, within a bounded number of tries and time."""


class RemoteMissing(Exception):
    """The file does not exist at the destination."""


class Mismatch(Exception):
    """What the destination holds differs from what was sent (retried: a re-upload usually fixes it)."""


def safe_relpath(rel: str) -> str:
    """`rel` if it is a plain relative path inside the destination; a manifest must not escape it."""
    parts = rel.split("/")
    if not rel or rel.startswith("/") or "\\" in rel or any(p in ("", ".", "..") for p in parts):
        raise PublishError(f"refusing the path {rel!r} from a manifest: not a plain relative path")
    return rel


@dataclass(frozen=True, order=True)
class FileEntry:
    """One published file: path relative to the destination root, size in bytes, hex sha256."""

    path: str
    size: int
    sha256: str

    @classmethod
    def of(cls, local: Path, remote: str) -> FileEntry:
        return cls(remote, local.stat().st_size, sha256_file(local))

    def as_json(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}


@dataclass
class PublishResult:
    """What a publish (or collect) did. `verified` is True only when the destination matched the manifest."""

    location: str
    verified: bool
    files: int
    bytes: int
    message: str


class Destination(Protocol):
    """Where a run is published. Paths are relative to the destination root, '/'-separated."""

    location: str  # human-readable, secret-free (hf://owner/name@rev, s3://bucket/prefix, /abs/dir)
    staged: dict[str, FileEntry]  # every file staged through this object (what the manifest lists)

    def stage_file(self, local: Path, remote: str, delete_after: bool = False) -> FileEntry:
        """Send one file (Hub: pre-upload, visible at `commit`); with `delete_after`, remove the local copy
        as soon as it is safely at the destination."""
        ...

    def commit(self, message: str) -> None:
        """Make everything staged visible (Hub: one commit; S3 and directories: already visible)."""
        ...

    def delete(self, remotes: list[str]) -> None:
        """Remove files (Hub: in the next commit; S3 and directories: now)."""
        ...

    def list_files(self, prefix: str = "") -> list[str]:
        """Paths of the files under `prefix` that are visible at the destination."""
        ...

    def verify(self, entries: list[FileEntry]) -> list[str]:
        """One problem line per entry that is missing or differs (size, checksum where available)."""
        ...

    def download(self, remote: str, local: Path) -> None:
        """Fetch one file to `local` (atomically); `RemoteMissing` when it does not exist."""
        ...

    @property
    def atomic(self) -> bool:
        """Whether `commit` makes all staged files and deletions visible at once."""
        ...

    def probe(self, write: bool) -> None:
        """Prove now that the destination answers and, with `write`, that this job can write it (a small
        object put, read back and deleted, or the backend's equivalent). Raises the library's error;
        transient ones are retried by the destination's retry policy."""
        ...

    def denial(self, exc: BaseException) -> str:
        """For an error from this destination: what to fix when it is a refusal of the credentials or the
        permissions (no retry can help), else ''."""
        ...


def local_problem(path: Path, entry: FileEntry) -> str:
    """'' when `path` holds exactly `entry`, else what is wrong."""
    if not path.is_file():
        return "missing"
    size = path.stat().st_size
    if size != entry.size:
        return f"size {size} != {entry.size}"
    if sha256_file(path) != entry.sha256:
        return "sha256 differs"
    return ""
