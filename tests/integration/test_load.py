"""50 concurrent clients against a real `orch dev --agents 3` for ~15 s.

The load generator is bench/load.py (its full run: `--seconds 60`); here it
must see no 5xx, no connection error, no other non-200, every acknowledged
submit present and every acknowledged stop `dead`.
"""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from harness import ROOT

SECONDS = 15
CLIENTS = 50

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def load_module():
    # bench/load.py imports its neighbour benchutil, as when run as a script.
    if str(ROOT / "bench") not in sys.path:
        sys.path.insert(0, str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location("bench_load", ROOT / "bench" / "load.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fifty_clients_mixing_submits_reads_and_stops(tmp_path, pyz):
    load = load_module()
    cluster = load.DevCluster(pyz, agents=3, log_path=str(tmp_path / "dev.log"))
    try:
        cluster.wait_healthy()
        summary = load.run_load(cluster.url, seconds=SECONDS, clients=CLIENTS)
    finally:
        cluster.stop()
    print(
        "\n"
        + json.dumps(
            {
                k: summary[k]
                for k in ("requests", "requests_per_s", "jobs_submitted", "jobs_stopped", "kinds")
            }
        )
    )
    assert summary["server_errors"] == 0, summary["failures"]
    assert summary["connection_errors"] == 0, summary["failures"]
    assert summary["other_status"] == 0, summary["failures"]
    assert summary["check_problems"] == []
    assert summary["jobs_submitted"] > 0 and summary["jobs_stopped"] > 0
    assert all(k["count"] > 0 for k in summary["kinds"].values()), summary["kinds"]
    assert summary["ok"]
