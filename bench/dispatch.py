"""Dispatch benchmark: dispatches of a parameterized job beside plain batch submits.

On a real `orch dev` cluster started from the zipapp (``dist/orch.pyz``):

- dispatch: one parameterized batch job (a task running ``true``), then
  ``--dispatches`` ``POST /jobs/<id>/dispatch`` calls from ``--threads``
  client threads; timed from the first POST until the parent's ``children``
  (``GET /jobs/<id>``) are all ``complete``;
- plain batch: ``--dispatches`` batch jobs running ``true`` submitted with
  ``POST /jobs`` from as many threads, in the same run on the same cluster,
  timed until ``GET /jobs`` shows every one ``complete``.

Reported: ``dispatches_per_s`` and ``submits_per_s`` (POSTs answered per
second), ``dispatch_jobs_per_s`` and ``batch_jobs_per_s`` (jobs complete per
second, the end-to-end figure). Any job that fails or any non-200 answer
fails the run.

    python bench/dispatch.py                 # 1,000 of each, human-readable
    python bench/dispatch.py --json          # ... last line: one JSON object
    python bench/dispatch.py --smoke --json  # 40 of each (seconds)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchutil import JsonConnection, host, log  # bench/ is on sys.path
from e2e import DEFAULT_PYZ, DevCluster, job_body, settle

TIMEOUT = 600.0
POLL_S = 0.5


def post_burst(url: str, paths_and_bodies: list, threads: int) -> float:
    """POST every (path, body) from `threads` threads; seconds until all answered."""
    errors: list[str] = []
    shares = [paths_and_bodies[t::threads] for t in range(threads)]

    def worker(share) -> None:
        conn = JsonConnection(url, timeout=60)
        try:
            for path, body in share:
                code, doc = conn.request("POST", path, body)
                if code != 200:
                    errors.append(f"POST {path}: {code} {str(doc)[:200]}")
        finally:
            conn.close()

    workers = [threading.Thread(target=worker, args=(s,), daemon=True) for s in shares]
    started = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if errors:
        raise RuntimeError(f"{len(errors)} errors, first: {errors[0]}")
    return time.perf_counter() - started


def wait_complete(count_done, total: int, started: float) -> float:
    """Poll `count_done() -> (complete, failed)` until all `total` are complete."""
    while time.perf_counter() - started < TIMEOUT:
        complete, failed = count_done()
        if failed:
            raise RuntimeError(f"{failed} jobs failed")
        if complete >= total:
            return time.perf_counter() - started
        time.sleep(POLL_S)
    raise RuntimeError(f"not complete after {TIMEOUT}s")


def statuses(jobs: list[dict]) -> tuple[int, int]:
    done = sum(1 for j in jobs if j["status"] == "complete")
    failed = sum(1 for j in jobs if j["status"] in ("failed", "lost", "dead"))
    return done, failed


def run_dispatch(url: str, total: int, threads: int) -> dict:
    conn = JsonConnection(url, timeout=60)
    parent = {**job_body("bench-dispatch", "true", "batch"), "parameterized": {}}
    code, doc = conn.request("POST", "/jobs", parent)
    if code != 200:
        raise RuntimeError(f"submit parent: {code} {doc}")
    started = time.perf_counter()
    post_s = post_burst(url, [("/jobs/bench-dispatch/dispatch", {})] * total, threads)
    done_s = wait_complete(
        lambda: statuses(conn.request("GET", "/jobs/bench-dispatch")[1]["children"]),
        total,
        started,
    )
    conn.close()
    return {
        "dispatches_per_s": round(total / post_s, 1),
        "dispatch_jobs_per_s": round(total / done_s, 1),
    }


def run_batch(url: str, total: int, threads: int) -> dict:
    conn = JsonConnection(url, timeout=60)
    bodies = [("/jobs", job_body(f"bench-batch-{i}", "true", "batch")) for i in range(total)]
    started = time.perf_counter()
    post_s = post_burst(url, bodies, threads)

    def count():
        jobs = conn.request("GET", "/jobs")[1]["jobs"]
        return statuses([j for j in jobs if j["job_id"].startswith("bench-batch-")])

    done_s = wait_complete(count, total, started)
    conn.close()
    return {"submits_per_s": round(total / post_s, 1), "batch_jobs_per_s": round(total / done_s, 1)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pyz", type=Path, default=DEFAULT_PYZ, help="the built zipapp")
    p.add_argument("--agents", type=int, default=3)
    p.add_argument("--dispatches", type=int, default=1000, help="dispatches (and batch submits)")
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--smoke", action="store_true", help="40 of each, a quick check")
    p.add_argument("--json", action="store_true", help="end with one JSON line")
    p.add_argument("--workdir", default=None, help="where the cluster's files go")
    args = p.parse_args(argv)
    if args.smoke:
        args.dispatches = 40
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.pyz.is_file():
        sys.exit(f"{args.pyz} not found: build it with `python build/make_pyz.py`")
    settle(args.smoke)
    workdir = Path(tempfile.mkdtemp(prefix="orch-bench-dispatch-", dir=args.workdir))
    result: dict = {
        **host(),
        "agents": args.agents,
        "threads": args.threads,
        "dispatches": args.dispatches,
    }
    cluster = DevCluster(
        args.pyz,
        workdir,
        agents=args.agents,
        shiv_root=workdir / "shiv",
        log_level="warning",
        name="dev",
    )
    try:
        cluster.wait_healthy()
        result.update(run_dispatch(cluster.url, args.dispatches, args.threads))
        log(
            f"dispatch: {result['dispatches_per_s']}/s answered, "
            f"{result['dispatch_jobs_per_s']} jobs/s complete"
        )
        settle(args.smoke)
        result.update(run_batch(cluster.url, args.dispatches, args.threads))
        log(
            f"plain batch: {result['submits_per_s']}/s answered, "
            f"{result['batch_jobs_per_s']} jobs/s complete"
        )
    finally:
        cluster.stop()
    if args.json:
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
