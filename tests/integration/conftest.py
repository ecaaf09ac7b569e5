"""Integration fixtures: the zipapp under test, built once per session."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))

PYZ = ROOT / "dist" / "orch.pyz"


def _stale(pyz: Path) -> bool:
    if not pyz.exists():
        return True
    built = pyz.stat().st_mtime
    sources = [ROOT / "setup.py", *ROOT.joinpath("orch").rglob("*.py")]
    return any(src.stat().st_mtime > built for src in sources)


@pytest.fixture(scope="session")
def pyz() -> Path:
    """dist/orch.pyz, rebuilt when any source is newer than it."""
    if _stale(PYZ):
        subprocess.run([sys.executable, str(ROOT / "build" / "make_pyz.py")],
                       check=True, cwd=ROOT)
    return PYZ
