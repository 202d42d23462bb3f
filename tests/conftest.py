"""Shared fixtures: a tiny random model (fast, unit tests) and the embedded SmolLM2 (integration)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny import tiny_model  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("COALIGN_SHARED", REPO.parent / "shared")) / "datasets"


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny matrices: one intra-op thread avoids OpenMP spin-waits on a busy 2-core machine."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny():
    return tiny_model()


@pytest.fixture(scope="session")
def smollm2():
    from circuits import load_model

    try:
        return load_model("smollm2-135m-instruct")
    except Exception as e:  # the README's install puts it there; say so rather than skip silently
        pytest.fail(f"embedded SmolLM2 could not be loaded: {e}")


@pytest.fixture(scope="session")
def shared_datasets() -> Path:
    if not SHARED.exists():
        pytest.skip(f"shared datasets not found at {SHARED}")
    return SHARED
