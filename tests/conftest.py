"""Shared fixtures: the embedded tiny model, smoke settings, the real data folder beside the repo."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _garbage_collection_unfrozen():
    """The lean trainer freezes live objects out of garbage collection after its first steps: undone after
    each test, so one test's objects do not outlive it uncollected."""
    import gc

    yield
    gc.unfreeze()


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """A directory holding the tiny random-weight Qwen2 and its tokenizer (real template and tokens)."""
    from r1ft.model.tiny import build_tiny_base

    return build_tiny_base(tmp_path_factory.mktemp("tiny") / "base")


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_base):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_base)


@pytest.fixture
def shared_data() -> Path:
    """`../shared/data` (real SciBench files and the MathCodeInstruct-format sample); skip when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not beside the repo")
    return SHARED_DATA


def smoke_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """Environment of a smoke run whose work dir and output live under tmp_path."""
    env = {
        "R1FT_PRESET": "smoke",
        "R1FT_WORK_DIR": str(tmp_path / "work"),
        "R1FT_OUTPUT": str(tmp_path / "published"),
    }
    env.update(extra)
    return env
