"""Web UI benchmark: fragment render time on a big cluster, idle cost of open event streams.

Render: an in-process Server holds ``--nodes`` simulated nodes (bench/scheduler.py's
register bodies) and ``--allocs`` allocations placed by the real scheduler path
(submit_job -> SchedulerWorker -> commit_plan), most of them then reported running
through ``StateStore.update_allocs``. The jobs, nodes and topology fragments
(``GET /ui/<page>?fragment=1``, what a browser fetches) are rendered ``--renders``
times each through the server's WSGI app; p50/p95 in milliseconds.

Streams: a separate ``python -m orch server`` process with ``--streams`` open
``GET /ui/events`` streams, idle for ``--stream-seconds``; its CPU seconds per
wall second (1.0 = one core busy), next to the same figure with no stream open.

    python bench/ui.py --json
    python bench/ui.py --nodes 50 --allocs 100 --renders 3 --streams 3 --stream-seconds 2 --json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import replace

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import psutil  # noqa: E402
from benchutil import check_targets, free_port, host, log, percentile  # noqa: E402
from scheduler import drain, job_body, new_server, new_worker, node_bodies  # noqa: E402

from orch.server.api import make_app  # noqa: E402
from orch.structs import AllocStatus  # noqa: E402

PAGES = ("jobs", "nodes", "topology")
ALLOCS_PER_JOB = 10
RUNNING_SHARE = 0.9  # the rest stay pending: the bars show more than one colour
TARGETS = {"render_p95_ms_max": 300.0, "stream_cpu_share": 0.05}


# ---- render ------------------------------------------------------------------


def fill(data_dir: str, nodes: int, allocs: int, seed: int):
    """A Server with ``nodes`` nodes and ``allocs`` allocations, most reported running."""
    rng = random.Random(seed)
    server = new_server(data_dir, node_bodies(nodes, rng))
    jobs = max(1, allocs // ALLOCS_PER_JOB)
    for j in range(jobs):
        count = min(ALLOCS_PER_JOB, allocs - j * ALLOCS_PER_JOB)
        memory = rng.choice((64, 128, 256, 512))
        server.submit_job(job_body(f"job-{j:05d}", count, 100, memory, job_type="service"))
    drain(server, new_worker(server, seed))
    store = server.store
    updated = []
    for job in store.list_jobs():
        for alloc in store.allocs_for_job(job.job_id):
            if rng.random() < RUNNING_SHARE:
                updated.append(replace(alloc, client_status=AllocStatus.RUNNING))
    store.update_allocs(updated)
    return server


def wsgi_get(app, path: str, query: str) -> tuple[str, bytes]:
    """One GET through the WSGI app, no socket: only the server's own work is timed."""
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "4646",
        "HTTP_HOST": "127.0.0.1:4646",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.version": (1, 0),
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    status = []
    body = b"".join(app(environ, lambda s, headers, exc=None: status.append(s)))
    return status[0], body


def render_times(server, renders: int) -> dict:
    """p50/p95/max milliseconds of each page's fragment; fails on a non-200."""
    app = make_app(server)
    out = {}
    for page in PAGES:
        times, size = [], 0
        for _ in range(renders):
            started = time.perf_counter()
            status, body = wsgi_get(app, f"/ui/{page}", "fragment=1")
            times.append((time.perf_counter() - started) * 1000)
            if not status.startswith("200"):
                raise SystemExit(f"GET /ui/{page}?fragment=1 answered {status}: {body[:300]!r}")
            size = len(body)
        out[page] = {
            "p50_ms": round(percentile(times, 50), 1),
            "p95_ms": round(percentile(times, 95), 1),
            "max_ms": round(max(times), 1),
            "kb": round(size / 1024, 1),
        }
    return out


# ---- streams -----------------------------------------------------------------


def start_server(data_dir: str, port: int) -> subprocess.Popen:
    """`python -m orch server` from this checkout, answering /health."""
    cmd = [sys.executable, "-m", "orch", "server", "--port", str(port), "--data-dir", data_dir]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"GET /health HTTP/1.0\r\n\r\n")
                if b" 200 " in sock.recv(64):
                    return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the server did not answer /health within 30 s")


def open_stream(port: int) -> socket.socket:
    """A raw GET /ui/events (a browser's stream, minus the browser), past its hello."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"GET /ui/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n")
    seen = b""
    while b"event: hello" not in seen:
        chunk = sock.recv(4096)
        if not chunk:
            raise SystemExit(f"GET /ui/events closed before its hello: {seen[:300]!r}")
        seen += chunk
    if b" 200 " not in seen.split(b"\r\n", 1)[0]:
        raise SystemExit(f"GET /ui/events answered {seen[:300]!r}")
    return sock


def cpu_share(proc: psutil.Process, seconds: float) -> float:
    """The process's CPU seconds per wall second over ``seconds``."""
    before, started = proc.cpu_times(), time.monotonic()
    time.sleep(seconds)
    after, wall = proc.cpu_times(), time.monotonic() - started
    used = (after.user - before.user) + (after.system - before.system)
    return round(used / wall, 4)


def stream_cost(streams: int, seconds: float) -> dict:
    """Idle server CPU share with no stream, then with ``streams`` open streams."""
    data_dir = tempfile.mkdtemp(prefix="orch-bench-ui-")
    port = free_port()
    server = start_server(data_dir, port)
    socks: list[socket.socket] = []
    try:
        proc = psutil.Process(server.pid)
        time.sleep(1.0)  # start-up work is not idle cost
        baseline = cpu_share(proc, seconds)
        socks = [open_stream(port) for _ in range(streams)]
        with_streams = cpu_share(proc, seconds)
        return {
            "streams": streams,
            "seconds": seconds,
            "idle_cpu_share_no_streams": baseline,
            "stream_cpu_share": with_streams,
        }
    finally:
        for sock in socks:
            sock.close()
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        shutil.rmtree(data_dir, ignore_errors=True)


# ---- main ----------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--allocs", type=int, default=10000)
    parser.add_argument("--renders", type=int, default=20, help="renders per page")
    parser.add_argument("--streams", type=int, default=20, help="open event streams")
    parser.add_argument("--stream-seconds", type=float, default=60.0, help="idle window")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the summary as JSON last")
    return parser.parse_args(argv)


def run(args) -> dict:
    summary: dict = {
        "machine": host(memory_gb=round(psutil.virtual_memory().total / 2**30, 1)),
        "nodes": args.nodes,
        "allocs": args.allocs,
    }
    summary["calibration"] = summary["machine"]["calibration"]
    log(f"host: {json.dumps(summary['machine'])}")
    data_dir = tempfile.mkdtemp(prefix="orch-bench-ui-")
    try:
        started = time.perf_counter()
        server = fill(data_dir, args.nodes, args.allocs, args.seed)
        summary["fill_s"] = round(time.perf_counter() - started, 1)
        summary["allocs_placed"] = server.store.counts().get("allocations", 0)
        summary["render"] = render_times(server, args.renders)
        server.store.close()
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)
    for page, figures in summary["render"].items():
        log(f"  {page:9} p50 {figures['p50_ms']:7.1f} ms  p95 {figures['p95_ms']:7.1f} ms")
    summary["render_p95_ms_max"] = max(f["p95_ms"] for f in summary["render"].values())
    summary["stream"] = stream_cost(args.streams, args.stream_seconds)
    summary["stream_cpu_share"] = summary["stream"]["stream_cpu_share"]
    log(f"  streams  {json.dumps(summary['stream'])}")
    summary["targets_met"] = check_targets(summary, TARGETS)
    return summary


def main(argv=None) -> int:
    args = parse_args(argv)
    summary = run(args)
    if args.json:
        print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
