"""Small helpers every benchmark script shares."""

from __future__ import annotations

import functools
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

# The client's HTTP wire is orch's own (the checkout's sources, not the
# zipapp under test: every build is driven by the same client).
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))
from orch.httpwire import Conn, read_answer, request_head  # noqa: E402

# What an agent sends when nothing changed: the seed's heartbeat body with an
# empty allocation map (heartbeats carry only changes).
HEARTBEAT_BODY = {
    "node_id": "5b2f3c4d-8e9f-4a0b-9c1d-2e3f4a5b6c7d",
    "resources": {"cpu": 7960, "memory": 16352, "cpu_used": 40, "memory_used": 32},
    "healthy": True,
    "timestamp": 1764590123.456789,
    "allocations": {},
}
CALIBRATION_ROUNDS = 100_000
_JSON_BODY = {"Content-Type": "application/json"}


def log(line: str) -> None:
    print(line, flush=True)


def calibration(rounds: int = CALIBRATION_ROUNDS) -> float:
    """Host calibration: CPU seconds of `rounds` json round trips of a heartbeat body.

    About 1.0 on a quiet host of this project's machines, 2 on a busy one;
    benchmark targets hold at 1.0 and scale with it. CPU time of this thread,
    not wall time: what it measures is how much CPU a fixed piece of Python
    work costs right now (frequency, cache and hyper-thread contention), not
    how long the scheduler kept it waiting.
    """
    started = time.thread_time()
    for _ in range(rounds):
        json.loads(json.dumps(HEARTBEAT_BODY))
    return round(time.thread_time() - started, 3)


# Run by `interpreter` in the interpreter asked about: its version, and
# whether it runs from a shared libpython (mapped into the process) or has
# the interpreter linked in. The build moves orch's CPU per job by about a
# tenth: Debian's python3.11 (static, PGO and LTO) runs orch's Python 10-15%
# faster than pyenv's default build (shared, no PGO), so a figure names the
# build that produced it (bench/README.md).
_INTERPRETER_PROBE = (
    "import json, platform, sys\n"
    "try:\n"
    "    maps = open('/proc/self/maps').read()\n"
    "except OSError:\n"
    "    maps = None\n"
    "lib = None if maps is None else 'shared' if 'libpython' in maps else 'static'\n"
    "print(json.dumps({'executable': sys.executable,"
    " 'version': platform.python_version(), 'libpython': lib}))"
)


@functools.cache  # a build does not change under a running benchmark
def interpreter(executable: str = sys.executable) -> dict:
    """The CPython build at ``executable``: path, version, libpython shared
    or static (None where /proc is missing). OSError or
    subprocess.SubprocessError if it cannot be run."""
    out = subprocess.run(
        [executable, "-S", "-c", _INTERPRETER_PROBE],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return json.loads(out.stdout)


def host(**extra) -> dict:
    """The host line every benchmark prints and puts in its JSON: calibration first."""
    info = {
        "calibration": calibration(),
        "nproc": os.cpu_count(),
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "python": sys.version.split()[0],
        "libpython": interpreter()["libpython"],  # the calibration's build
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **extra,
    }
    log("host: " + " ".join(f"{k}={v}" for k, v in info.items()))
    return info


def median(values: list[float]) -> float:
    """Median of a non-empty list, rounded for reports."""
    return round(statistics.median(values), 3)


def spawn(argv: list[str], log_path: Path, env: dict) -> subprocess.Popen:
    """Start ``argv`` in its own session, stdout and stderr to ``log_path``."""
    out = open(log_path, "wb")
    return subprocess.Popen(
        argv,
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )


def stop_server(server: subprocess.Popen) -> None:
    """SIGTERM, up to 15 s, then SIGKILL to its session (started by spawn); reaped."""
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(server.pid, signal.SIGKILL)  # its own session, started here
    except (ProcessLookupError, PermissionError):
        pass
    if server.poll() is None:
        server.wait(timeout=10)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def mb(nbytes: int) -> float:
    return round(nbytes / (1 << 20), 1)


class JsonConnection:
    """One keep-alive HTTP connection speaking JSON, for load generators.

    The client shares the machine's CPU with the cluster it measures, so it
    writes and reads the exchange with orch's own wire (orch/httpwire.py: the
    request head built in one go, the answer's headers read without the email
    package) rather than http.client: ~0.2 ms of CPU less per request here.
    The exchange is the one orch.transport.HttpClient makes; not that client
    itself, whose per-request URL parse and header merge cost ~90 us more.
    Reconnects once if the server closed the kept connection.
    """

    def __init__(self, url: str, timeout: float = 30.0):
        parts = urlsplit(url)
        self._address = (parts.hostname, parts.port)
        self._host = parts.netloc
        self._timeout = timeout
        self._conn: Conn | None = None
        # The last answer's X-Orch-Index (a blocking query's next `index`);
        # 0 from a server without blocking queries.
        self.index = 0

    def _dial(self) -> Conn:
        sock = socket.create_connection(self._address, timeout=self._timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return Conn(sock)

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        data = None if body is None else json.dumps(body).encode()
        headers = _JSON_BODY if data is not None else {}
        message = request_head(method, path, self._host, headers, data) + (data or b"")
        for attempt in (1, 2):
            conn, self._conn = self._conn or self._dial(), None
            try:
                conn.sock.sendall(message)
                status, answer_headers, raw, will_close = read_answer(conn.reader, method)
                break
            except (http.client.HTTPException, ConnectionError):
                conn.close()
                if attempt == 2:
                    raise
        if will_close:
            conn.close()
        else:
            self._conn = conn
        index = answer_headers.get("x-orch-index", "")
        self.index = int(index) if index.isdigit() else 0
        try:
            doc = json.loads(raw) if raw else {}
        except ValueError:
            doc = {"error": raw[:200].decode(errors="replace")}
        return status, doc

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def disk_activity() -> tuple[int, int]:
    """(I/Os completed so far, I/Os in flight) over every block device,
    discards included (/proc/diskstats); (0, 0) where it cannot be read."""
    done = inflight = 0
    try:
        with open("/proc/diskstats") as f:
            for line in f:
                fields = line.split()
                if len(fields) < 12 or fields[2].startswith(("loop", "ram")):
                    continue
                numbers = [int(x) for x in fields[3:]]
                done += numbers[0] + numbers[4] + (numbers[11] if len(numbers) > 11 else 0)
                inflight += numbers[8]
    except (OSError, ValueError):
        pass
    return done, inflight


def wait_disk_quiet(quiet_s: float = 2.0, max_s: float = 90.0) -> float:
    """After os.sync(), wait until no block device completes or holds an I/O
    for `quiet_s` seconds (a disk mounted with `discard` keeps trimming the
    blocks of deleted files for a while). Returns the seconds waited."""
    started = time.monotonic()
    os.sync()
    last, quiet_since = None, time.monotonic()
    while time.monotonic() - started < max_s:
        now_state = disk_activity()
        if now_state != last or now_state[1]:
            last, quiet_since = now_state, time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_s:
            break
        time.sleep(0.25)
    return time.monotonic() - started


def check_targets(result: dict, targets: dict, higher_is_better: set = frozenset()) -> bool:
    """Log each figure against its target; True if every one is met."""
    met = []
    for key, target in targets.items():
        value = result.get(key)
        higher = key in higher_is_better
        ok = value is not None and (value >= target if higher else value <= target)
        met.append(ok)
        log(
            f"  {key:28} {value!s:>8}  target {'>=' if higher else '<='} {target:g}"
            f"  {'ok' if ok else 'MISSED'}"
        )
    return all(met)
