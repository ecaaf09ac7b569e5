"""The exec driver's line to its task supervisor (`server.py`).

One supervisor process per agent, found by name: the name derives from the
agent's data dir, so a restarted agent reaches the supervisor its predecessor
started (and the tasks it still watches). If none answers, one is started: a
fresh interpreter without site packages that imports only the supervisor
package, in a session of its own. A reader thread takes its answers to start
requests and its word that a task ended, and wakes whoever waits for either.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import logging
import os
import selectors
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable

import psutil

import orch
from orch import fastjson
from orch.agent.tasksup.protocol import IN_USE, READY, receive, socket_address, take_lines
from orch.errors import DriverError

log = logging.getLogger(__name__)

CONNECT_TRIES = 5
START_TIMEOUT = 10.0  # a supervisor that has not said READY by then is broken
ANSWER_TIMEOUT = 30.0  # one start: claim, fork, exec
LOST = "task supervisor connection lost"
# The supervisor's command line: only our package on the path, no site.
_BOOT = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from orch.agent.tasksup.server import main; sys.exit(main(sys.argv[2:]))"
)


def data_dir_tag(state_dir: str) -> str:
    """A name for an agent data dir: the same for every agent that holds it."""
    return hashlib.sha256(os.path.realpath(state_dir).encode()).hexdigest()[:24]


def supervisor_name(state_dir: str | None) -> str:
    """One name per agent data dir; a private one for a driver without a dir."""
    return "orch-supervisor-" + (data_dir_tag(state_dir) if state_dir else uuid.uuid4().hex[:24])


# A start's answer, the supervisor's pid and create time; called on the reader thread.
AnswerCallback = Callable[[dict, int, "float | None"], None]
# A task's end line (its exit fields when the supervisor sends them), None
# when the connection was lost first; called on the reader thread.
ExitCallback = Callable[["dict | None"], None]


class _Pending:
    __slots__ = ("event", "reply", "callback")

    def __init__(
        self,
        callback: Callable[[dict], None] | None = None,
        event: threading.Event | None = None,
    ):
        # Only a caller that waits needs an Event (a lock and a condition):
        # an answer with a callback is handed over by the reader directly.
        self.event = event
        self.reply: dict | None = None
        self.callback = callback


class SupervisorClient:
    """Start tasks through the supervisor; learn when they end."""

    def __init__(self, name: str, log_path: str | None = None):
        self.name = name
        self._log_path = log_path
        self._lock = threading.Lock()  # the connection and the tables
        self._send_lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._pid: int | None = None
        self._created: float | None = None
        self._popen: subprocess.Popen | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._watchers: dict[int, set[threading.Event]] = {}
        self._exit_calls: dict[int, ExitCallback] = {}
        self._closed = False

    # -- requests ---------------------------------------------------------------

    def start(self, spec: dict) -> tuple[dict, int, float | None]:
        """Ask for a start: (answer, supervisor pid, its create time); raises DriverError."""
        line_id = next(self._ids)
        answered = threading.Event()
        pending = _Pending(event=answered)
        sock, pid, created = self._connection()
        with self._lock:
            self._pending[line_id] = pending
        try:
            data = fastjson.dumps({"id": line_id, "start": spec}, escape=True) + b"\n"
            try:
                with self._send_lock:
                    sock.sendall(data)
            except OSError as exc:
                self._lost(sock)
                raise DriverError(f"{LOST}: {exc}") from exc
            if not answered.wait(ANSWER_TIMEOUT):
                raise DriverError("task supervisor did not answer")
        finally:
            with self._lock:
                self._pending.pop(line_id, None)
        reply = pending.reply or {"error": LOST}
        return reply, pid, created

    def start_async(self, spec: dict, on_answer: AnswerCallback) -> None:
        """Ask for a start without waiting: `on_answer(answer, pid, created)`
        is called from the reader thread (with {"error": LOST} if the
        connection goes first); raises DriverError if it cannot be sent."""
        line_id = next(self._ids)
        sock, pid, created = self._connection()
        pending = _Pending(lambda reply: on_answer(reply, pid, created))
        with self._lock:
            self._pending[line_id] = pending
        data = fastjson.dumps({"id": line_id, "start": spec}, escape=True) + b"\n"
        try:
            with self._send_lock:
                sock.sendall(data)
        except OSError as exc:
            with self._lock:
                unanswered = self._pending.pop(line_id, None) is not None
            self._lost(sock)
            if unanswered:  # else the loss was told to `on_answer` already
                raise DriverError(f"{LOST}: {exc}") from exc

    def on_exit(self, pid: int, callback: ExitCallback) -> None:
        """Call `callback` once, from the reader thread, when task `pid` ends.

        Registered from an answer's callback (the reader thread), it cannot
        miss the end line: the supervisor sends that after the answer."""
        with self._lock:
            lost = self._sock is None
            if not lost:
                self._exit_calls[pid] = callback
        if lost:
            callback(None)

    def watch(self, pid: int) -> threading.Event:
        """An event set when task `pid` ended (or the connection was lost)."""
        event = threading.Event()
        with self._lock:
            self._watchers.setdefault(pid, set()).add(event)
        return event

    def unwatch(self, pid: int, event: threading.Event) -> None:
        with self._lock:
            events = self._watchers.get(pid)
            if events is not None:
                events.discard(event)
                if not events:
                    del self._watchers[pid]

    def serves(self, supervisor_pid: int | None) -> bool:
        """Is that supervisor the one we are connected to (so alive, and telling us)?"""
        with self._lock:
            return self._sock is not None and supervisor_pid == self._pid

    def close(self) -> None:
        """Let go of the supervisor: it leaves once its tasks have ended."""
        with self._lock:
            self._closed = True
            sock, self._sock = self._sock, None
        if sock is not None:
            _close(sock)
        self._reap(timeout=2.0)

    # -- the connection ---------------------------------------------------------

    def _connection(self) -> tuple[socket.socket, int, float | None]:
        with self._lock:
            if self._sock is not None and self._pid is not None:  # set together
                return self._sock, self._pid, self._created
            self._closed = False
            for _ in range(CONNECT_TRIES):
                sock = self._connect()
                if sock is None:
                    self._spawn()
                    sock = self._connect()
                if sock is not None:
                    break
            else:
                raise DriverError(
                    f"cannot reach the task supervisor (see {self._log_path or 'its log'})"
                )
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
            self._pid = pid = int.from_bytes(creds[0:4], sys.byteorder)
            try:
                self._created = psutil.Process(pid).create_time()
            except psutil.Error:
                self._created = None
            self._sock = sock
            threading.Thread(
                target=self._read, args=(sock,), daemon=True, name="supervisor-reader"
            ).start()
            log.debug("connected to task supervisor pid=%d", pid)
            return sock, pid, self._created

    def _connect(self) -> socket.socket | None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(socket_address(self.name))
        except OSError as exc:
            sock.close()
            if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                log.warning("task supervisor: %s", exc)
            return None
        return sock

    def _spawn(self) -> None:
        """Start a supervisor; it says READY once bound (IN_USE: one already is)."""
        self._reap(timeout=0)
        root = os.path.dirname(os.path.dirname(os.path.abspath(orch.__file__)))
        log_path = self._log_path or os.devnull
        try:
            with open(log_path, "ab") as err:
                popen = subprocess.Popen(
                    [sys.executable, "-S", "-E", "-c", _BOOT, root, self.name],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=err,
                    start_new_session=True,
                    close_fds=True,
                )
        except OSError as exc:
            raise DriverError(f"failed to start the task supervisor: {exc}") from exc
        stdout = popen.stdout
        assert stdout is not None  # stdout=PIPE
        try:
            line = _read_line(stdout, START_TIMEOUT)
        finally:
            stdout.close()
        if line == READY:
            self._popen = popen
            log.info("task supervisor started pid=%d", popen.pid)
        elif line == IN_USE:
            popen.wait()
        else:
            popen.kill()
            popen.wait()
            log.warning("task supervisor failed to start (see %s)", log_path)

    def _reap(self, timeout: float) -> None:
        """Our child supervisor, once it has left: no zombie stays behind."""
        popen = self._popen
        if popen is None:
            return
        try:
            popen.wait(timeout)
            self._popen = None
        except subprocess.TimeoutExpired:
            pass

    # -- the reader thread ----------------------------------------------------------

    def _read(self, sock: socket.socket) -> None:
        buf = bytearray()
        while True:
            data = receive(sock)
            if not data:
                self._lost(sock)
                return
            buf += data
            for line in take_lines(buf):
                try:
                    self._dispatch(fastjson.loads(line))
                except (ValueError, TypeError, AttributeError):
                    log.warning("task supervisor sent an unreadable line: %r", line[:200])

    def _dispatch(self, doc: dict) -> None:
        call: Callable | None = None
        with self._lock:
            if "exited" in doc:
                for event in self._watchers.get(doc["exited"], ()):
                    event.set()
                call = self._exit_calls.pop(doc["exited"], None)
                pending = None
            else:
                line_id = doc.get("id")
                pending = self._pending.get(line_id) if isinstance(line_id, int) else None
                if pending is not None and pending.callback is not None:
                    self._pending.pop(doc["id"])  # no caller waits to take it off
                    call, pending = pending.callback, None
        if call is not None:
            _call(call, doc)
        if pending is not None and pending.event is not None:
            pending.reply = doc
            pending.event.set()

    def _lost(self, sock: socket.socket) -> None:
        """The supervisor went away (or we closed): wake every waiter to look again."""
        with self._lock:
            if self._sock is sock:
                self._sock = None
            closed = self._closed
            for pending in self._pending.values():
                if pending.event is not None:
                    pending.event.set()
            for events in self._watchers.values():
                for event in events:
                    event.set()
            answers = [p.callback for p in self._pending.values() if p.callback is not None]
            self._pending = {k: p for k, p in self._pending.items() if p.callback is None}
            exits, self._exit_calls = list(self._exit_calls.values()), {}
        for answer in answers:  # outside the lock: they may start again
            _call(answer, {"error": LOST})
        for call in exits:
            _call(call, None)
        _close(sock)
        if not closed:
            log.warning("lost the connection to the task supervisor")
        self._reap(timeout=0.5)


def _call(callback: Callable, arg: dict | None) -> None:
    """A caller's callback; its bug must not end the reader thread."""
    try:
        callback(arg)
    except Exception:
        log.exception("task supervisor callback failed")


def _read_line(stream, timeout: float) -> bytes:
    """One line from a child's stdout, or b"" after `timeout` seconds."""
    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        if not sel.select(timeout):
            return b""
    return stream.readline()


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
