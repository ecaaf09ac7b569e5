"""The rollout benchmark runs (3 copies, 1 run, no swarm) and prints its JSON summary.

No timing is asserted: only the summary's shape, and that no request failed
while the copies were rolled to v2.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FIGURES = {"cold_s", "rollout_s", "ratio", "requests", "failed_requests"}


@pytest.mark.bench
@pytest.mark.timeout(150)
def test_rollout_smoke_prints_its_summary_without_failed_requests(pyz):
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "rollout.py"),
            *("--copies", "3", "--runs", "1", "--no-swarm", "--json", "--pyz", str(pyz)),
        ],
        capture_output=True,
        text=True,
        timeout=140,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"machine", "orch", "swarm", "ratio_max", "failed_requests"} <= summary.keys()
    assert summary["calibration"] == summary["machine"]["calibration"] > 0
    figures = summary["orch"]["3"]
    assert FIGURES <= figures.keys(), figures
    assert figures["cold_s"] > 0 and figures["rollout_s"] > 0
    assert figures["requests"] > 0, "the client sent nothing during the rollout"
    assert summary["failed_requests"] == 0, proc.stdout[-2000:]
    assert summary["swarm"] == {"skipped": "--no-swarm"}
