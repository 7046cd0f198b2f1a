"""A fake of `huggingface_hub.HfApi` for tests: records every call, keeps repos in memory, fails on demand.

It behaves like the Hub where publishing depends on it: pre-uploaded LFS files are invisible until a
commit references them, a commit is all-or-nothing, `list_repo_tree` returns real `RepoFile`s (size, git
blob id, LFS sha256), a missing file downloads as `RemoteEntryNotFoundError`.
"""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path
from typing import Any

import httpx2
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
from huggingface_hub.errors import HfHubHTTPError, RemoteEntryNotFoundError, RepositoryNotFoundError
from huggingface_hub.hf_api import RepoFile

LFS_THRESHOLD = 1024  # files at least this large are LFS in the fake


def http_error(
    status: int, retry_after: str | None = None, url: str = "https://huggingface.co/api"
) -> HfHubHTTPError:
    """The error huggingface_hub raises for an HTTP status (with an httpx2 response carrying headers)."""
    headers = {"Retry-After": retry_after} if retry_after else {}
    response = httpx2.Response(status, headers=headers, request=httpx2.Request("POST", url))
    return HfHubHTTPError(f"{status} Server Error for url: {url}", response=response)


def git_oid(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data, usedforsecurity=False).hexdigest()


def _read(op: CommitOperationAdd) -> bytes:
    with op.as_file() as f:
        return f.read()


class FakeHfApi:
    """Records calls as (name, details); `fail[name]` is a list of exceptions raised by the next calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.fail: dict[str, list[BaseException]] = {}
        self.repos: dict[str, dict[str, Any]] = {}
        self.lfs: dict[str, bytes] = {}  # sha256 hex -> content of pre-uploaded files
        self.token_valid = True  # False: every authenticated call answers 401
        self.writable = True  # False: a read-only token (auth_check(write=True) and writes answer 403)

    def _call(self, name: str, args: tuple, kwargs: dict[str, Any], **details: Any) -> None:
        """Check the call binds to the real HfApi method, record `details`, then fail if asked to."""
        inspect.signature(getattr(HfApi, name)).bind(self, *args, **kwargs)
        self.calls.append((name, details))
        pending = self.fail.get(name)
        if pending:
            raise pending.pop(0)

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def files(self, repo_id: str, revision: str | None = None) -> dict[str, bytes]:
        return self.repos[repo_id]["branches"][revision or "main"]

    def whoami(self, token: Any = None, *, cache: bool = False) -> dict[str, Any]:
        self._call("whoami", (), {"token": token, "cache": cache})
        if not self.token_valid:
            raise http_error(401, url="https://huggingface.co/api/whoami-v2")
        role = "write" if self.writable else "read"
        return {"name": "me", "auth": {"type": "access_token", "accessToken": {"role": role}}}

    def auth_check(
        self, repo_id: str, *, repo_type: str | None = None, write: bool = False, **kw: Any
    ) -> None:
        self._call("auth_check", (repo_id,), {"repo_type": repo_type, "write": write, **kw}, write=write)
        if not self.token_valid:
            raise http_error(401)
        if repo_id not in self.repos:
            response = httpx2.Response(
                404, request=httpx2.Request("GET", f"https://huggingface.co/{repo_id}")
            )
            raise RepositoryNotFoundError(f"404: {repo_id} not found", response=response)
        if write and not self.writable:
            raise http_error(403, url=f"https://huggingface.co/api/models/{repo_id}/auth-check/write")

    def create_repo(
        self, repo_id: str, *, private: bool | None = None, exist_ok: bool = False, **kw: Any
    ) -> str:
        kwargs = {"private": private, "exist_ok": exist_ok, **kw}
        self._call("create_repo", (repo_id,), kwargs, repo_id=repo_id, private=private, exist_ok=exist_ok)
        if repo_id in self.repos and not exist_ok:
            raise http_error(409)
        self.repos.setdefault(repo_id, {"private": private, "branches": {"main": {}}, "commits": []})
        return f"https://huggingface.co/{repo_id}"

    def create_branch(self, repo_id: str, *, branch: str, exist_ok: bool = False, **kw: Any) -> None:
        kwargs = {"branch": branch, "exist_ok": exist_ok, **kw}
        self._call("create_branch", (repo_id,), kwargs, repo_id=repo_id, branch=branch)
        branches = self.repos[repo_id]["branches"]
        branches.setdefault(branch, dict(branches["main"]))

    def preupload_lfs_files(self, repo_id: str, additions: list[CommitOperationAdd], **kw: Any) -> None:
        additions = list(additions)
        paths = [op.path_in_repo for op in additions]
        self._call("preupload_lfs_files", (repo_id,), {"additions": additions, **kw}, paths=paths, **kw)
        for op in additions:
            if op.upload_info.size < LFS_THRESHOLD:
                op._upload_mode = "regular"
                continue
            self.lfs[op.upload_info.sha256.hex()] = _read(op)
            op._upload_mode = "lfs"
            op._is_uploaded = True
            op.path_or_fileobj = b""  # what free_memory=True does

    def create_commit(self, repo_id: str, operations: list[Any], *, commit_message: str, **kw: Any) -> str:
        operations = list(operations)
        details = {
            "message": commit_message,
            "adds": [op.path_in_repo for op in operations if isinstance(op, CommitOperationAdd)],
            "deletes": [op.path_in_repo for op in operations if isinstance(op, CommitOperationDelete)],
            **kw,
        }
        kwargs = {"operations": operations, "commit_message": commit_message, **kw}
        self._call("create_commit", (repo_id,), kwargs, **details)
        new = dict(self.files(repo_id, kw.get("revision")))
        for op in operations:
            if isinstance(op, CommitOperationDelete):
                gone = [
                    p for p in new if p == op.path_in_repo or p.startswith(op.path_in_repo.rstrip("/") + "/")
                ]
                if not gone:
                    raise http_error(404)
                for p in gone:
                    del new[p]
            elif op._is_uploaded:
                new[op.path_in_repo] = self.lfs[op.upload_info.sha256.hex()]
            else:
                new[op.path_in_repo] = _read(op)  # a plain file: the commit reads it now
        self.repos[repo_id]["branches"][kw.get("revision") or "main"] = new
        self.repos[repo_id]["commits"].append(commit_message)
        return "commit-oid"

    def list_repo_tree(
        self, repo_id: str, *, recursive: bool = False, revision: str | None = None, **kw: Any
    ):
        kwargs = {"recursive": recursive, "revision": revision, **kw}
        self._call("list_repo_tree", (repo_id,), kwargs, repo_id=repo_id, revision=revision)
        out = []
        for path, data in sorted(self.files(repo_id, revision).items()):
            if len(data) >= LFS_THRESHOLD:
                lfs = {"size": len(data), "oid": hashlib.sha256(data).hexdigest(), "pointerSize": 134}
                out.append(RepoFile(path=path, size=len(data), oid="pointer-oid", lfs=lfs))
            else:
                out.append(RepoFile(path=path, size=len(data), oid=git_oid(data)))
        return out

    def hf_hub_download(
        self, repo_id: str, filename: str, *, revision: str | None = None, local_dir: str, **kw
    ):
        kwargs = {"revision": revision, "local_dir": local_dir, **kw}
        self._call("hf_hub_download", (repo_id, filename), kwargs, filename=filename, revision=revision)
        if repo_id not in self.repos:
            response = httpx2.Response(
                404, request=httpx2.Request("GET", f"https://huggingface.co/{repo_id}")
            )
            raise RepositoryNotFoundError(f"404: {repo_id} not found", response=response)
        files = self.files(repo_id, revision)
        if filename not in files:
            response = httpx2.Response(
                404, request=httpx2.Request("GET", f"https://huggingface.co/{filename}")
            )
            raise RemoteEntryNotFoundError(f"404: {filename} not found", response=response)
        target = Path(local_dir) / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(files[filename])
        return str(target)
