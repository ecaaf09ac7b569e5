"""setup.py's find_packages only sees directories with an __init__.py."""

from pathlib import Path

from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[2]


def test_every_source_directory_is_a_package():
    source_dirs = {p.parent for p in (ROOT / "orch").rglob("*.py") if "__pycache__" not in p.parts}
    missing = sorted(
        str(d.relative_to(ROOT)) for d in source_dirs if not (d / "__init__.py").exists()
    )
    assert missing == [], "no __init__.py, so left out of orch.pyz"
    found = set(find_packages(str(ROOT), include=["orch", "orch.*"]))
    assert {".".join(d.relative_to(ROOT).parts) for d in source_dirs} <= found
