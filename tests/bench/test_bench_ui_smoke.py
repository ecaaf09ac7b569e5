"""bench/ui.py runs end to end, small, and prints its JSON summary last.

Only the shape is checked: speed targets live in bench/README.md, never in tests.
"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
UI_ROUTES = os.path.join(ROOT, "orch", "server", "ui", "routes.py")


@pytest.mark.skipif(not os.path.exists(UI_ROUTES), reason="the web UI is not in this tree")
@pytest.mark.timeout(180)
def test_ui_bench_smoke_prints_json_last():
    args = ["--nodes", "40", "--allocs", "60", "--renders", "3"]
    args += ["--streams", "3", "--stream-seconds", "1", "--json"]
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "ui.py"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["allocs_placed"] == 60
    assert set(summary["render"]) == {"jobs", "nodes", "topology"}
    for figures in summary["render"].values():
        assert 0 < figures["p50_ms"] <= figures["p95_ms"] <= figures["max_ms"]
        assert figures["kb"] > 0
    assert summary["stream"]["streams"] == 3
    assert summary["stream_cpu_share"] >= 0
    assert summary["calibration"] == summary["machine"]["calibration"] > 0
