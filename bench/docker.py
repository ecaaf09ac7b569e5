"""Docker benchmark: N replicas of a busybox container through orch, beside the engine's floor.

A real `orch server` and one `orch agent` from the built zipapp
(``dist/orch.pyz``; built with ``python build/make_pyz.py`` when missing) run
against the local Docker engine. For each replica count N (10 and 50):

- orch: POST a service job whose one task group has ``count`` N (a busybox
  container running ``sleep``), then GET /jobs/<id> in a tight loop until the
  server reports all N allocations ``running``; the job is then stopped and
  its containers are gone before the next measurement;
- floor: the same N containers of the same image started by plain
  ``docker run -d`` (the SDK's ``containers.run(detach=True)``) from 8
  threads, timed until every call returned (a started container); then removed.

The two alternate within each run, so that engine drift hits both alike.
Figures are medians over ``--runs`` runs (``ratioN`` is the ratio of the
medians, ``paired_ratioN`` the median of each run's own ratio); the target is
orch <= 1.2 x floor.
The image is ``orch-test/busybox:latest``, imported from the host's
busybox-static when missing (no registry is needed). Everything the benchmark
starts (processes by PID/group, containers by label) is removed at the end.

    python bench/docker.py                  # 3 runs of 10 and 50, human-readable
    python bench/docker.py --json           # ... last line: one JSON object
    python bench/docker.py --smoke --json   # one quick run of 10 (seconds)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
# This file's own directory comes first on sys.path, and this file is named
# docker.py: drop it, or `import docker` would import this benchmark.
_HERE = str(Path(__file__).resolve().parent)
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]
sys.path.insert(0, str(ROOT))

import docker  # noqa: E402

from bench.benchutil import free_port, host, log  # noqa: E402
from tests.docker_image import TEST_IMAGE, ensure_test_image  # noqa: E402

DEFAULT_PYZ = ROOT / "dist" / "orch.pyz"
TARGET_RATIO = 1.2
FLOOR_THREADS = 8
BENCH_LABEL = "orch-bench"  # on floor containers; orch's carry orch.job_id
JOB_PREFIX = "bench-docker-"
COMMAND = ["sleep", "3600"]
START_TIMEOUT = 60.0
RUN_TIMEOUT = 300.0
POLL = 0.05  # status polls: coarse enough not to load the server


def wait_until(fn, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = fn()
            if value:
                return value
        except requests.RequestException:
            pass
        time.sleep(POLL)
    raise RuntimeError(f"timed out after {timeout:g}s waiting for {what}")


# ---- the cluster ----------------------------------------------------------


class Cluster:
    """`orch server` + one `orch agent` from the zipapp, each in its own session."""

    def __init__(self, pyz: Path, workdir: Path):
        self.pyz, self.workdir = pyz, workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.procs: list[subprocess.Popen] = []

    def _start(self, name: str, *args: str) -> None:
        out = open(self.workdir / f"{name}.log", "ab")
        self.procs.append(
            subprocess.Popen(
                [sys.executable, str(self.pyz), *args],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        )
        out.close()

    def start(self) -> None:
        self._start(
            "server",
            "server",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.workdir / "server"),
            "--node-ttl",
            "30",
        )
        wait_until(
            lambda: requests.get(f"{self.url}/health", timeout=1).ok,
            START_TIMEOUT,
            "server /health",
        )
        self._start(
            "agent",
            "agent",
            "--server",
            self.url,
            "--port",
            "0",
            "--data-dir",
            str(self.workdir / "agent"),
            "--heartbeat-interval",
            "1",
        )

        def docker_node():
            nodes = requests.get(f"{self.url}/nodes", timeout=2).json()["nodes"]
            return any(n["healthy"] and n.get("attributes", {}).get("driver.docker") for n in nodes)

        wait_until(docker_node, START_TIMEOUT, "a healthy agent with docker")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()


def job_body(job_id: str, count: int) -> dict:
    return {
        "job_id": job_id,
        "type": "service",
        "task_groups": [
            {
                "name": "web",
                "count": count,
                "tasks": [
                    {
                        "name": "t",
                        "driver": "docker",
                        "config": {"image": TEST_IMAGE, "command": COMMAND},
                        "resources": {"cpu": 20, "memory": 16},
                    }
                ],
            }
        ],
    }


def running_allocs(url: str, job_id: str) -> int:
    job = requests.get(f"{url}/jobs/{job_id}", timeout=5).json()
    return sum(
        1
        for a in job.get("allocations", [])
        if a.get("status") == "running" and a.get("desired_status") == "run"
    )


def orch_run(cluster: Cluster, engine, count: int) -> float:
    """POST the job -> the server reports `count` allocations running (seconds)."""
    job_id = f"{JOB_PREFIX}{count}-{uuid.uuid4().hex[:6]}"
    started = time.monotonic()
    resp = requests.post(f"{cluster.url}/jobs", json=job_body(job_id, count), timeout=10)
    resp.raise_for_status()
    wait_until(
        lambda: running_allocs(cluster.url, job_id) == count,
        RUN_TIMEOUT,
        f"{count} allocations of {job_id} running",
    )
    elapsed = time.monotonic() - started
    requests.delete(f"{cluster.url}/jobs/{job_id}", timeout=30)
    wait_until(
        lambda: not engine.containers.list(all=True, filters={"label": f"orch.job_id={job_id}"}),
        RUN_TIMEOUT,
        f"containers of {job_id} removed",
    )
    return elapsed


def floor_run(engine, count: int) -> float:
    """`count` plain `docker run -d` from FLOOR_THREADS threads (seconds)."""
    run_id = uuid.uuid4().hex[:8]

    def run_one(_):
        return engine.containers.run(TEST_IMAGE, COMMAND, detach=True, labels={BENCH_LABEL: run_id})

    started = time.monotonic()
    with ThreadPoolExecutor(FLOOR_THREADS) as pool:
        containers = list(pool.map(run_one, range(count)))
    elapsed = time.monotonic() - started
    with ThreadPoolExecutor(FLOOR_THREADS) as pool:
        list(pool.map(lambda c: c.remove(force=True), containers))
    return elapsed


def remove_leftovers(engine) -> None:
    for container in engine.containers.list(all=True, filters={"label": BENCH_LABEL}):
        container.remove(force=True)
    for container in engine.containers.list(all=True, filters={"label": "orch.job_id"}):
        if container.labels.get("orch.job_id", "").startswith(JOB_PREFIX):
            container.remove(force=True)


# ---- main -----------------------------------------------------------------


def measure(pyz: Path, counts: list[int], runs: int) -> dict:
    engine = docker.from_env(timeout=120, max_pool_size=32)
    engine.ping()
    ensure_test_image(engine)
    workdir = Path(tempfile.mkdtemp(prefix="orch-bench-docker-"))
    cluster = Cluster(pyz, workdir)
    results = {c: {"orch": [], "floor": []} for c in counts}
    ok = False
    try:
        cluster.start()
        log(f"cluster up: {cluster.url} (logs in {workdir})")
        for run in range(1, runs + 1):
            for count in counts:
                floor = floor_run(engine, count)
                took = orch_run(cluster, engine, count)
                results[count]["floor"].append(floor)
                results[count]["orch"].append(took)
                log(
                    f"run {run} replicas={count}: orch {took:.2f}s, floor {floor:.2f}s "
                    f"(x{took / floor:.2f})"
                )
        ok = True
    finally:
        cluster.stop()
        remove_leftovers(engine)
        engine.close()
        if ok:  # the logs are kept only to explain a failure
            shutil.rmtree(workdir, ignore_errors=True)
    return results


def summary(results: dict) -> dict:
    out = {}
    for count, series in results.items():
        orch, floor = statistics.median(series["orch"]), statistics.median(series["floor"])
        out[f"replicas{count}_s"] = round(orch, 3)
        out[f"floor{count}_s"] = round(floor, 3)
        out[f"ratio{count}"] = round(orch / floor, 3)
        # Each run's orch and floor ran back to back, under the same load.
        out[f"paired_ratio{count}"] = round(
            statistics.median(o / f for o, f in zip(series["orch"], series["floor"], strict=True)),
            3,
        )
        out[f"runs{count}"] = len(series["orch"])
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pyz", type=Path, default=DEFAULT_PYZ)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="one quick run of 10 replicas")
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    args = parser.parse_args(argv)
    if not args.pyz.exists():
        subprocess.run([sys.executable, str(ROOT / "build" / "make_pyz.py")], check=True)
    counts, runs = ([10], 1) if args.smoke else ([10, 50], max(1, args.runs))
    machine = host()
    figures = {**summary(measure(args.pyz, counts, runs)), "calibration": machine["calibration"]}
    for count in counts:
        ratio = figures[f"ratio{count}"]
        log(
            f"replicas={count}: orch {figures[f'replicas{count}_s']:.2f}s, floor "
            f"{figures[f'floor{count}_s']:.2f}s, ratio {ratio:.2f} "
            f"({'meets' if ratio <= TARGET_RATIO else 'misses'} <= {TARGET_RATIO}x; "
            f"median of paired runs {figures[f'paired_ratio{count}']:.2f})"
        )
    if args.json:
        for key in ("replicas10_s", "replicas50_s", "floor10_s", "floor50_s"):
            figures.setdefault(key, None)
        print(json.dumps(figures, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
