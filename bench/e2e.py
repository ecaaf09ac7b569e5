"""End-to-end benchmark: a real `orch dev --agents 3` cluster from the zipapp.

Over 400 lines on purpose: a benchmark script kept in one file so it can be run and read alone.

Every figure is taken from the outside, over HTTP, against separate processes
started from the built zipapp (``dist/orch.pyz``; build it first with
``python build/make_pyz.py``):

- cold start: ``Popen(orch dev)`` until ``GET /nodes`` shows every node
  healthy, ``--runs`` times, each a fresh cluster. A private, empty
  ``SHIV_ROOT`` makes the first launch pay shiv's one-time extraction; that
  launch is reported on its own (``cold_start_extract_s``) and the median is
  taken over the ``--runs`` launches after it;
- submit -> running: ``--jobs`` service jobs (``sleep 30``) one after
  another: POST /jobs, then GET /jobs/<id> until the server says
  ``running`` (a blocking query on the job's ``X-Orch-Index``; against a
  build without one, a tight poll); the job is stopped (DELETE) before the
  next one;
- batch submit -> complete: ``--jobs`` batch jobs (``true``) one after
  another, each until GET /jobs/<id> says ``complete``: what a script that
  runs short jobs in turn waits;
- batch throughput: ``--batch`` batch jobs running ``true`` submitted from
  ``--threads`` client threads, timed from the first POST until the server
  reports every one of them ``complete``;
- resident memory (psutil RSS) of the server and of each agent, idle (the
  cluster just started and settled) and after the workloads.

The cluster runs in its own session; at the end it gets SIGTERM, then every
process of it still alive (server, agents, tasks) is killed by PID/group.

    python bench/e2e.py                 # full run, human-readable
    python bench/e2e.py --json          # ... last line: one JSON object
    python bench/e2e.py --smoke --json  # a tiny version (seconds)
    python bench/e2e.py --python /usr/bin/python3.11  # the cluster on another CPython build
    python bench/e2e.py --servers 3     # SQLite beside 1 and 3 servers on PostgreSQL
                                        # (bench/e2e_ha.py): latency, reads/s
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import requests
from benchutil import (
    JsonConnection,
    check_targets,
    free_port,  # bench/ is on sys.path
    host,
    interpreter,
    log,
    mb,
    median,
    percentile,
    spawn,
    stop_server,
    wait_disk_quiet,
)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PYZ = ROOT / "dist" / "orch.pyz"

# At calibration 1.0 (benchutil.calibration); see scaled_targets.
TARGETS = {
    "cold_start_s": 0.8,
    "latency_p50_ms": 10.0,
    "latency_p99_ms": 200.0,
    "batch_jobs_per_s": 200.0,
    "batch_vs_floor": 0.30,
    "server_cpu_ms_per_job": 1.5,
    "agent_cpu_ms_per_job": 2.0,
    "rss_agent_mb": 30.0,
    "rss_server_mb": 60.0,
}
HIGHER_IS_BETTER = {"batch_jobs_per_s", "batch_vs_floor"}
UNSCALED = {"batch_vs_floor", "rss_agent_mb", "rss_server_mb"}  # ratios and sizes


def scaled_targets(calibration: float) -> dict:
    """The targets on a host of this calibration: times x it, rates / it."""
    out = {}
    for key, target in TARGETS.items():
        if key in UNSCALED:
            out[key] = target
        elif key in HIGHER_IS_BETTER:
            out[key] = round(target / calibration, 3)
        else:
            out[key] = round(target * calibration, 3)
    return out


START_TIMEOUT = 60.0  # a cluster not healthy by then is a failure
JOB_TIMEOUT = 30.0  # one job not running by then is a failure
BATCH_TIMEOUT = 300.0
# A blocking query's wait: well under the clients' socket timeouts (10 s).
WATCH_WAIT_S = 5.0
SETTLE_S = 2.0  # idle memory is read this long after start


# ---- the cluster ----------------------------------------------------------


class DevCluster:
    """One `orch dev` launcher process and everything it starts."""

    def __init__(
        self,
        pyz: Path,
        workdir: Path,
        *,
        agents: int,
        shiv_root: Path,
        log_level: str,
        name: str,
        extra: tuple[str, ...] = (),
        python: str = sys.executable,
    ):
        self.agents = agents
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = workdir / name
        self.log_path = workdir / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
        env["SHIV_ROOT"] = str(shiv_root)
        self.started = time.perf_counter()
        self.popen = spawn(
            [
                python,
                str(pyz),
                "dev",
                "--agents",
                str(agents),
                "--port",
                str(self.port),
                "--data-dir",
                str(self.data_dir),
                "--log-level",
                log_level,
                *extra,
            ],
            self.log_path,
            env,
        )
        self.session = requests.Session()
        self._known: dict[int, psutil.Process] = {}

    # -- readiness -------------------------------------------------------

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> float:
        """Seconds from Popen until GET /nodes shows every node healthy."""
        deadline = self.started + timeout
        while time.perf_counter() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(
                    f"orch dev exited with {self.popen.returncode}; see {self.log_path}"
                )
            try:
                resp = self.session.get(self.url + "/nodes", timeout=1)
                if resp.status_code == 200:
                    healthy = sum(1 for n in resp.json()["nodes"] if n.get("healthy"))
                    if healthy >= self.agents:
                        return time.perf_counter() - self.started
            except (requests.RequestException, ValueError, KeyError):
                pass
            time.sleep(0.002)
        raise RuntimeError(f"cluster not healthy after {timeout}s; see {self.log_path}")

    # -- processes ---------------------------------------------------------

    def processes(self) -> dict[str, list[psutil.Process]]:
        """{"server": [proc], "agent": [procs]}: the launcher's children."""
        out: dict[str, list[psutil.Process]] = {"server": [], "agent": []}
        for child in psutil.Process(self.popen.pid).children():
            self._known[child.pid] = child
            try:
                argv = child.cmdline()
            except psutil.Error:
                continue
            for role in ("server", "agent"):  # [python, orch.pyz, role, ...]
                if role in argv[1:4]:
                    out[role].append(child)
                    break
        return out

    def rss(self) -> dict:
        procs = self.processes()
        agents = [p.memory_info().rss for p in procs["agent"]]
        server = [p.memory_info().rss for p in procs["server"]]
        return {
            "server_mb": mb(server[0]) if server else None,
            "agents_mb": [mb(a) for a in agents],
            "launcher_mb": mb(psutil.Process(self.popen.pid).memory_info().rss),
        }

    def cpu_seconds(self) -> dict:
        """CPU seconds (user + system) by process: server, agents, supervisors, tasks.

        `agents` is the agent processes' own time; `supervisors` the own time
        of every live process under an agent (its task supervisor); `tasks`
        what those reaped (the tasks themselves, and anything else they
        started and waited for). `agents_total` is the three together: the
        agent side of a job, as `agents` was reported before the split."""

        def own(proc: psutil.Process) -> tuple[float, float]:
            t = proc.cpu_times()
            return t.user + t.system, t.children_user + t.children_system

        out = dict.fromkeys(("server", "agents", "supervisors", "tasks"), 0.0)
        procs = self.processes()
        for proc in procs["server"]:
            out["server"] += sum(own(proc))
        for agent in procs["agent"]:
            mine, reaped = own(agent)
            out["agents"] += mine
            out["tasks"] += reaped  # tasks an agent reaped itself (none with a supervisor)
            for child in agent.children(recursive=True):
                try:
                    mine, reaped = own(child)
                except psutil.Error:
                    continue
                out["supervisors"] += mine
                out["tasks"] += reaped
        out["agents_total"] = out["agents"] + out["supervisors"] + out["tasks"]
        return out

    def _remember_all(self) -> None:
        try:
            for proc in psutil.Process(self.popen.pid).children(recursive=True):
                self._known[proc.pid] = proc
        except psutil.Error:
            pass

    def stop(self) -> None:
        """SIGTERM the launcher (it stops agents, their tasks, then the server);
        whatever is left afterwards is killed by process group and by PID."""
        self._remember_all()
        self.session.close()
        stop_server(self.popen)  # the launcher and its own group
        # Then each child's group (they run in sessions of their own), then
        # any remembered process (tasks) still alive.
        for pgid in self._known:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for proc in self._known.values():
            try:
                if proc.is_running():
                    proc.kill()
            except psutil.Error:
                pass


def settle(smoke: bool = False, max_s: float = 90.0) -> None:
    """Flush dirty files to disk and wait until the disks are quiet (`max_s` at most).

    A smoke run measures nothing, so it waits 5 s at most: on a shared
    machine the disks may never go quiet, and four 90 s waits outlast any
    test's patience."""
    waited = wait_disk_quiet(max_s=5.0 if smoke else max_s)
    if waited > 3:
        log(f"waited {waited:.1f}s for the disks to go quiet")


# ---- workloads ----------------------------------------------------------------


def job_body(job_id: str, command: str, type_: str) -> dict:
    return {
        "job_id": job_id,
        "type": type_,
        "task_groups": [
            {
                "name": "g",
                "count": 1,
                "tasks": [
                    {
                        "name": "t",
                        "driver": "exec",
                        "config": {"command": command},
                        "resources": {"cpu": 10, "memory": 8},
                    }
                ],
            }
        ],
    }


def job_path(job_id: str, index: int) -> str:
    """GET /jobs/<id>; with the index of the last answer, a blocking query
    (answered when the job changes). A build without blocking queries sends
    no index, so its clients poll as they always did."""
    if not index:
        return f"/jobs/{job_id}"
    return f"/jobs/{job_id}?index={index}&wait={WATCH_WAIT_S:g}s"


def one_after_another(
    url: str, jobs: int, prefix: str, poll_sleep: float, type_: str, wanted: str
) -> list[float]:
    """Seconds from POST to GET /jobs/<id> saying `wanted`, per job, each job
    submitted once the one before got there: a service (`exec sleep 30`,
    stopped then) until running, or a batch job (`true`) until complete."""
    command = "exec sleep 30" if type_ == "service" else "true"
    session = JsonConnection(url, timeout=10)
    latencies = []
    try:
        for i in range(jobs):
            job_id = f"{prefix}-{i}"
            started = time.perf_counter()
            code, doc = session.request("POST", "/jobs", job_body(job_id, command, type_))
            if code != 200:
                raise RuntimeError(f"submit {job_id}: {code} {doc}")
            index = 0
            while True:
                status = session.request("GET", job_path(job_id, index))[1]["status"]
                unchanged, index = session.index == index, session.index
                if status == wanted:
                    latencies.append(time.perf_counter() - started)
                    break
                if status in ("failed", "dead", "complete", "lost"):
                    raise RuntimeError(f"job {job_id} went {status}, not {wanted}")
                if time.perf_counter() - started > JOB_TIMEOUT:
                    raise RuntimeError(f"job {job_id} not {wanted} after {JOB_TIMEOUT}s")
                if poll_sleep and unchanged:  # index 0: a build without blocking queries
                    time.sleep(poll_sleep)
            if type_ == "service":
                code, doc = session.request("DELETE", f"/jobs/{job_id}")
                if code != 200:
                    raise RuntimeError(f"stop {job_id}: {code} {doc}")
    finally:
        session.close()
    return latencies


def process_floor(total: int, threads: int) -> float:
    """Baseline: `total` runs of what a batch job runs (`/bin/sh -c true`),
    started and waited for from `threads` threads with subprocess, no orch.
    Processes per second: what this machine can do at best, right now."""
    shares = [total // threads + (1 if t < total % threads else 0) for t in range(threads)]

    def run(count: int) -> None:
        for _ in range(count):
            subprocess.run(["/bin/sh", "-c", "true"], check=True)

    workers = [threading.Thread(target=run, args=(n,)) for n in shares]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return total / (time.perf_counter() - started)


def batch_throughput(url: str, total: int, threads: int, prefix: str) -> dict:
    """Submit `total` batch jobs (`true`) from `threads` threads; time until
    the server reports all of them complete."""
    submitted: list[str] = []
    lock = threading.Lock()
    errors: list[str] = []
    done_submitting = threading.Event()
    shares = [list(range(t, total, threads)) for t in range(threads)]

    def submitter(indexes: list[int]) -> None:
        session = JsonConnection(url, timeout=30)
        try:
            for i in indexes:
                job_id = f"{prefix}-{i}"
                code, doc = session.request("POST", "/jobs", job_body(job_id, "true", "batch"))
                if code != 200:
                    errors.append(f"submit {job_id}: {code} {str(doc)[:200]}")
                    continue
                with lock:
                    submitted.append(job_id)
        except OSError as exc:
            errors.append(f"submitter: {exc}")
        finally:
            session.close()

    workers = [threading.Thread(target=submitter, args=(share,), daemon=True) for share in shares]
    started = time.perf_counter()
    for worker in workers:
        worker.start()

    def all_submitted() -> None:
        for worker in workers:
            worker.join()
        done_submitting.set()

    threading.Thread(target=all_submitted, daemon=True).start()

    # One checker walks the jobs in submission order: jobs finish roughly in
    # that order, so it mostly waits on one job at a time (light on the server).
    session = JsonConnection(url, timeout=10)
    checked, outcome = 0, {"complete": 0, "failed": 0}
    watched = ("", 0)  # the job last read and its index
    submit_s = None
    deadline = started + BATCH_TIMEOUT
    try:
        while time.perf_counter() < deadline:
            with lock:
                pending = submitted[checked:]
            if not pending:
                if done_submitting.is_set():
                    with lock:
                        if checked >= len(submitted):
                            break
                    continue
                time.sleep(0.005)
                continue
            if submit_s is None and done_submitting.is_set():
                submit_s = time.perf_counter() - started
            job_id = pending[0]
            after = watched[1] if watched[0] == job_id else 0
            status = session.request("GET", job_path(job_id, after))[1]["status"]
            watched = (job_id, session.index)
            if status in ("complete", "failed", "dead", "lost"):
                outcome["complete" if status == "complete" else "failed"] += 1
                checked += 1
            elif session.index == after:  # no blocking queries (index 0): poll
                time.sleep(0.005)
        else:
            raise RuntimeError(
                f"batch not finished after {BATCH_TIMEOUT}s ({checked} of {total} done)"
            )
    finally:
        session.close()
    elapsed = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"{len(errors)} submit errors, first: {errors[0]}")
    return {
        "jobs": total,
        "elapsed_s": round(elapsed, 3),
        "submit_s": round(submit_s or elapsed, 3),
        "jobs_per_s": round(total / elapsed, 1),
        **outcome,
    }


def floor_round(total: int, threads: int) -> dict:
    """One floor run: processes per second and CPU per process (ours and the children's)."""
    me0, kids0 = psutil.Process().cpu_times(), resource.getrusage(resource.RUSAGE_CHILDREN)
    rate = process_floor(total, threads)
    me1, kids1 = psutil.Process().cpu_times(), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (me1.user + me1.system - me0.user - me0.system) + (
        kids1.ru_utime + kids1.ru_stime - kids0.ru_utime - kids0.ru_stime
    )
    return {"jobs_per_s": round(rate, 1), "cpu_ms_per_job": round(cpu * 1000 / total, 3)}


def orch_round(cluster: DevCluster, total: int, threads: int, prefix: str) -> dict:
    """One batch through the cluster, with the CPU each kind of process spent per job."""
    cpu0, me0 = cluster.cpu_seconds(), psutil.Process().cpu_times()
    batch = batch_throughput(cluster.url, total, threads, prefix)
    cpu1, me1 = cluster.cpu_seconds(), psutil.Process().cpu_times()
    per_job = {k: round((cpu1[k] - cpu0[k]) * 1000 / total, 3) for k in cpu0}
    per_job["client"] = round((me1.user + me1.system - me0.user - me0.system) * 1000 / total, 3)
    batch["cpu_ms_per_job"] = per_job
    return batch


def batch_rounds(cluster: DevCluster, args: argparse.Namespace) -> dict:
    """`--repeat` rounds, each the floor then the same batch through orch; medians.

    Interleaved so that both see the same machine: on a shared host the load
    moves from minute to minute, and a ratio of two runs taken far apart
    measures the neighbours. CPU per job as well as jobs/s: the wall clock
    moves with everybody's load, CPU time much less. Before each run the
    earlier files are flushed (their writeback, and on a disk mounted with
    `discard` the trims of a clean-up, are not the run's work)."""
    rounds = []
    for i in range(args.repeat):
        settle(args.smoke, args.settle_max)
        floor = floor_round(args.batch, args.threads)
        settle(args.smoke, args.settle_max)
        batch = orch_round(cluster, args.batch, args.threads, f"batch{i}")
        batch["floor_jobs_per_s"] = floor["jobs_per_s"]
        batch["floor_cpu_ms_per_job"] = floor["cpu_ms_per_job"]
        batch["vs_floor"] = round(batch["jobs_per_s"] / floor["jobs_per_s"], 3)
        rounds.append(batch)
        log(
            f"round {i + 1}/{args.repeat}: floor {floor['jobs_per_s']}/s "
            f"({floor['cpu_ms_per_job']} ms CPU each); orch {batch['jobs']} jobs in "
            f"{batch['elapsed_s']}s = {batch['jobs_per_s']}/s (x{batch['vs_floor']} of the "
            f"floor; {batch['failed']} not complete); CPU ms per job {batch['cpu_ms_per_job']}"
        )
    per_job = {
        key: median([r["cpu_ms_per_job"][key] for r in rounds])
        for key in rounds[0]["cpu_ms_per_job"]
    }
    out = {
        "batch_rounds": len(rounds),
        "batch_jobs_per_s": median([r["jobs_per_s"] for r in rounds]),
        "batch_floor_jobs_per_s": median([r["floor_jobs_per_s"] for r in rounds]),
        "batch_vs_floor": median([r["vs_floor"] for r in rounds]),
        "floor_cpu_ms_per_job": median([r["floor_cpu_ms_per_job"] for r in rounds]),
        "cpu_ms_per_job": per_job,
        "server_cpu_ms_per_job": per_job["server"],
        "agent_cpu_ms_per_job": per_job["agents_total"],
        "batch_cpu_ms_per_job": median(
            [
                r["cpu_ms_per_job"]["server"]
                + r["cpu_ms_per_job"]["agents_total"]
                + r["cpu_ms_per_job"]["client"]
                for r in rounds
            ]
        ),
        "batch": rounds[-1],
        "batch_runs": rounds,
    }
    log(
        f"batch, median of {len(rounds)}: {out['batch_jobs_per_s']} jobs/s, floor "
        f"{out['batch_floor_jobs_per_s']}/s, batch_vs_floor {out['batch_vs_floor']}; "
        f"CPU ms per job {per_job}"
    )
    return out


# ---- main ---------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pyz", type=Path, default=DEFAULT_PYZ, help="the built zipapp")
    p.add_argument("--agents", type=int, default=3)
    p.add_argument(
        "--python",
        default=sys.executable,
        help="the interpreter that runs the cluster (default: this one); the client, "
        "the floor and the calibration always run in this one",
    )
    p.add_argument(
        "--runs", type=int, default=3, help="cold starts measured (after the extraction one)"
    )
    p.add_argument("--jobs", type=int, default=200, help="submit->running jobs, one after another")
    p.add_argument("--batch", type=int, default=1000, help="batch jobs for throughput")
    p.add_argument("--threads", type=int, default=8, help="client threads submitting the batch")
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="batch rounds, each the floor then orch, interleaved; figures are medians",
    )
    p.add_argument(
        "--poll-sleep",
        type=float,
        default=0.0,
        help="seconds between GET /jobs/<id> polls of a build without blocking queries "
        "(default 0: tight)",
    )
    p.add_argument(
        "--settle-max",
        type=float,
        default=90.0,
        help="longest wait for quiet disks before each run (default 90 s)",
    )
    p.add_argument("--log-level", default="INFO", help="log level of the cluster (default INFO)")
    p.add_argument(
        "--smoke", action="store_true", help="tiny sizes: runs 1, jobs 5, batch 20, repeat 2"
    )
    p.add_argument("--keep", action="store_true", help="keep the work dir (logs)")
    p.add_argument(
        "--workdir",
        default=None,
        help="where the cluster's data dirs go (default: the system temp dir)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.add_argument(
        "--servers",
        type=int,
        default=1,
        help="above 1: SQLite, then 1 and N servers on PostgreSQL (bench/e2e_ha.py)",
    )
    p.add_argument("--read-seconds", type=float, default=5.0, help="read load per cluster")
    p.add_argument("--wrk", action="store_true", help="with --servers: read load from wrk")
    args = p.parse_args(argv)
    if args.smoke:
        args.runs, args.jobs, args.batch, args.threads, args.repeat = 1, 5, 20, 4, 2
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.pyz.is_file():
        sys.exit(f"{args.pyz} not found: build it with `python build/make_pyz.py`")
    try:  # before anything starts: a --python that cannot run ends here
        cluster_python = interpreter(args.python)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        sys.exit(f"--python {args.python}: cannot run it ({exc})")
    if args.servers > 1:
        from e2e_ha import run_ha  # bench/ is on sys.path

        return run_ha(args)
    settle(args.smoke, args.settle_max)  # not paying for whatever ran before us
    workdir = Path(tempfile.mkdtemp(prefix="orch-bench-e2e-", dir=args.workdir))
    shiv_root = workdir / "shiv"  # empty: the first launch extracts
    result: dict = {
        **host(),
        "mem_total_mb": mb(psutil.virtual_memory().total),
        "agents": args.agents,
        "cluster_python": cluster_python,
    }
    log(
        f"cluster python: {cluster_python['executable']} {cluster_python['version']} "
        f"({cluster_python['libpython']})"
    )
    cluster = None
    try:
        # -- cold starts ------------------------------------------------------
        starts = []
        for run in range(args.runs + 1):
            cluster = DevCluster(
                args.pyz,
                workdir,
                agents=args.agents,
                shiv_root=shiv_root,
                log_level=args.log_level,
                name=f"dev-{run}",
                python=args.python,
            )
            took = cluster.wait_healthy()
            if run == 0:
                result["cold_start_extract_s"] = round(took, 3)
                log(f"cold start (first launch, shiv extraction): {took:.3f}s")
            else:
                starts.append(took)
                log(f"cold start run {run}: {took:.3f}s")
            if run < args.runs:
                cluster.stop()
                cluster = None
        result["cold_start_s"] = round(statistics.median(starts), 3)
        result["cold_start_runs_s"] = [round(s, 3) for s in starts]

        # -- idle memory (the last cluster, kept for the workloads) ------------
        time.sleep(SETTLE_S)
        idle = cluster.rss()
        result["rss_server_mb"] = idle["server_mb"]
        result["rss_agent_mb"] = max(idle["agents_mb"])
        result["rss_agents_mb"] = idle["agents_mb"]
        result["rss_launcher_mb"] = idle["launcher_mb"]
        # What really runs the server and the agents (the launcher forks them).
        result["cluster_exes"] = sorted(
            {proc.exe() for procs in cluster.processes().values() for proc in procs}
        )
        log(
            f"idle RSS: server {idle['server_mb']} MB, agents {idle['agents_mb']} MB, "
            f"launcher {idle['launcher_mb']} MB"
        )

        # -- submit -> running -------------------------------------------------
        lat = one_after_another(
            cluster.url, args.jobs, "lat", args.poll_sleep, "service", "running"
        )
        ms = [x * 1000 for x in lat]
        result.update(
            latency_p50_ms=round(percentile(ms, 50), 2),
            latency_p99_ms=round(percentile(ms, 99), 2),
            latency_max_ms=round(max(ms), 2),
            latency_mean_ms=round(statistics.fmean(ms), 2),
            latency_jobs=len(ms),
        )
        log(
            f"submit->running over {len(ms)} jobs: p50 {result['latency_p50_ms']} ms, "
            f"p99 {result['latency_p99_ms']} ms, max {result['latency_max_ms']} ms"
        )

        # -- a batch job's submit -> complete, one after another ---------------
        done = [
            x * 1000
            for x in one_after_another(
                cluster.url, args.jobs, "seq", args.poll_sleep, "batch", "complete"
            )
        ]
        result.update(
            batch_one_by_one_p50_ms=round(percentile(done, 50), 2),
            batch_one_by_one_p99_ms=round(percentile(done, 99), 2),
            # Two modes (a node that reported within 50 ms holds the end
            # back; another sends it at once), near half each: the p50 lands
            # in either from run to run, the mean does not.
            batch_one_by_one_mean_ms=round(statistics.fmean(done), 2),
        )
        log(
            f"batch submit->complete, one after another, over {len(done)} jobs: p50 "
            f"{result['batch_one_by_one_p50_ms']} ms, p99 {result['batch_one_by_one_p99_ms']} ms, "
            f"mean {result['batch_one_by_one_mean_ms']} ms"
        )

        # -- batch throughput, interleaved with the floor ----------------------
        result.update(batch_rounds(cluster, args))

        # -- memory after ------------------------------------------------------------
        after = cluster.rss()
        result["rss_server_after_mb"] = after["server_mb"]
        result["rss_agent_after_mb"] = max(after["agents_mb"])
        log(f"RSS after the run: server {after['server_mb']} MB, agents {after['agents_mb']} MB")
    finally:
        if cluster is not None:
            cluster.stop()
        if args.keep:
            log(f"work dir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
            settle(args.smoke, args.settle_max)  # the next run does not pay for our files

    log(f"targets at calibration {result['calibration']} (1.0 = a quiet host here):")
    result["targets_met"] = check_targets(
        result, scaled_targets(result["calibration"]), higher_is_better=HIGHER_IS_BETTER
    )
    if args.json:
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
