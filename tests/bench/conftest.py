"""The benchmarks' smoke runs share the integration harness's built zipapp."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from harness import ensure_pyz  # noqa: E402


@pytest.fixture(scope="session")
def pyz() -> Path:
    """dist/orch.pyz, built once per session if missing or stale."""
    return ensure_pyz()
