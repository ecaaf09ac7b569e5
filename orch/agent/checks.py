"""Health checks run by the agent: http, tcp and script, on one timer thread.

Nomad's client runs each check in its own goroutine; threads cost more in
Python, so one scheduler thread keeps a heap of next-run times and hands
due checks to a small pool (a slow check, up to its timeout, holds a pool
worker, not the timer). A check runs only while its allocation is running;
its result goes to the AllocRunner (``record_check``), which puts it in the
heartbeat when it changes. A check waiting for its allocation to run is run
the moment the tasks start (``kick``), not at its next poll: a deployment
waits on that first result. While nothing listens on the port of an http
or tcp check of freshly (re)started tasks, it is probed again sooner than
its interval (see QUICK_FIRST). ``check_restart``: after `limit` failures in a row (counted
once `grace` has passed since the task started) the tasks are restarted
through the task runner's restart path.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import os
import select
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from orch import transport
from orch.structs import AllocStatus

if TYPE_CHECKING:
    from orch.agent.allocrunner import AllocRunner

log = logging.getLogger(__name__)

OUTPUT_MAX = 1024  # bytes of a check's output kept (and reported)
WORKERS = 4
# How often a check whose allocation is not running (yet) looks again.
IDLE_POLL = 0.5
# A fresh task whose port refuses the connection (nothing listens yet) is
# probed again QUICK_FIRST later, the delay doubling up to QUICK_MAX (never
# past the interval), until something answers or QUICK_WINDOW has gone by
# since the task started. Nomad waits out the interval; nothing forbids
# looking sooner, and a deployment waits on that first pass: with a 100 ms
# interval a copy that listens after 120 ms was seen at 200 ms, now at
# 120-170 ms. Only refusals: one costs ~40 us and never reaches the service;
# once anything answers (a 503 while warming up, a timeout) the service sees
# no more requests than its interval allows. check_restart counts failures
# at the interval's pace all the same (see _execute).
QUICK_FIRST = 0.01
QUICK_MAX = 0.05
QUICK_WINDOW = 10.0


@dataclass(eq=False)
class Check:
    """One check of one allocation's service, and its failure streak."""

    alloc: AllocRunner
    key: str  # "<service>/<check>"
    spec: dict  # orch.validation.services check dict
    port: int | None
    restart: dict | None  # check_restart: the check's own, else the service's
    failures: int = 0
    cancelled: bool = False
    idle: bool = False  # waiting for the allocation to run (see kick)
    due: int = -1  # the heap entry that counts; an earlier one is stale
    quick: float = QUICK_FIRST  # the next quick retry's delay; 0: none (see QUICK_FIRST)
    counted_at: float = float("-inf")  # monotonic time of the last result counted

    def next_delay(self, refused: bool, since_start: float | None) -> tuple[float, bool]:
        """(seconds until the next probe, whether it is a quick retry) after a
        probe that was refused (nothing listens) or not (passed, or answered)."""
        interval, quick = self.spec["interval"], self.quick
        fresh = since_start is not None and since_start <= QUICK_WINDOW
        if not refused or not fresh or not quick or quick >= interval:
            self.quick = 0.0  # something answered (or too late): the interval from now on
            return interval, False
        self.quick = min(quick * 2, QUICK_MAX)
        return quick, True

    def rearm(self) -> None:
        """The tasks are not running: their next start is probed quickly again."""
        self.failures = 0
        self.quick = QUICK_FIRST


def checks_of(alloc: AllocRunner) -> list[Check]:
    """The checks an allocation's services declare."""
    out = []
    for service in alloc.spec.services:
        for spec in service.get("checks") or ():
            out.append(
                Check(
                    alloc=alloc,
                    key=f"{service['name']}/{spec['name']}",
                    spec=spec,
                    port=_host_port(service.get("port")),
                    restart=spec.get("check_restart") or service.get("check_restart"),
                )
            )
    return out


def _host_port(port) -> int | None:
    """The pushed port, a number (the server resolved any label); else none."""
    return port if isinstance(port, int) and not isinstance(port, bool) else None


class CheckRunner:
    """The agent's check scheduler: a heap of (next run, check), one thread."""

    def __init__(self, host: str = "127.0.0.1", *, now=time.time):
        self.host = host
        self.now = now
        self._heap: list[tuple[float, int, Check]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._by_alloc: dict[str, list[Check]] = {}
        self._pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="check")
        self._closed = False
        self._thread = threading.Thread(target=self._run, daemon=True, name="checks")

    def watch(self, alloc: AllocRunner) -> None:
        """Start checking an allocation's services (no-op without checks)."""
        checks = checks_of(alloc)
        if not checks:
            return
        with self._cond:
            if self._closed or alloc.spec.allocation_id in self._by_alloc:
                return
            self._by_alloc[alloc.spec.allocation_id] = checks
            for check in checks:
                self._push(check, 0.0)
            if self._thread.ident is None:
                self._thread.start()
            self._cond.notify()

    def kick(self, alloc: AllocRunner) -> None:
        """The allocation changed: if it now runs, its idle checks run at once."""
        # Called on every change of every allocation: most have no idle check.
        checks = self._by_alloc.get(alloc.spec.allocation_id, ())
        if not any(c.idle for c in checks) or alloc.status() != AllocStatus.RUNNING:
            return
        with self._cond:
            for check in self._by_alloc.get(alloc.spec.allocation_id, ()):
                if check.idle and not self._closed:
                    check.idle = False
                    self._push(check, 0.0)
                    self._cond.notify()

    def unwatch(self, alloc_id: str) -> None:
        """Stop checking an allocation (its checks fall off the heap when due)."""
        with self._cond:
            for check in self._by_alloc.pop(alloc_id, ()):
                check.cancelled = True

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _push(self, check: Check, delay: float) -> None:
        """Schedule a check `delay` seconds from now (caller holds the condition)."""
        check.due = next(self._seq)
        heapq.heappush(self._heap, (time.monotonic() + delay, check.due, check))

    def _schedule(self, check: Check, delay: float, *, idle: bool = False) -> None:
        with self._cond:
            if not check.cancelled and not self._closed:
                check.idle = idle
                self._push(check, delay)
                self._cond.notify()

    def _next_due(self) -> Check | None:
        """Wait for the next due check; None once closed."""
        with self._cond:
            while not self._closed:
                if self._heap:
                    wait = self._heap[0][0] - time.monotonic()
                    if wait <= 0:
                        _, due, check = heapq.heappop(self._heap)
                        if due == check.due:  # else kicked: a newer entry counts
                            return check
                        continue
                    self._cond.wait(wait)
                else:
                    self._cond.wait()
            return None

    def _run(self) -> None:
        while (check := self._next_due()) is not None:
            if check.cancelled:
                continue
            alloc = check.alloc
            if alloc.finished:
                self.unwatch(alloc.spec.allocation_id)
                alloc.clear_checks()
                continue
            if alloc.status() != AllocStatus.RUNNING:
                # Between restarts or not started: what was known no longer holds.
                check.rearm()
                alloc.clear_checks()
                self._schedule(check, min(IDLE_POLL, check.spec["interval"]), idle=True)
                self.kick(alloc)  # the tasks may have started since the look above
                continue
            try:
                self._pool.submit(self._execute, check)
            except RuntimeError:  # the pool is shut down: closing
                return

    def _execute(self, check: Check) -> None:
        try:
            ok, output, refused = self.probe(check)
        except Exception as exc:  # a check must never take the scheduler down
            log.exception("check %s crashed", check.key)
            ok, output, refused = False, f"check error: {exc}", False
        if check.cancelled:
            return
        # NUL is the one character a report may not carry (nor PostgreSQL store).
        output = output[:OUTPUT_MAX].replace("\0", "\ufffd")
        check.alloc.record_check(check.key, ok, output, self.now())
        started = check.alloc.last_task_start()
        delay, quick = check.next_delay(refused, None if started is None else self.now() - started)
        # A quick retry is not one of the check's runs: a failure streak
        # grows at most once per interval, so check_restart fires no sooner.
        now = time.monotonic()
        if ok or not quick or now - check.counted_at >= check.spec["interval"]:
            check.counted_at = now
            self._count(check, ok)
        self._schedule(check, delay)

    def _count(self, check: Check, ok: bool) -> None:
        """Track the failure streak; restart the tasks when it reaches the limit."""
        rule = check.restart
        if ok or not rule or rule["limit"] <= 0:
            check.failures = 0
            return
        started = check.alloc.last_task_start()
        if started is None or self.now() - started < rule["grace"]:
            return  # failures during the grace period do not count
        check.failures += 1
        if check.failures >= rule["limit"]:
            check.failures = 0
            reason = f"restarted by check {check.key}: {rule['limit']} consecutive failures"
            log.info("alloc %s: %s", check.alloc.short, reason)
            check.alloc.restart_tasks(reason)

    def probe(self, check: Check) -> tuple[bool, str, bool]:
        """Run one check once: (passing, output, whether the connection was refused)."""
        kind, timeout = check.spec["type"], check.spec["timeout"]
        if kind == "script":
            return (*run_script(check.spec["command"], timeout, check.alloc.check_env()), False)
        if check.port is None:
            return False, "the service has no port to check", False
        if kind == "tcp":
            return tcp_probe(self.host, check.port, timeout)
        return http_probe(self.host, check.port, check.spec.get("path") or "/", timeout)


def http_probe(host: str, port: int, path: str, timeout: float) -> tuple[bool, str, bool]:
    """GET http://host:port/path: (passing on a 2xx or 3xx answer, output,
    whether the connection was refused)."""
    try:
        status, content = transport.get_once(host, port, path, timeout, OUTPUT_MAX)
    except (*transport.ERRORS, ValueError) as exc:
        refused = isinstance(exc, ConnectionRefusedError)
        return False, f"GET {path}: {exc or type(exc).__name__}", refused
    body = content.decode("utf-8", "replace")
    return 200 <= status < 400, f"HTTP {status}: {body}", False


def tcp_probe(host: str, port: int, timeout: float) -> tuple[bool, str, bool]:
    """Connect to host:port: (passing when the connection is accepted, output,
    whether it was refused)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True, f"TCP connect {host}:{port}: success", False
    except OSError as exc:
        refused = isinstance(exc, ConnectionRefusedError)
        return False, f"TCP connect {host}:{port}: {exc or type(exc).__name__}", refused


def run_script(command, timeout: float, env: dict | None) -> tuple[bool, str]:
    """Run a command (a string goes through /bin/sh -c): passing on exit 0.

    Never longer than `timeout` (plus the kill): a child that outlives the
    script (`setsid cmd &`) may hold its output pipe open for good, and a
    wait for the pipe's end held a pool worker with it (4 such checks froze
    every check of the node). Only the first OUTPUT_MAX bytes are kept; the
    rest is read and dropped, so a chatty script neither blocks nor fills
    the agent's memory.
    """
    argv = ["/bin/sh", "-c", command] if isinstance(command, str) else list(command)
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # its own group: a timeout kills its children too
        )
    except OSError as exc:
        return False, f"cannot run the check: {exc}"
    assert proc.stdout is not None
    try:
        out, exited = _read_until_exit(proc, proc.stdout.fileno(), time.monotonic() + timeout)
    finally:
        proc.stdout.close()
    if not exited:
        _kill_group(proc)
        return False, f"timed out after {timeout:g}s"
    text = out.decode("utf-8", "replace")
    return proc.returncode == 0, text if text else f"exit code {proc.returncode}"


# After the script exits, how long its output pipe may stay open (held by a
# child it left running) before the result is taken without the pipe's end.
PIPE_GRACE = 0.05


def _read_until_exit(proc: subprocess.Popen, fd: int, deadline: float) -> tuple[bytes, bool]:
    """The first OUTPUT_MAX bytes the script writes, and whether it exited by
    the deadline. Reads until the pipe ends or the script is gone."""
    kept = bytearray()
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    exited_at = None
    while True:
        now = time.monotonic()
        if exited_at is None and proc.poll() is not None:
            exited_at = now
        if exited_at is not None and now - exited_at >= PIPE_GRACE:
            return bytes(kept), True
        left = deadline - now
        if left <= 0:
            return bytes(kept), proc.poll() is not None
        # Short waits while it runs: its exit is seen by poll(), not the pipe.
        wait = min(left, PIPE_GRACE if exited_at is not None else 0.1)
        if not poller.poll(wait * 1000):
            continue
        chunk = os.read(fd, 65536)
        if not chunk:  # the pipe's end: the script closed it, or is gone
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                return bytes(kept), False
            return bytes(kept), True
        if len(kept) < OUTPUT_MAX:
            kept += chunk[: OUTPUT_MAX - len(kept)]


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:  # not killable now (D state): reaped by a later poll
        log.warning("check script %d did not end after SIGKILL", proc.pid)


def check_host(config) -> str:
    """Where http and tcp checks connect: the host the node advertises (the
    catalog's address), else the agent's bind address, else loopback."""
    host = urlsplit(config.advertise).hostname if config.advertise else None
    host = host or config.bind
    return "127.0.0.1" if host in (None, "", "0.0.0.0", "::") else host
