"""bench/docker.py runs end to end against the engine and prints its JSON summary.

Only the shape is checked: speed figures belong to the benchmark's report.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.docker_image import require_engine  # noqa: E402

pytestmark = [pytest.mark.docker, pytest.mark.timeout(420)]

KEYS = {"replicas10_s", "replicas50_s", "floor10_s", "floor50_s"}


def test_docker_bench_smoke_prints_json_last(pyz):
    require_engine().close()
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "docker.py"), "--smoke", "--json", "--pyz", str(pyz)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert KEYS <= summary.keys()
    assert summary["replicas10_s"] > 0 and summary["floor10_s"] > 0
    assert summary["runs10"] == 1
