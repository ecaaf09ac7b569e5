"""Scheduler benchmark: simulated nodes, real server, real evaluation path.

Over 400 lines on purpose: a benchmark script kept in one file so it can be run and read alone.

Nodes are registered through ``Server.register`` (the seed's register body
with attributes and meta), jobs through ``Server.submit_job``; evaluations go
broker -> ``SchedulerWorker.process`` (reconcile, feasibility, stack) ->
``StateStore.commit_plan`` (SQLite, WAL) exactly as in production. Only the
push to agents is left out: the worker's planner dispatches to a no-op pusher.

With ``--database URL`` (or ``throwaway``: a private PostgreSQL started for
the run) the placement runs (and C1M) are repeated on PostgreSQL, each run on
a fresh database of that server, and reported beside SQLite's.

Every measured run happens in a fresh forked process, so memory figures
(RSS, peak RSS) belong to that run alone.

    python bench/scheduler.py --smoke --json
    python bench/scheduler.py --nodes 5000 --allocs 100000 --runs 3
    python bench/scheduler.py --scale-sweep --allocs 100000
    python bench/scheduler.py --c1m
    python bench/scheduler.py --nodes 5000 --database throwaway --c1m
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import resource
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager, nullcontext

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import psutil  # noqa: E402
from benchutil import host  # noqa: E402  (bench/ is on sys.path)

from orch.config import ServerConfig  # noqa: E402
from orch.server.planner import Dispatch, ServerPlanner  # noqa: E402
from orch.server.server import Server  # noqa: E402
from orch.server.worker import SchedulerWorker  # noqa: E402

REGIONS = ("us-east", "eu-west", "ap-south")
# (cpu MHz, memory MB, cores, weight): a mix of machine sizes.
NODE_SIZES = ((4000, 8192, 4, 3), (8000, 16384, 8, 4), (16000, 32768, 16, 2), (32000, 65536, 32, 1))
TIERS = ("gold", "silver", "bronze")
ZONES = ("a", "b")
NO_DOCKER_SHARE = 0.25
SCALE_SWEEP = (500, 5000, 50000)
# Every node count of one invocation places the same number of allocations
# (node count is the only variable), at most this many per node of the smallest.
ALLOCS_PER_NODE_CAP = 40


class NullPusher:
    """The documented "push left out": a benchmark has no agents to call."""

    def place(self, allocs, job) -> None:
        pass

    def stop(self, allocs) -> None:
        pass

    def busy(self, alloc_id, node_id=None) -> bool:
        return False

    def heartbeat_ok(self, node_id) -> None:
        pass

    def endpoint_changed(self, node_id) -> None:
        pass

    def suspects(self) -> int:
        return 0

    def close(self) -> None:
        pass


# ---- the simulated cluster ---------------------------------------------------


def node_bodies(count: int, rng: random.Random) -> list[dict]:
    """Register bodies as an agent would send them (attributes and meta included)."""
    weights = [size[3] for size in NODE_SIZES]
    bodies = []
    for i in range(count):
        cpu, memory, cores, _ = rng.choices(NODE_SIZES, weights)[0]
        docker = rng.random() >= NO_DOCKER_SHARE
        bodies.append(
            {
                "node_id": str(uuid.UUID(int=rng.getrandbits(128))),
                "region": REGIONS[i % len(REGIONS)],
                "resources": {"cpu": cpu, "memory": memory},
                "healthy": True,
                "endpoint": f"http://10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}:4647",
                "attributes": {
                    "os": "linux",
                    "arch": "x86_64",
                    "hostname": f"node-{i:06d}",
                    "cpu.cores": cores,
                    "cpu.frequency": 1000,
                    "kernel.version": "6.1.0",
                    "driver.exec": True,
                    "driver.docker": docker,
                },
                "meta": {"tier": rng.choice(TIERS), "zone": rng.choice(ZONES), "team": "platform"},
            }
        )
    return bodies


def job_body(
    job_id: str,
    count: int,
    cpu: int,
    memory: int,
    *,
    job_type: str = "batch",
    docker: bool = False,
    constraints: list | None = None,
) -> dict:
    config = {"image": "redis:7", "command": "sleep 1d"} if docker else {"command": ["sleep", "1d"]}
    body = {
        "job_id": job_id,
        "type": job_type,
        "task_groups": [
            {
                "name": "g",
                "count": count,
                "tasks": [
                    {
                        "name": "t",
                        "driver": "docker" if docker else "exec",
                        "config": config,
                        "resources": {"cpu": cpu, "memory": memory},
                    }
                ],
            }
        ],
    }
    if constraints:
        body["constraints"] = constraints
    return body


def mixed_jobs(total: int, rng: random.Random) -> list[dict]:
    """A mix adding up to ``total`` allocations, plus a few that cannot fit.

    Roughly 70% of the allocations come in large jobs (500-1,000), 20% in
    medium ones (20-200), 10% in small ones (1-10). A third of the jobs are
    constrained (region, meta.tier, docker); 1 job in 50 cannot be placed
    (no such region, or bigger than any node).
    """
    jobs, placed, n = [], 0, 0
    while placed < total:
        n += 1
        roll = rng.random()
        if roll < 0.7:
            count = rng.randint(500, 1000)
        elif roll < 0.9:
            count = rng.randint(20, 200)
        else:
            count = rng.randint(1, 10)
        count = min(count, total - placed)
        placed += count
        constraints, docker = [], False
        kind = rng.random()
        if kind < 0.12:
            constraints = [{"attribute": "region", "operator": "=", "value": rng.choice(REGIONS)}]
        elif kind < 0.22:
            constraints = [{"attribute": "meta.tier", "operator": "!=", "value": "bronze"}]
        elif kind < 0.33:
            docker = True
        memory = rng.choice((64, 128, 128, 256, 256, 512))
        jobs.append(
            job_body(
                f"job-{n}",
                count,
                rng.choice((50, 100, 200)),
                memory,
                job_type=rng.choice(("batch", "batch", "service")),
                docker=docker,
                constraints=constraints,
            )
        )
        if n % 50 == 0:
            jobs.append(_unplaceable(f"nofit-{n}", rng))
    return jobs


def _unplaceable(job_id: str, rng: random.Random) -> dict:
    if rng.random() < 0.5:
        return job_body(
            job_id,
            5,
            100,
            128,
            constraints=[{"attribute": "region", "operator": "=", "value": "mars"}],
        )
    return job_body(job_id, 5, 100, 1 << 20)


# ---- driving the real server ---------------------------------------------------


def new_server(data_dir: str, bodies: list[dict], database: str | None = None) -> Server:
    server = Server(ServerConfig(data_dir=data_dir, database=database))
    for body in bodies:
        server.register(body)
    return server


def new_worker(server: Server, seed: int) -> SchedulerWorker:
    """A worker on the server's state and broker whose pushes go nowhere."""
    planner = ServerPlanner(server.store, server.broker, Dispatch(NullPusher()))
    return SchedulerWorker(server.broker, server.store, planner, 0, seed=seed)


def drain(server: Server, worker: SchedulerWorker) -> int:
    """Process evaluations until the broker has nothing ready; returns how many."""
    broker, evals = server.broker, 0
    while True:
        work = broker.dequeue(timeout=0)
        if work is None:
            return evals
        token, batch = work
        worker.process(batch)
        broker.ack(token)
        evals += len(batch)


def committed_allocs(server: Server) -> int:
    """Allocation rows in the database, read through a second connection."""
    database = server.config.database
    if database:
        import psycopg

        with psycopg.connect(database) as conn:
            return conn.execute("SELECT COUNT(*) FROM allocations").fetchone()[0]
    db = sqlite3.connect(server.store.path)
    try:
        return db.execute("SELECT COUNT(*) FROM allocations").fetchone()[0]
    finally:
        db.close()


@contextmanager
def fresh_database(server_url: str):
    """A new empty database on the PostgreSQL server of ``server_url``; dropped after."""
    import psycopg

    base = server_url.rsplit("/", 1)[0]
    name = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(base + "/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(base + "/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _database(database: str | None):
    """A fresh database on PostgreSQL for one run, or None (SQLite) as it is."""
    return fresh_database(database) if database else nullcontext(None)


def _rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _in_tmp(fn, *args):
    data_dir = tempfile.mkdtemp(prefix="orch-bench-", dir=os.environ.get("ORCH_BENCH_TMP"))
    try:
        return fn(data_dir, *args)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def _throughput(
    data_dir: str, nodes: int, allocs: int, seed: int, profile: str | None, database=None
) -> dict:
    with _database(database) as url:
        return _throughput_on(data_dir, nodes, allocs, seed, profile, url)


def _throughput_on(data_dir, nodes, allocs, seed, profile, database) -> dict:
    rng = random.Random(seed)
    server = new_server(data_dir, node_bodies(nodes, rng), database)
    jobs = mixed_jobs(allocs, rng)
    worker = new_worker(server, seed)
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    start, cpu_start = time.perf_counter(), time.process_time()
    for body in jobs:
        server.submit_job(body)
    evals = drain(server, worker)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(profile)
    placed = server.store.counts()["allocations"]
    result = {
        "nodes": nodes,
        "jobs": len(jobs),
        "placed": placed,
        "evals": evals,
        "seconds": elapsed,
        "cpu_seconds": cpu,
        "committed": committed_allocs(server),
        "rss_mb": _rss_mb(),
        "peak_rss_mb": _peak_rss_mb(),
    }
    server.stop()
    return result


def _c1m(data_dir: str, nodes: int, jobs: int, count: int, seed: int, database=None) -> dict:
    with _database(database) as url:
        return _c1m_on(data_dir, nodes, jobs, count, seed, url)


def _c1m_on(data_dir, nodes, jobs, count, seed, database) -> dict:
    rng = random.Random(seed)
    server = new_server(data_dir, node_bodies(nodes, rng), database)
    worker = new_worker(server, seed)
    start, cpu_start = time.perf_counter(), time.process_time()
    for n in range(jobs):
        server.submit_job(job_body(f"c1m-{n}", count, 20, 64))
    evals = drain(server, worker)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    placed = server.store.counts()["allocations"]
    committed = committed_allocs(server)
    result = {
        "nodes": nodes,
        "jobs": jobs,
        "placed": placed,
        "evals": evals,
        "seconds": elapsed,
        "cpu_seconds": cpu,
        "committed": committed,
        "rss_mb": _rss_mb(),
        "peak_rss_mb": _peak_rss_mb(),
    }
    server.stop()
    return result


# Not powers of two: those pack perfectly into nodes of 8-64 GB.
def _small_evals(data_dir: str, nodes: int, jobs: int, seed: int) -> dict:
    """Many small jobs (1-3 allocations): what one evaluation costs end to end."""
    rng = random.Random(seed)
    server = new_server(data_dir, node_bodies(nodes, rng))
    worker = new_worker(server, seed)
    bodies = []
    for n in range(jobs):
        constraints = (
            [{"attribute": "region", "operator": "=", "value": rng.choice(REGIONS)}]
            if n % 3 == 0
            else None
        )
        bodies.append(
            job_body(
                f"small-{n}",
                rng.randint(1, 3),
                50,
                128,
                job_type=rng.choice(("batch", "service")),
                docker=n % 5 == 0,
                constraints=constraints,
            )
        )
    start = time.perf_counter()
    for body in bodies:
        server.submit_job(body)
    evals = drain(server, worker)
    elapsed = time.perf_counter() - start
    server.stop()
    return {"evals": evals, "seconds": elapsed, "evals_per_s": evals / elapsed}


def _system_job(data_dir: str, nodes: int, seed: int) -> dict:
    """One system job on every node: all copies placed by one evaluation."""
    rng = random.Random(seed)
    server = new_server(data_dir, node_bodies(nodes, rng))
    worker = new_worker(server, seed)
    start, cpu_start = time.perf_counter(), time.process_time()
    _, ev = server.submit_job(job_body("system-bench", 1, 50, 64, job_type="system"))
    evals = drain(server, worker)
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu_start
    result = {
        "nodes": nodes,
        "placed": server.store.get_eval(ev.eval_id).placed,
        "evals": evals,
        "seconds": elapsed,
        "cpu_seconds": cpu,
        "committed": committed_allocs(server),
    }
    server.stop()
    return result


FILL_MEMORY = (100, 200, 300, 450, 700, 1000, 1500, 2200, 3000)


def _fill(data_dir: str, nodes: int, seed: int, count: int = 25) -> dict:
    """Submit jobs of mixed sizes until a placement fails; the memory share in use."""
    rng = random.Random(seed)
    server = new_server(data_dir, node_bodies(nodes, rng))
    worker = new_worker(server, seed)
    store = server.store
    start, n = time.perf_counter(), 0
    while True:
        n += 1
        # Memory binds: nodes offer ~0.5 MHz per MB, these ask 0.1-0.4.
        memory = rng.choice(FILL_MEMORY)
        cpu = int(memory * rng.uniform(0.1, 0.4))
        _, ev = server.submit_job(
            job_body(f"fill-{n}", count, cpu, memory, job_type=rng.choice(("batch", "service")))
        )
        drain(server, worker)
        if store.get_eval(ev.eval_id).queued:
            break
    elapsed = time.perf_counter() - start
    total = sum(node.resources.memory for node in store.list_nodes())
    used = sum(a.resources.memory for a in store._allocs.values() if a.holds_resources())
    total_cpu = sum(node.resources.cpu for node in store.list_nodes())
    used_cpu = sum(a.resources.cpu for a in store._allocs.values() if a.holds_resources())
    result = {
        "nodes": nodes,
        "jobs": n,
        "placed": store.counts()["allocations"],
        "fill_ratio": used / total,
        "cpu_ratio": used_cpu / total_cpu,
        "seconds": elapsed,
    }
    server.stop()
    return result


def _isolated(fn, *args) -> dict:
    """Run one measurement in a fresh forked process (clean heap, own peak RSS)."""
    ctx = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(_in_tmp, fn, *args).result()


# ---- reporting -------------------------------------------------------------------


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def sweep(
    node_counts, allocs: int, runs: int, seed: int, profile: str | None, say, database=None
) -> dict:
    by_nodes = {}
    engine = "postgresql" if database else "sqlite"
    wanted = min(allocs, ALLOCS_PER_NODE_CAP * min(node_counts))
    for nodes in node_counts:
        results = []
        for r in range(runs):
            prof = f"{profile}.{nodes}.prof" if profile and r == 0 else None
            res = _isolated(_throughput, nodes, wanted, seed + r, prof, database)
            if res["committed"] != res["placed"]:
                raise SystemExit(f"committed {res['committed']} != placed {res['placed']}")
            res["placements_per_s"] = res["placed"] / res["seconds"]
            res["evals_per_s"] = res["evals"] / res["seconds"]
            res["us_per_placement"] = res["seconds"] * 1e6 / max(1, res["placed"])
            res["cpu_us_per_placement"] = res["cpu_seconds"] * 1e6 / max(1, res["placed"])
            results.append(res)
            say(
                f"  {engine} nodes={nodes:<6} run={r + 1} placed={res['placed']} "
                f"evals={res['evals']} {res['seconds']:.2f}s "
                f"{res['placements_per_s']:,.0f} placements/s "
                f"{res['evals_per_s']:,.0f} evals/s "
                f"{res['us_per_placement']:.1f} us/placement "
                f"(cpu {res['cpu_us_per_placement']:.1f}) rss={res['rss_mb']:.0f}MB"
            )
        by_nodes[nodes] = {
            k: _median(results, k)
            for k in (
                "placed",
                "evals",
                "seconds",
                "placements_per_s",
                "evals_per_s",
                "us_per_placement",
                "cpu_us_per_placement",
                "rss_mb",
                "peak_rss_mb",
            )
        }
    return by_nodes


def _system_report(args, say) -> dict:
    """Median of ``--runs`` placements of one system job on ``--system-nodes`` nodes."""
    runs = [_isolated(_system_job, args.system_nodes, args.seed + r) for r in range(args.runs)]
    for res in runs:
        say(
            f"  system job nodes={res['nodes']} placed={res['placed']} evals={res['evals']} "
            f"committed={res['committed']} {res['seconds']:.2f}s (cpu {res['cpu_seconds']:.2f}s)"
        )
        if res["placed"] != res["nodes"] or res["evals"] != 1:
            raise SystemExit(f"system job: {res['placed']} of {res['nodes']} placed")
    return {
        "system_job_nodes": args.system_nodes,
        "system_job_s": round(_median(runs, "seconds"), 3),
        "system_job_cpu_s": round(_median(runs, "cpu_seconds"), 3),
    }


def _c1m_report(args, say, database: str | None = None) -> dict:
    """One C1M run (1,000 jobs x 1,000 allocations on 5,000 nodes by default)."""
    res = _isolated(_c1m, args.c1m_nodes, args.c1m_jobs, args.c1m_count, args.seed, database)
    say(
        f"  {'postgresql' if database else 'sqlite'} c1m nodes={res['nodes']} jobs={res['jobs']} "
        f"placed={res['placed']} committed={res['committed']} {res['seconds']:.1f}s "
        f"peak_rss={res['peak_rss_mb']:.0f}MB"
    )
    if res["committed"] != args.c1m_jobs * args.c1m_count:
        say(
            f"  c1m: only {res['committed']} of "
            f"{args.c1m_jobs * args.c1m_count} allocations committed"
        )
    return {
        "c1m_s": round(res["seconds"], 2),
        "c1m_cpu_s": round(res["cpu_seconds"], 2),
        "c1m_placed": res["committed"],
        "c1m_peak_rss_mb": round(res["peak_rss_mb"], 1),
    }


def _postgres_report(args, say) -> dict:
    """The placement runs (and C1M) again, on PostgreSQL."""
    throwaway = None
    url = args.database
    if url == "throwaway":
        from orch.dev.postgres import ThrowawayPostgres

        throwaway = ThrowawayPostgres(tempfile.mkdtemp(prefix="orch-bench-pg-", dir=args.tmp))
        url = throwaway.start()
    try:
        by_nodes = sweep(args.node_counts, args.allocs, args.runs, args.seed, None, say, url)
        headline = by_nodes.get(5000) or by_nodes[args.node_counts[-1]]
        out = {
            "placements_per_s": round(headline["placements_per_s"]),
            "evals_per_s": round(headline["evals_per_s"], 1),
            "by_nodes": {
                str(n): {k: round(v, 2) for k, v in r.items()} for n, r in by_nodes.items()
            },
        }
        if args.c1m or args.smoke:
            out.update(_c1m_report(args, say, url))
        say(f"postgresql placements/s={out['placements_per_s']:,} evals/s={out['evals_per_s']:,}")
        return out
    finally:
        if throwaway is not None:
            throwaway.stop()
            shutil.rmtree(throwaway.base_dir, ignore_errors=True)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--nodes", default="5000", help="node count, or several comma-separated (default 5000)"
    )
    parser.add_argument(
        "--allocs",
        type=int,
        default=100_000,
        help="allocations per run, the same at every node count "
        "(capped at 40 per node of the smallest cluster)",
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--scale-sweep", action="store_true", help=f"node counts {','.join(map(str, SCALE_SWEEP))}"
    )
    parser.add_argument(
        "--fill-nodes",
        type=int,
        default=1000,
        help="cluster size for the fill-ratio run (0 skips it)",
    )
    parser.add_argument(
        "--eval-jobs",
        type=int,
        default=2000,
        help="small jobs for the evaluations-per-second run (0 skips it)",
    )
    parser.add_argument(
        "--system-nodes",
        type=int,
        default=5000,
        help="cluster size for the one-system-job run (0 skips it)",
    )
    parser.add_argument(
        "--c1m", action="store_true", help="also run 1,000 jobs x 1,000 on 5,000 nodes"
    )
    parser.add_argument("--c1m-nodes", type=int, default=5000)
    parser.add_argument("--c1m-jobs", type=int, default=1000)
    parser.add_argument("--c1m-count", type=int, default=1000)
    parser.add_argument(
        "--tmp",
        metavar="DIR",
        help="where the runs' data dirs go (default: the system "
        "temp dir; /dev/shm separates disk from CPU)",
    )
    parser.add_argument(
        "--database",
        metavar="URL",
        help="also run the placements (and C1M) on PostgreSQL: a postgresql:// URL "
        "(each run gets a fresh database on that server) or `throwaway`",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds (CI)")
    parser.add_argument(
        "--profile", metavar="PREFIX", help="write cProfile stats of the first run per node count"
    )
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object as the last line"
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.nodes, args.allocs, args.runs, args.fill_nodes = "50,200", 2000, 3, 60
        args.eval_jobs, args.system_nodes = 100, 200
        args.c1m_nodes, args.c1m_jobs, args.c1m_count = 100, 10, 100
    args.node_counts = (
        list(SCALE_SWEEP)
        if args.scale_sweep
        else [int(n) for n in str(args.nodes).split(",") if n.strip()]
    )
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.tmp:
        os.environ["ORCH_BENCH_TMP"] = args.tmp

    def say(line: str) -> None:
        print(line, flush=True)

    machine = host()
    say(
        f"scheduler benchmark: nodes={args.node_counts} allocs={args.allocs} "
        f"runs={args.runs} cpus={os.cpu_count()} load={os.getloadavg()[0]:.1f} "
        f"calibration={machine['calibration']} tmp={args.tmp or tempfile.gettempdir()}"
    )
    by_nodes = sweep(args.node_counts, args.allocs, args.runs, args.seed, args.profile, say)
    headline = by_nodes.get(5000) or by_nodes[args.node_counts[-1]]
    out = {
        "calibration": machine["calibration"],
        "placements_per_s": round(headline["placements_per_s"]),
        "evals_per_s": round(headline["evals_per_s"], 1),
        "us_per_placement": {str(n): round(r["us_per_placement"], 2) for n, r in by_nodes.items()},
        "fill_ratio": None,
        "rss_mb": round(headline["rss_mb"], 1),
        "by_nodes": {str(n): {k: round(v, 2) for k, v in r.items()} for n, r in by_nodes.items()},
        "load_1m": round(os.getloadavg()[0], 2),
    }
    smallest, largest = min(by_nodes), max(by_nodes)
    if largest != smallest:
        out["scale_ratio"] = round(
            by_nodes[largest]["us_per_placement"] / by_nodes[smallest]["us_per_placement"], 2
        )
        out["cpu_scale_ratio"] = round(
            by_nodes[largest]["cpu_us_per_placement"] / by_nodes[smallest]["cpu_us_per_placement"],
            2,
        )
    if args.eval_jobs:
        nodes = 5000 if 5000 in by_nodes else args.node_counts[-1]
        small = [
            _isolated(_small_evals, nodes, args.eval_jobs, args.seed + r) for r in range(args.runs)
        ]
        for res in small:
            say(
                f"  small jobs nodes={nodes} evals={res['evals']} "
                f"{res['seconds']:.2f}s {res['evals_per_s']:,.0f} evals/s"
            )
        out["small_evals_per_s"] = round(_median(small, "evals_per_s"), 1)
    if args.system_nodes:
        out.update(_system_report(args, say))
    if args.fill_nodes:
        fills = [_isolated(_fill, args.fill_nodes, args.seed + r) for r in range(args.runs)]
        for fill in fills:
            say(
                f"  fill nodes={fill['nodes']} jobs={fill['jobs']} "
                f"placed={fill['placed']} memory={fill['fill_ratio']:.3f} "
                f"cpu={fill['cpu_ratio']:.3f} {fill['seconds']:.1f}s"
            )
        out["fill_ratio"] = round(_median(fills, "fill_ratio"), 4)
    if args.c1m or args.smoke:
        out.update(_c1m_report(args, say))
    if args.database:
        out["postgresql"] = _postgres_report(args, say)
    say(
        f"placements/s={out['placements_per_s']:,} evals/s={out['evals_per_s']:,} "
        f"us/placement={out['us_per_placement']} fill_ratio={out['fill_ratio']} "
        f"rss_mb={out['rss_mb']}"
    )
    if args.json:
        print(json.dumps(out, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
