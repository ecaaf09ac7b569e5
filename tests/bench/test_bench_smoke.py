"""The scheduler benchmark runs end to end and prints its JSON summary.

Only the shape is checked: speed targets live in bench/README.md, never in tests.
"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KEYS = {
    "calibration",
    "placements_per_s",
    "evals_per_s",
    "us_per_placement",
    "fill_ratio",
    "rss_mb",
}


@pytest.mark.timeout(360)  # the run itself may take its 300 s
def test_scheduler_bench_smoke_prints_json_last():
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "scheduler.py"), "--smoke", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert KEYS <= summary.keys()
    assert summary["placements_per_s"] > 0 and summary["evals_per_s"] > 0
    assert summary["us_per_placement"] and all(
        value > 0 for value in summary["us_per_placement"].values()
    )
    assert 0 < summary["fill_ratio"] <= 1
    assert summary["rss_mb"] > 0
    assert summary["c1m_placed"] > 0


def test_fsops_measures_and_cleans_up(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "bench", "fsops.py"),
            str(tmp_path),
            "--tasks",
            "5",
            "--json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["cpu_ms_per_task"][str(tmp_path)] > 0
    assert summary["remove_ms_per_task"][str(tmp_path)] > 0
    assert summary["calibration"] > 0
    assert list(tmp_path.iterdir()) == []
