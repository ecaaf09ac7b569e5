"""Markers from where a test lives and what it uses, so `-m` can select whole layers.

tests/integration is `integration`, tests/bench `bench`; a test that uses the
`engine` fixture (a Docker client) is `docker`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
MARK_BY_DIR = {HERE / "integration": "integration", HERE / "bench": "bench"}


def pytest_collection_modifyitems(items) -> None:
    """Add the markers a test's directory and fixtures imply."""
    for item in items:
        path = Path(str(item.fspath)).resolve()
        for directory, mark in MARK_BY_DIR.items():
            if directory in path.parents:
                item.add_marker(getattr(pytest.mark, mark))
        if "engine" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.docker)
