"""`bench/e2e.py --servers N`: one server on SQLite beside 1 and N servers on PostgreSQL.

Three `orch dev --agents A` clusters from the zipapp, one after another, in
one run (same host, same load): SQLite with one server (the default), then
one server and N servers (``orch dev --servers N --database URL``) on a
throwaway PostgreSQL started here. Each is measured the same way:

- submit -> running: ``--jobs`` service jobs one after another, each posted
  to the next server in turn and polled on that server until ``running``
  (on PostgreSQL a follower's job reaches the leader through the database,
  and the allocation's status comes back the same way);
- reads/s: ``GET /nodes`` for ``--read-seconds`` from ``READERS`` Python
  client *processes* (a thread pool would measure our own GIL), each on its
  own keep-alive connection to one server (spread over all of them); with
  ``--wrk``, from one Debian `wrk` per server instead (a C client: the
  clients leave the host's cores to the servers), at several totals of open
  connections spread over the servers, each cluster counted at its best.
  Reads are answered from each server's memory, so N servers should serve
  about N times the reads of one, as far as the host's cores allow.

The host calibration (``benchutil.host()``: CPU seconds of JSON round trips
of a heartbeat body, and the load average) is taken at the start and at the
end: on a shared machine it says how fast the host ran.
"""

from __future__ import annotations

import json
import multiprocessing
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from benchutil import JsonConnection, host, log, percentile
from e2e import DevCluster, job_body, settle

READERS = 6
JOB_TIMEOUT = 30.0
SERVER_URL = re.compile(r"orch dev: server (http://\S+) \(pid")


def server_urls(cluster: DevCluster, servers: int, timeout: float = 60.0) -> list[str]:
    """Every server's URL, as the launcher printed them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = SERVER_URL.findall(cluster.log_path.read_text(errors="replace"))
        if len(found) >= servers:
            return found[:servers]
        time.sleep(0.05)
    raise RuntimeError(f"orch dev did not print {servers} server URLs; see {cluster.log_path}")


def submit_to_running(urls: list[str], jobs: int, prefix: str) -> list[float]:
    """Seconds from POST to GET /jobs/<id> saying running, per job, servers in turn."""
    sessions = [JsonConnection(u, timeout=10) for u in urls]
    latencies = []
    try:
        for i in range(jobs):
            session, job_id = sessions[i % len(sessions)], f"{prefix}-{i}"
            started = time.perf_counter()
            code, doc = session.request(
                "POST", "/jobs", job_body(job_id, "exec sleep 30", "service")
            )
            if code != 200:
                raise RuntimeError(f"submit {job_id}: {code} {doc}")
            while True:
                code, doc = session.request("GET", f"/jobs/{job_id}")
                if code == 200 and doc["status"] == "running":
                    latencies.append(time.perf_counter() - started)
                    break
                if time.perf_counter() - started > JOB_TIMEOUT:
                    raise RuntimeError(f"job {job_id} not running after {JOB_TIMEOUT}s")
            code, doc = session.request("DELETE", f"/jobs/{job_id}")
            if code != 200:
                raise RuntimeError(f"stop {job_id}: {code} {doc}")
    finally:
        for session in sessions:
            session.close()
    return latencies


def _reader(url: str, seconds: float, go, out) -> None:
    """One client process: GET /nodes on one connection for ``seconds``."""
    session = JsonConnection(url, timeout=10)
    count = errors = 0
    go.wait()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        code, _ = session.request("GET", "/nodes")
        if code == 200:
            count += 1
        else:
            errors += 1
    session.close()
    out.put((count, errors))


# Total open connections, spread evenly over the servers; each level is
# run in turn and a cluster's figure is its best level. One fixed count per
# server would compare a latency-bound single server (2 connections leave it
# idle between hand-offs) with three of them; the same total at every level,
# and the best of each, compares what each set-up can serve.
WRK_TOTALS = (3, 6, 12, 24)
WRK_TOTAL = re.compile(r"(\d+) requests in ")
WRK_BAD = re.compile(r"Non-2xx or 3xx responses: (\d+)")


def _wrk_level(cluster: DevCluster, urls: list[str], total: int, seconds: float) -> dict:
    """One level: ``total`` connections over ``urls`` (one wrk per server)."""
    per_server = max(1, round(total / len(urls)))
    cpu0 = cluster.cpu_seconds()["server"]
    procs = [
        subprocess.Popen(
            ["wrk", "-t1", f"-c{per_server}", f"-d{seconds:g}s", url + "/nodes"],
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for url in urls
    ]
    outputs = [proc.communicate(timeout=seconds + 60)[0] for proc in procs]
    cpu = cluster.cpu_seconds()["server"] - cpu0
    total_reads = sum(int(m.group(1)) for out in outputs if (m := WRK_TOTAL.search(out)))
    bad = sum(int(m.group(1)) for out in outputs if (m := WRK_BAD.search(out)))
    reads = total_reads - bad
    return {
        "connections": per_server * len(urls),
        "reads_per_s": round(reads / seconds, 1),
        "server_cpu_ms_per_read": round(cpu * 1000 / reads, 3) if reads else None,
        "server_cpu_s": round(cpu, 2),
        "errors": bad,
    }


def wrk_reads(cluster: DevCluster, urls: list[str], seconds: float) -> dict:
    """Reads per second from one `wrk` per server (C, a few microseconds of
    client CPU a request: on a 2-core host Python readers take much of the
    CPU the servers would use), at each of WRK_TOTALS; the best level counts."""
    levels = [_wrk_level(cluster, urls, total, seconds) for total in WRK_TOTALS]
    for level in levels:
        log(
            f"  {level['connections']} connections: {level['reads_per_s']} reads/s, "
            f"{level['server_cpu_ms_per_read']} ms server CPU per read"
        )
    best = max(levels, key=lambda level: level["reads_per_s"])
    cpu_per_read = best["server_cpu_ms_per_read"]
    return {
        "reads_per_s": best["reads_per_s"],
        "reads_per_server_cpu_s": round(1000 / cpu_per_read, 1) if cpu_per_read else None,
        "server_cpu_s": best["server_cpu_s"],
        "errors": sum(level["errors"] for level in levels),
        "readers": f"wrk, best of {len(levels)} levels at {best['connections']} connections",
        "levels": levels,
    }


def read_throughput(cluster: DevCluster, urls: list[str], seconds: float, wrk: bool) -> dict:
    """Reads per second served by ``urls`` to READERS client processes (or
    wrk), and per CPU second of the servers (what more cores would multiply)."""
    if wrk:
        return wrk_reads(cluster, urls, seconds)
    ctx = multiprocessing.get_context("spawn")
    go, out = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(target=_reader, args=(urls[i % len(urls)], seconds, go, out))
        for i in range(READERS)
    ]
    for proc in procs:
        proc.start()
    time.sleep(1.0)  # every client connected and waiting
    cpu0 = cluster.cpu_seconds()["server"]
    go.set()
    results = [out.get(timeout=seconds + 60) for _ in procs]
    cpu = cluster.cpu_seconds()["server"] - cpu0
    for proc in procs:
        proc.join(timeout=10)
    reads = sum(r[0] for r in results)
    return {
        "reads_per_s": round(reads / seconds, 1),
        "reads_per_server_cpu_s": round(reads / cpu, 1) if cpu else None,
        "server_cpu_s": round(cpu, 2),
        "errors": sum(r[1] for r in results),
        "readers": READERS,
    }


def fresh_database(url: str, name: str) -> str:
    """A new empty database beside ``url``'s; its URL."""
    import psycopg

    base = url.rsplit("/", 1)[0]
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"{base}/{name}"


def measure(args, workdir: Path, name: str, servers: int, database: str | None) -> dict:
    extra: tuple[str, ...] = ("--servers", str(servers))
    if database:
        extra += ("--database", database)
    cluster = DevCluster(
        args.pyz, workdir, agents=args.agents, shiv_root=workdir / "shiv",
        log_level=args.log_level, name=name, extra=extra, python=args.python,
    )  # fmt: skip
    try:
        started = cluster.wait_healthy()
        urls = server_urls(cluster, servers)
        log(f"{name}: {servers} server(s) {urls}, healthy in {started:.2f}s")
        ms = [x * 1000 for x in submit_to_running(urls, args.jobs, f"{name}-lat")]
        reads = read_throughput(cluster, urls, args.read_seconds, args.wrk)
        out = {
            "servers": servers,
            "store": "postgresql" if database else "sqlite",
            "latency_p50_ms": round(percentile(ms, 50), 2),
            "latency_p99_ms": round(percentile(ms, 99), 2),
            "latency_mean_ms": round(statistics.fmean(ms), 2),
            "latency_jobs": len(ms),
            **reads,
        }
        log(
            f"{name}: submit->running p50 {out['latency_p50_ms']} ms, "
            f"p99 {out['latency_p99_ms']} ms; reads {out['reads_per_s']}/s, "
            f"{out['reads_per_server_cpu_s']} per server CPU second "
            f"(readers: {out['readers']}, {out['errors']} errors)"
        )
        return out
    finally:
        cluster.stop()


def run_ha(args) -> int:
    """The three clusters, one JSON object with their figures."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from orch.dev.postgres import ThrowawayPostgres

    if args.smoke:
        args.read_seconds = min(args.read_seconds, 2.0)
    settle(args.smoke)
    workdir = Path(tempfile.mkdtemp(prefix="orch-bench-ha-", dir=args.workdir))
    start = host(mem_total_mb=round(psutil.virtual_memory().total / 2**20))
    result: dict = {**start, "agents": args.agents, "calibration_start": start["calibration"]}
    pg = ThrowawayPostgres(str(workdir / "pg"))
    try:
        database = pg.start()
        result["sqlite_1"] = measure(args, workdir, "sqlite-1", 1, None)
        result["postgres_1"] = measure(args, workdir, "postgres-1", 1, database)
        result[f"postgres_{args.servers}"] = measure(
            args, workdir, f"postgres-{args.servers}", args.servers, fresh_database(database, "ha")
        )
    finally:
        pg.stop()
        if args.keep:
            log(f"work dir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    result["calibration_end"] = host()["calibration"]
    one, many = (
        result["postgres_1"]["reads_per_s"],
        result[f"postgres_{args.servers}"]["reads_per_s"],
    )
    result["reads_ratio"] = round(many / one, 2) if one else None
    log(f"reads: {args.servers} servers {many}/s vs 1 server {one}/s: x{result['reads_ratio']}")
    if args.json:
        print(json.dumps(result), flush=True)
    return 0
