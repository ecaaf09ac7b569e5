"""orch.testing: dev_cluster() from the package and from the zipapp, and the
pytest plugin as an installed orch registers it; nothing it started survives."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

from orch.client import Client
from orch.testing import dev_cluster

from harness import ROOT, clean_env, wait_until


def pid_job(pid_dir: Path, count: int) -> dict:
    """A service whose tasks write their pid (then become `sleep`: same pid)."""
    return {
        "job_id": "pids",
        "type": "service",
        "task_groups": [
            {
                "name": "g",
                "count": count,
                "tasks": [
                    {
                        "name": "t",
                        "resources": {"cpu": 50, "memory": 16},
                        "config": {
                            "command": f'echo $$ > "{pid_dir}/$ORCH_ALLOC_ID.pid"; exec sleep 300'
                        },
                    }
                ],
            }
        ],
    }


def read_pids(pid_dir: Path, count: int) -> list[int]:
    def written():
        pids = [int(p.read_text()) for p in pid_dir.glob("*.pid") if p.read_text().strip()]
        return pids if len(pids) >= count else None

    return wait_until(written, 20, what=f"{count} pid files")


def running(processes) -> list:
    """Those of ``processes`` (psutil.Process) still alive: not gone, not a
    zombie, and not a new process that reused the pid."""
    alive = []
    for proc in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc)
    return alive


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_dev_cluster_from_the_package_leaves_nothing_behind(tmp_path):
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    with dev_cluster(agents=2) as cluster:
        assert isinstance(cluster.client, Client)
        assert cluster.client.address == cluster.address
        assert sorted(n["healthy"] for n in cluster.nodes) == [True, True]
        cluster.client.jobs.submit(pid_job(pid_dir, 2))
        cluster.client.jobs.wait("pids", "running", timeout=30)
        pids = read_pids(pid_dir, 2)
        started = cluster.processes()
        assert set(pids) <= {p.pid for p in started}
        launcher = cluster.pid
    assert running(started) == []
    assert all(gone(pid) for pid in pids + [launcher])


def test_dev_cluster_from_the_zipapp_named_by_orch_pyz(pyz, monkeypatch, tmp_path):
    monkeypatch.setenv("ORCH_PYZ", str(pyz))
    monkeypatch.setenv("ORCH_ADDR", "http://127.0.0.1:9")  # must not leak into the cluster
    with dev_cluster(agents=1) as cluster:
        assert Path(cluster.process.args[1]) == pyz
        job = {
            "job_id": "hi",
            "task_groups": [
                {
                    "name": "g",
                    "tasks": [{"name": "t", "config": {"command": "echo hi from the pyz"}}],
                }
            ],
        }
        cluster.client.jobs.submit(job)
        done = cluster.client.jobs.wait("hi", "complete", timeout=30)
        alloc_id = done["allocations"][0]["allocation_id"]
        assert cluster.client.allocs.logs(alloc_id, "t") == b"hi from the pyz\n"
        started = cluster.processes()
    assert running(started) == []


INNER_TEST = """
import pytest


@pytest.mark.orch_cluster(agents=1)
def test_fixture(orch_cluster):
    assert len(orch_cluster.nodes) == 1
    assert orch_cluster.client.health()["status"] == "ok"
    print("ADDRESS", orch_cluster.address)
"""


@pytest.mark.timeout(330)  # egg_info may take 120 s, the inner pytest 180 s
def test_installed_orch_registers_the_pytest_plugin(tmp_path):
    """Installed orch (its metadata on sys.path): pytest loads orch.testing by
    its pytest11 entry point, without `-p`, and the orch_cluster fixture works."""
    src = tmp_path / "src"
    shutil.copytree(
        ROOT / "orch", src / "orch", ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
    )
    shutil.copy2(ROOT / "setup.py", src / "setup.py")
    # What `pip install -e` leaves: the package and its metadata (entry
    # points included) on the path; offline, unlike a wheel build.
    subprocess.run(
        [sys.executable, "setup.py", "-q", "egg_info"],
        cwd=src,
        check=True,
        capture_output=True,
        timeout=120,
    )
    entry_points = src / "orch.egg-info" / "entry_points.txt"
    assert "orch = orch.testing" in entry_points.read_text()
    (tmp_path / "case" / "test_inner.py").parent.mkdir()
    (tmp_path / "case" / "test_inner.py").write_text(textwrap.dedent(INNER_TEST))
    env = clean_env({"PYTHONPATH": str(src)})
    env.pop("PYTEST_DISABLE_PLUGIN_AUTOLOAD", None)
    env.pop("PYTEST_ADDOPTS", None)
    inner = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "test_inner.py"],
        cwd=tmp_path / "case",
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert inner.returncode == 0, inner.stdout + inner.stderr
    assert "1 passed" in inner.stdout and "ADDRESS http://127.0.0.1:" in inner.stdout
