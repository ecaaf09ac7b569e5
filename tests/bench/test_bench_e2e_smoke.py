"""The end-to-end benchmarks run (tiny presets) and print their JSON summary.

No timing is asserted: only that each benchmark runs against the built
zipapp, stops by itself, and ends with one JSON object carrying its keys.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(240)  # each smoke run may take its 120 s

ROOT = Path(__file__).resolve().parents[2]

E2E_KEYS = {
    "cold_start_s",
    "latency_p50_ms",
    "latency_p99_ms",
    "batch_jobs_per_s",
    "rss_agent_mb",
    "rss_server_mb",
}
HEARTBEAT_KEYS = {"server_cpu_ms_per_heartbeat", "read_p99_ms"}


def run_smoke(script: str, pyz: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--smoke", "--json", "--pyz", str(pyz)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    assert lines, proc.stderr[-2000:]
    summary = json.loads(lines[-1])
    assert isinstance(summary, dict)
    return summary


def test_e2e_smoke_prints_its_summary(pyz):
    summary = run_smoke("e2e.py", pyz)
    assert E2E_KEYS <= summary.keys(), summary
    for key in E2E_KEYS:
        assert isinstance(summary[key], (int, float)), (key, summary[key])


def test_heartbeats_smoke_prints_its_summary(pyz):
    summary = run_smoke("heartbeats.py", pyz)
    assert HEARTBEAT_KEYS <= summary.keys(), summary
    for key in HEARTBEAT_KEYS:
        assert isinstance(summary[key], (int, float)), (key, summary[key])


DISPATCH_KEYS = {"dispatches_per_s", "dispatch_jobs_per_s", "submits_per_s", "batch_jobs_per_s"}


def test_dispatch_smoke_prints_its_summary(pyz):
    summary = run_smoke("dispatch.py", pyz)
    assert DISPATCH_KEYS <= summary.keys(), summary
    for key in DISPATCH_KEYS:
        assert isinstance(summary[key], (int, float)), (key, summary[key])
