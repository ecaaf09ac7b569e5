"""The end-to-end benchmarks run (tiny presets) and print their JSON summary.

No timing is asserted: only that each benchmark runs against the built
zipapp, stops by itself, and ends with one JSON object carrying its keys.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(240)  # each smoke run may take its 120 s

ROOT = Path(__file__).resolve().parents[2]

E2E_KEYS = {
    "calibration",
    "cold_start_s",
    "latency_p50_ms",
    "latency_p99_ms",
    "batch_one_by_one_p50_ms",
    "batch_one_by_one_p99_ms",
    "batch_one_by_one_mean_ms",
    "batch_jobs_per_s",
    "rss_agent_mb",
    "rss_server_mb",
    "batch_vs_floor",
    "batch_floor_jobs_per_s",
    "server_cpu_ms_per_job",
    "agent_cpu_ms_per_job",
}
PROCESS_KINDS = {"server", "agents", "supervisors", "tasks", "agents_total", "client"}
HEARTBEAT_KEYS = {"calibration", "server_cpu_ms_per_heartbeat", "read_p99_ms"}


def run_smoke(script: str, pyz: Path, *extra: str) -> dict:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), "--smoke", "--json", "--pyz", str(pyz)]
        + list(extra),
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
    assert summary["calibration"] > 0
    # The figures name the CPython build that ran the cluster (by default the
    # benchmark's own) and the one the calibration ran in.
    python = summary["cluster_python"]
    assert python["executable"] == sys.executable and python["version"].startswith("3.")
    assert python["libpython"] == summary["libpython"] in ("shared", "static")
    assert summary["cluster_exes"] == [os.path.realpath(sys.executable)]
    # --smoke interleaves two rounds of floor and orch; the figures are their medians.
    assert summary["batch_rounds"] == 2 and len(summary["batch_runs"]) == 2
    assert PROCESS_KINDS == summary["cpu_ms_per_job"].keys()
    for run in summary["batch_runs"]:
        assert run["complete"] == run["jobs"] and run["floor_jobs_per_s"] > 0
        assert PROCESS_KINDS == run["cpu_ms_per_job"].keys()
    # The agent side adds up, and the tasks really ran under the supervisors.
    agent = summary["batch_runs"][0]["cpu_ms_per_job"]
    assert agent["agents_total"] == pytest.approx(
        agent["agents"] + agent["supervisors"] + agent["tasks"], abs=0.01
    )
    assert summary["agent_cpu_ms_per_job"] == summary["cpu_ms_per_job"]["agents_total"] > 0


SYSTEM_PYTHON = "/usr/bin/python3"


@pytest.mark.skipif(
    not os.path.exists(SYSTEM_PYTHON)
    or os.path.realpath(SYSTEM_PYTHON) == os.path.realpath(sys.executable),
    reason="no system python3 other than the one running the tests",
)
def test_e2e_runs_the_cluster_on_the_python_asked_for(pyz):
    """--python: the zipapp's server and agents run on the system's python3
    (what `python3 -S orch.pyz` is on a Debian node); the client, the floor
    and the calibration stay on the benchmark's own."""
    summary = run_smoke("e2e.py", pyz, "--python", SYSTEM_PYTHON)
    assert summary["cluster_exes"] == [os.path.realpath(SYSTEM_PYTHON)]
    assert summary["cluster_python"]["executable"] == SYSTEM_PYTHON
    assert summary["python"] == sys.version.split()[0]
    for run in summary["batch_runs"]:
        assert run["complete"] == run["jobs"]


def test_e2e_refuses_a_python_it_cannot_run(pyz, tmp_path):
    """A wrong --python ends the run before any cluster starts, with a line
    naming it rather than a traceback."""
    for bad in (str(tmp_path / "no-such-python"), "/bin/false"):
        proc = subprocess.run(
            [sys.executable, str(ROOT / "bench" / "e2e.py"), "--smoke", "--json"]
            + ["--pyz", str(pyz), "--python", bad],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
        assert proc.returncode != 0
        assert f"--python {bad}: cannot run it" in proc.stderr
        assert "Traceback" not in proc.stderr and "cold start" not in proc.stdout


def test_heartbeats_smoke_prints_its_summary(pyz):
    summary = run_smoke("heartbeats.py", pyz)
    assert HEARTBEAT_KEYS <= summary.keys(), summary
    for key in HEARTBEAT_KEYS:
        assert isinstance(summary[key], (int, float)), (key, summary[key])


DISPATCH_KEYS = {
    "calibration",
    "dispatches_per_s",
    "dispatch_jobs_per_s",
    "submits_per_s",
    "batch_jobs_per_s",
}


def test_dispatch_smoke_prints_its_summary(pyz):
    summary = run_smoke("dispatch.py", pyz)
    assert DISPATCH_KEYS <= summary.keys(), summary
    for key in DISPATCH_KEYS:
        assert isinstance(summary[key], (int, float)), (key, summary[key])


def test_coldstart_smoke_prints_its_summary(pyz):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "coldstart.py"), "--smoke", "--json"]
        + ["--pyz", str(pyz)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    figures = summary["builds"][str(pyz)]
    assert summary["calibration"] > 0 and figures["wall_s"] > 0 and figures["cpu_s"] > 0
    # Every role found by its command line, forked or exec'ed.
    assert {"cpu_launcher_s", "cpu_server_s", "cpu_agent_s", "rss_agent_mb"} <= figures.keys()
    assert len(summary["runs"][str(pyz)][0]["cpu_by_role"]["agent"]) == 3
