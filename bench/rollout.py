"""Rolling-update benchmark: N copies of an HTTP service, cold start against rollout.

Against a real ``orch dev --agents 3`` cluster started from the zipapp
(``dist/orch.pyz``; build it first with ``python build/make_pyz.py``), for
each N in ``--copies``, ``--runs`` times:

- cold start: POST a service job of N copies (a tiny python HTTP server on
  ``${ORCH_PORT_http}`` answering its version, an http check every 100 ms,
  ``update: {max_parallel: 5, min_healthy_time: 0}``), timed until
  ``GET /services/<name>?healthy=true`` lists all N;
- rollout: POST v2 of the same job, timed until its deployment is
  successful and every healthy instance (N of them) answers v2.

Throughout both, a client thread resolves the healthy instances from the
catalog and sends one request every 20 ms to the next one (so both phases
run under the same load); a refused or non-200 answer during the rollout is
a failed request (target 0). Medians
over the runs are reported with the ratio rollout / cold start (target
<= 1.5).

Docker Swarm is the peer: when ``docker info`` answers, the same N replicas
of ``orch-test/busybox:latest`` (httpd) are created and then updated with
``--update-parallelism 5 --update-delay 0s`` (an env change), both timed
until converged. A swarm this script initialised is left at the end.

    python bench/rollout.py                          # 10 and 50 copies, 3 runs
    python bench/rollout.py --copies 3 --runs 1 --no-swarm --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import requests
from benchutil import check_targets, host, log  # bench/ is on sys.path
from e2e import DEFAULT_PYZ, DevCluster

TARGETS = {"ratio_max": 1.5, "failed_requests": 0}
MAX_PARALLEL = 5
REQUEST_EVERY_S = 0.02
SWARM_IMAGE = "orch-test/busybox:latest"

WEB = textwrap.dedent(
    """
    import sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    PORT, VERSION = int(sys.argv[1]), sys.argv[2]

    class H(BaseHTTPRequestHandler):
        def do_GET(self):
            body = VERSION.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    ThreadingHTTPServer(("127.0.0.1", PORT), H).serve_forever()
    """
)


def web_job(job_id: str, script: Path, copies: int, version: str, delay: str) -> dict:
    """A service job of `copies` HTTP servers answering `version`."""
    check = {"type": "http", "path": "/", "interval": "100ms", "timeout": "1s"}
    command = [sys.executable, str(script), "${ORCH_PORT_http}", version]
    return {
        "job_id": job_id,
        "type": "service",
        "update": {
            "max_parallel": MAX_PARALLEL,
            "min_healthy_time": "0s",
            "healthy_deadline": "120s",
            "progress_deadline": "300s",
        },
        "task_groups": [
            {
                "name": "web",
                "count": copies,
                # Out of the catalog before the kill: a client that resolved
                # an old copy a moment ago still gets its answer.
                "shutdown_delay": delay,
                "network": {"ports": [{"label": "http"}]},
                "services": [{"name": job_id, "port": "http", "checks": [check]}],
                "tasks": [
                    {
                        "name": "srv",
                        "driver": "exec",
                        "config": {"command": command},
                        "resources": {"cpu": 10, "memory": 16},
                    }
                ],
            }
        ],
    }


# ---- the orch side ------------------------------------------------------------


class Orch:
    """Thin JSON client of the cluster under test."""

    def __init__(self, url: str):
        self.url = url
        self.session = requests.Session()

    def get(self, path: str) -> dict:
        resp = self.session.get(self.url + path, timeout=10)
        resp.raise_for_status()
        return resp.json()

    def submit(self, job: dict) -> None:
        resp = self.session.post(self.url + "/jobs", json=job, timeout=30)
        if resp.status_code != 200:
            raise RuntimeError(f"submit {job['job_id']}: {resp.status_code} {resp.text}")

    def healthy(self, service: str) -> list[dict]:
        return self.get(f"/services/{service}?healthy=true")["instances"]

    def stop(self, job_id: str) -> None:
        self.session.delete(f"{self.url}/jobs/{job_id}", timeout=30)


def wait_for(predicate, timeout: float, what: str) -> float:
    """Seconds until predicate() is true, polled every 20 ms."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        try:
            if predicate():
                return time.perf_counter() - started
        except (requests.RequestException, ValueError, KeyError):
            pass
        time.sleep(0.02)
    raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}")


def answers(instances: list[dict]) -> list[str]:
    """What each instance answers on "/" ("" where it does not), asked 8 at a time:
    50 copies asked one after another would add their round trips to the rollout's time."""

    def ask(inst: dict) -> str:
        try:
            return requests.get(f"http://{inst['address']}:{inst['port']}/", timeout=2).text
        except requests.RequestException:
            return ""

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(ask, instances))


class Client(threading.Thread):
    """Sends one request every 20 ms to the next healthy instance; counts failures."""

    def __init__(self, orch: Orch, service: str):
        super().__init__(daemon=True)
        self.orch, self.service = Orch(orch.url), service
        self.sent = self.failed = 0
        self.errors: list[str] = []
        self.done = threading.Event()
        self._http = requests.Session()

    def run(self) -> None:
        turn = 0
        while not self.done.wait(REQUEST_EVERY_S):
            try:
                instances = self.orch.healthy(self.service)
            except requests.RequestException:
                continue  # the catalog's read is not the service's failure
            if not instances:
                continue
            inst = instances[turn % len(instances)]
            turn += 1
            self.sent += 1
            try:
                url = f"http://{inst['address']}:{inst['port']}/"
                resp = self._http.get(url, timeout=2)
                ok, why = resp.status_code == 200, f"HTTP {resp.status_code}"
            except requests.RequestException as exc:
                ok, why = False, type(exc).__name__
            if not ok:
                self.failed += 1
                self.errors.append(f"{inst['address']}:{inst['port']} {why}")

    def stop(self) -> None:
        self.done.set()
        self.join(10)


def one_run(orch: Orch, script: Path, copies: int, run: int, delay: str) -> dict:
    """Cold start then rollout of `copies` copies; the job is stopped at the end."""
    job_id = f"roll{copies}-{run}"
    budget = 60 + 4 * copies
    # The client runs through both phases: each is measured under the same load.
    client = Client(orch, job_id)
    client.start()
    try:
        orch.submit(web_job(job_id, script, copies, "v1", delay))
        cold = wait_for(lambda: len(orch.healthy(job_id)) >= copies, budget, f"{copies} healthy v1")
        sent, failed, errors = client.sent, client.failed, len(client.errors)
        started = time.perf_counter()
        orch.submit(web_job(job_id, script, copies, "v2", delay))
        served: list[float] = []

        def rolled() -> bool:
            # The catalog can show N healthy v2 copies before the deployment
            # is marked successful: both moments are kept. The copies are asked
            # only once the deployment counts N healthy new ones (asking N
            # copies every 20 ms would load the machine the rollout runs on).
            d = orch.get(f"/jobs/{job_id}/deployment")
            if d.get("status") == "failed":
                raise RuntimeError(f"deployment failed: {d.get('status_description')}")
            if d.get("job_version") != 1:
                return False
            if not served and d["groups"]["web"]["healthy"] >= copies:
                healthy = orch.healthy(job_id)
                if len(healthy) == copies and answers(healthy) == ["v2"] * copies:
                    served.append(time.perf_counter() - started)
            return bool(served) and d.get("status") == "successful"

        wait_for(rolled, budget, f"{copies} copies rolled to v2")
        rollout = time.perf_counter() - started
    finally:
        client.stop()
        orch.stop(job_id)
    sent, failed = client.sent - sent, client.failed - failed
    wait_for(lambda: not orch.healthy(job_id), budget, f"{job_id} to stop")
    log(
        f"  {copies} copies run {run}: cold {cold:.2f}s rollout {rollout:.2f}s "
        f"(all on v2 after {served[0]:.2f}s) "
        f"requests {sent} failed {failed} {client.errors[errors:][:3]}"
    )
    return {
        "cold_s": cold,
        "rollout_s": rollout,
        "served_v2_s": served[0],
        "sent": sent,
        "failed": failed,
    }


def bench_orch(args: argparse.Namespace, workdir: Path) -> dict:
    """Every N in --copies, --runs times, on one dev cluster."""
    script = workdir / "web.py"
    script.write_text(WEB)
    cluster = DevCluster(
        args.pyz, workdir, agents=3, shiv_root=workdir / "shiv", log_level="warning", name="dev"
    )
    out: dict = {}
    try:
        cluster.wait_healthy()
        orch = Orch(cluster.url)
        for copies in args.copies:
            runs = [one_run(orch, script, copies, r, args.shutdown_delay) for r in range(args.runs)]
            cold = statistics.median(r["cold_s"] for r in runs)
            roll = statistics.median(r["rollout_s"] for r in runs)
            out[str(copies)] = {
                "cold_s": round(cold, 2),
                "rollout_s": round(roll, 2),
                "ratio": round(roll / cold, 2),
                "served_v2_s": round(statistics.median(r["served_v2_s"] for r in runs), 2),
                "requests": sum(r["sent"] for r in runs),
                "failed_requests": sum(r["failed"] for r in runs),
            }
    finally:
        cluster.stop()
    return out


# ---- the Docker Swarm peer -------------------------------------------------


def docker(*argv: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["docker", *argv], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )


def swarm_up() -> tuple[bool, str]:
    """(we initialised it, why not usable or ""): joins nothing, only inits."""
    try:
        if docker("info", timeout=20).returncode != 0:
            return False, "no Docker engine answers"
    except (OSError, subprocess.TimeoutExpired):
        return False, "no docker client or engine"
    state = docker("info", "--format", "{{.Swarm.LocalNodeState}}").stdout.strip()
    if state == "active":
        return False, ""
    init = docker("swarm", "init", "--advertise-addr", "127.0.0.1")
    if init.returncode != 0:
        return False, f"docker swarm init refused: {init.stderr.strip()[:200]}"
    return True, ""


def swarm_run(copies: int, run: int) -> dict:
    """Create then update `copies` httpd replicas; both timed until converged."""
    name = f"orchbench-{copies}-{run}"
    create = ["service", "create", "--detach=false", "--quiet", "--name", name]
    create += ["--replicas", str(copies), "--env", "V=1", SWARM_IMAGE]
    create += ["httpd", "-f", "-p", "8080"]
    try:
        started = time.perf_counter()
        made = docker(*create)
        cold = time.perf_counter() - started
        if made.returncode != 0:
            raise RuntimeError(f"docker service create: {made.stderr.strip()[:300]}")
        update = ["service", "update", "--detach=false", "--quiet", "--env-add", "V=2"]
        update += ["--update-parallelism", str(MAX_PARALLEL), "--update-delay", "0s", name]
        started = time.perf_counter()
        done = docker(*update)
        rollout = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"docker service update: {done.stderr.strip()[:300]}")
    finally:
        docker("service", "rm", name)
    log(f"  swarm {copies} replicas run {run}: create {cold:.2f}s update {rollout:.2f}s")
    return {"cold_s": cold, "rollout_s": rollout}


def bench_swarm(args: argparse.Namespace) -> dict:
    """Swarm figures per N, or {"skipped": why}."""
    if args.no_swarm:
        return {"skipped": "--no-swarm"}
    ours, why = swarm_up()
    if why:
        log(f"swarm peer skipped: {why}")
        return {"skipped": why}
    out: dict = {}
    try:
        for copies in args.copies:
            runs = [swarm_run(copies, r) for r in range(args.runs)]
            cold = statistics.median(r["cold_s"] for r in runs)
            roll = statistics.median(r["rollout_s"] for r in runs)
            out[str(copies)] = {
                "cold_s": round(cold, 2),
                "rollout_s": round(roll, 2),
                "ratio": round(roll / cold, 2),
            }
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        log(f"swarm peer failed: {exc}")
        out["skipped"] = str(exc)[:300]
    finally:
        if ours:
            docker("swarm", "leave", "--force")
    return out


# ---- main -------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pyz", type=Path, default=DEFAULT_PYZ, help="the built zipapp")
    p.add_argument("--copies", default="10,50", help="comma-separated copy counts")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument(
        "--shutdown-delay", default="500ms", help="the group's shutdown_delay (0s: kill at once)"
    )
    p.add_argument("--no-swarm", action="store_true", help="skip the Docker Swarm peer")
    p.add_argument("--json", action="store_true", help="end with one JSON line")
    p.add_argument("--workdir", default=None, help="where the cluster's files go")
    args = p.parse_args(argv)
    args.copies = [int(c) for c in args.copies.split(",") if c.strip()]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.pyz.is_file():
        sys.exit(f"{args.pyz} not found: build it with `python build/make_pyz.py`")
    workdir = Path(tempfile.mkdtemp(prefix="orch-bench-rollout-", dir=args.workdir))
    memory_gb = round(psutil.virtual_memory().total / 2**30, 1)
    result: dict = {"machine": host(memory_gb=memory_gb), "max_parallel": MAX_PARALLEL}
    result["runs"] = args.runs
    result["shutdown_delay"] = args.shutdown_delay
    result["calibration"] = result["machine"]["calibration"]
    result["orch"] = bench_orch(args, workdir)
    result["swarm"] = bench_swarm(args)
    figures = result["orch"].values()
    result["ratio_max"] = max(f["ratio"] for f in figures)
    result["failed_requests"] = sum(f["failed_requests"] for f in figures)
    for copies, f in result["orch"].items():
        peer = result["swarm"].get(copies, {})
        log(
            f"{copies:>3} copies: orch cold {f['cold_s']}s rollout {f['rollout_s']}s "
            f"(x{f['ratio']}), failed {f['failed_requests']}/{f['requests']}; "
            f"swarm {peer or result['swarm'].get('skipped', '-')}"
        )
    result["targets_met"] = check_targets(result, TARGETS)
    if args.json:
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
