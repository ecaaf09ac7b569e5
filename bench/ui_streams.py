"""The UI event stream's cost on the server: N open browsers, idle.

A real `orch server` from ``dist/orch.pyz`` (its own session, stopped by its
PID); N clients open ``GET /ui/events`` as the UI's pages do and read it.
Server CPU (psutil user + system of the server PID) is measured over a
window with no stream open, then over the same window with N open, both
idle (no state change). The figure is the streams' share: the difference,
in percent of one core. Target: <= 5 % with 20 streams.

    python bench/ui_streams.py --json            # 20 streams, 60 s windows
    python bench/ui_streams.py --smoke --json    # 20 streams, 5 s windows

``measure_streams(url, pid, ...)`` is the measurement alone, for a bench
that runs its own server (bench/ui.py).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import psutil
from benchutil import check_targets, free_port, host, spawn, stop_server  # bench/ is on sys.path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PYZ = ROOT / "dist" / "orch.pyz"
TARGETS = {"stream_cpu_pct_one_core": 5.0}


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


class StreamReader:
    """One browser's event stream, read on its own thread until closed."""

    def __init__(self, url: str, token: str | None):
        parts = urlsplit(url)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.conn.request("GET", "/ui/events", headers=headers)
        self.resp = self.conn.getresponse()
        if self.resp.status != 200:
            raise RuntimeError(f"GET /ui/events: {self.resp.status} {self.resp.read()[:200]!r}")
        self.events = 0
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            while line := self.resp.readline():
                if line.startswith(b"event: "):
                    self.events += 1
        except (OSError, ValueError, AttributeError, http.client.HTTPException):
            # Closed by close(); http.client drops its file on a cut chunked
            # body and the next read meets None (AttributeError).
            pass

    def close(self) -> None:
        # The reader (a daemon thread) meets the closed socket and ends.
        if self.conn.sock is not None:
            self.conn.sock.shutdown(socket.SHUT_RDWR)
        self.conn.close()


def measure_streams(
    url: str, pid: int, *, streams: int = 20, window: float = 60.0, token: str | None = None
) -> dict:
    """Server CPU idle without and with ``streams`` open event streams."""
    proc = psutil.Process(pid)
    cpu0 = cpu_seconds(proc)
    time.sleep(window)
    baseline = (cpu_seconds(proc) - cpu0) / window * 100
    readers = [StreamReader(url, token) for _ in range(streams)]
    try:
        time.sleep(1.0)  # every stream past its hello
        cpu0 = cpu_seconds(proc)
        time.sleep(window)
        with_streams = (cpu_seconds(proc) - cpu0) / window * 100
    finally:
        for reader in readers:
            reader.close()
    return {
        "streams": streams,
        "window_s": window,
        "idle_cpu_pct_one_core": round(baseline, 3),
        "streams_cpu_pct_one_core": round(with_streams, 3),
        "stream_cpu_pct_one_core": round(max(0.0, with_streams - baseline), 3),
    }


def start_server(pyz: Path, workdir: Path, port: int, env: dict) -> subprocess.Popen:
    argv = [sys.executable, str(pyz), "server", "--port", str(port), "--data-dir", str(workdir)]
    return spawn(argv, workdir / "server.log", env)


def wait_health(url: str, server: subprocess.Popen, timeout: float = 30.0) -> None:
    parts = urlsplit(url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"server exited with {server.returncode}")
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=2)
        try:
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                return
        except (OSError, http.client.HTTPException):
            time.sleep(0.05)
        finally:
            conn.close()
    raise RuntimeError("server not answering /health")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pyz", type=Path, default=DEFAULT_PYZ)
    p.add_argument("--streams", type=int, default=20)
    p.add_argument("--window", type=float, default=60.0, help="seconds per window")
    p.add_argument("--smoke", action="store_true", help="5 s windows")
    p.add_argument("--json", action="store_true", help="last line: one JSON object")
    args = p.parse_args(argv)
    if not args.pyz.is_file():
        sys.exit(f"{args.pyz} not found: build it with `python build/make_pyz.py`")
    window = 5.0 if args.smoke else args.window
    workdir = Path(tempfile.mkdtemp(prefix="orch-bench-ui-streams-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    url = f"http://127.0.0.1:{free_port()}"
    machine = host()  # before the server starts: nothing else of ours runs
    server = start_server(args.pyz, workdir, int(urlsplit(url).port or 0), env)
    try:
        wait_health(url, server)
        result = {
            **machine,
            **measure_streams(url, server.pid, streams=args.streams, window=window),
        }
    finally:
        stop_server(server)
        shutil.rmtree(workdir, ignore_errors=True)
    ok = check_targets(result, TARGETS)
    if args.json:
        print(json.dumps(result))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
