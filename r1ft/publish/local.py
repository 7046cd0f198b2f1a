"""A directory destination (local disk, a mounted volume): copy (or move), then verify by sha256."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import uuid
from pathlib import Path

from r1ft.publish.destination import FileEntry, PublishError, RemoteMissing, local_problem

log = logging.getLogger(__name__)


class LocalDestination:
    """A directory (local disk, a mounted volume): copy (or move), then verify by sha256."""

    atomic = False

    def __init__(self, root: Path):
        self.root = Path(root).expanduser().resolve()
        self.location = str(self.root)
        self.staged: dict[str, FileEntry] = {}

    def stage_file(self, local: Path, remote: str, delete_after: bool = False) -> FileEntry:
        local = Path(local)
        entry = FileEntry.of(local, remote)
        target = self.root / remote
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists() and os.path.samefile(local, target):
            self.staged[remote] = entry  # publishing a directory onto itself: nothing to copy
            return entry
        partial = target.with_name(target.name + ".partial")
        moved = False
        if delete_after:
            try:
                os.replace(local, partial)  # same filesystem: a rename, nothing copied
                moved = True
            except OSError:
                pass
        if not moved:
            shutil.copyfile(local, partial)
        os.replace(partial, target)
        problem = local_problem(target, entry)
        if problem:
            raise PublishError(f"{target}: {problem} after copying; the disk may be failing")
        if delete_after and not moved:
            local.unlink()
        self.staged[remote] = entry
        return entry

    def commit(self, message: str) -> None:
        log.info("%s: %s", self.location, message)

    def delete(self, remotes: list[str]) -> None:
        for remote in remotes:
            (self.root / remote).unlink(missing_ok=True)

    def list_files(self, prefix: str = "") -> list[str]:
        base = self.root / prefix if prefix else self.root
        if not base.is_dir():
            return []
        return sorted(p.relative_to(self.root).as_posix() for p in base.rglob("*") if p.is_file())

    def verify(self, entries: list[FileEntry]) -> list[str]:
        problems = []
        for entry in entries:
            problem = local_problem(self.root / entry.path, entry)
            if problem:
                problems.append(f"{entry.path}: {problem}")
        return problems

    def probe(self, write: bool) -> None:
        """The root is a directory (or can be created); with `write`, a small file is written, read back and
        deleted in it."""
        if self.root.exists() and not self.root.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(self.root))
        if not write:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        probe = self.root / f".r1ft-preflight-{uuid.uuid4().hex[:12]}"
        body = f"r1ft preflight {probe.name}\n".encode()
        try:
            probe.write_bytes(body)
            if probe.read_bytes() != body:
                raise PublishError(
                    f"{probe} reads back differently from what was written; the disk may be failing"
                )
        finally:
            probe.unlink(missing_ok=True)

    def denial(self, exc: BaseException) -> str:
        if isinstance(exc, NotADirectoryError | FileExistsError):
            return (
                f"{exc.filename or self.root} is a file, not a directory: point R1FT_OUTPUT at a directory "
                "(it is created when missing)"
            )
        if isinstance(exc, PermissionError) or (isinstance(exc, OSError) and exc.errno == errno.EROFS):
            return f"{self.root} cannot be written ({exc.strerror}): choose a directory this user may write"
        return ""

    def download(self, remote: str, local: Path) -> None:
        source = self.root / remote
        if not source.is_file():
            raise RemoteMissing(f"{source} does not exist")
        local.parent.mkdir(parents=True, exist_ok=True)
        partial = local.with_name(local.name + ".partial")
        shutil.copyfile(source, partial)
        os.replace(partial, local)
