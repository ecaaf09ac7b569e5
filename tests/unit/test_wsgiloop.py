"""orch.wsgiloop: waitress on epoll visits only the connections that changed,
and still times out, closes and shuts down as waitress's own loop does."""

from __future__ import annotations

import os
import select
import signal
import socket
import threading
import time

import pytest
from waitress import create_server

from orch.wsgichannel import use_orch_channels
from orch.wsgiloop import HAVE_EPOLL, EpollMap, close_after_run, socket_map, stop_serving

pytestmark = pytest.mark.skipif(not HAVE_EPOLL, reason="no epoll on this platform")

REQUEST = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"


def _app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


@pytest.fixture
def serve():
    """Start waitress on an EpollMap (kwargs: its adjustments); stop it after."""
    started = []

    def start(**adjustments):
        smap = socket_map()
        assert isinstance(smap, EpollMap)
        http = create_server(_app, map=smap, host="127.0.0.1", port=0, threads=2, **adjustments)
        use_orch_channels(http)
        thread = threading.Thread(target=http.run, daemon=True)
        thread.start()
        started.append((http, thread))
        return http, smap

    yield start
    for http, thread in started:
        assert stop_serving(http, thread, timeout=10)


def _connect(http) -> socket.socket:
    return socket.create_connection((http.effective_host, http.effective_port), timeout=10)


def _ask(sock: socket.socket) -> bytes:
    sock.sendall(REQUEST)
    answer = b""
    while not answer.endswith(b"\r\n\r\nok"):
        data = sock.recv(4096)
        assert data, "closed by the server"
        answer += data
    return answer


def _wait(condition, timeout=20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_idle_connections_are_not_visited_per_request(serve):
    http, smap = serve(connection_limit=1000)
    idle = [_connect(http) for _ in range(200)]
    try:
        for sock in idle:
            assert _ask(sock).startswith(b"HTTP/1.1 200 OK")
        _wait(lambda: len(http.active_channels) == 200)
        busy = _connect(http)
        _ask(busy)
        before = smap.visits
        for _ in range(20):
            _ask(busy)
        visits = smap.visits - before
        # waitress's loop asks all 203 sockets at every turn (a request is
        # several turns): over 4,000 here. epoll: the busy connection, the
        # listener and the trigger, a few turns per request.
        assert visits < 20 * 12, visits
        for sock in idle[::20]:  # the idle ones still answer
            assert _ask(sock).startswith(b"HTTP/1.1 200 OK")
    finally:
        for sock in idle:
            sock.close()
    _wait(lambda: len(http.active_channels) == 1)  # closed by the clients: gone


def test_idle_connection_times_out(serve):
    http, smap = serve(channel_timeout=1, cleanup_interval=1)
    sock = _connect(http)
    _ask(sock)
    sock.settimeout(15)
    assert sock.recv(10) == b""  # waitress's maintenance closed it
    _wait(lambda: not http.active_channels)
    sock.close()


def test_closed_fd_numbers_are_reused_cleanly(serve):
    http, smap = serve()
    for _ in range(30):
        sock = _connect(http)
        _ask(sock)
        sock.close()
    _wait(lambda: not http.active_channels)
    socks = [_connect(http) for _ in range(5)]
    for sock in socks:
        assert _ask(sock).startswith(b"HTTP/1.1 200 OK")
        sock.close()


def test_request_that_ends_the_connection(serve):
    http, smap = serve()
    sock = _connect(http)
    sock.sendall(b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    assert data.startswith(b"HTTP/1.1 200 OK") and data.endswith(b"ok")
    sock.close()
    _wait(lambda: not http.active_channels)


def test_other_maps_keep_waitress_loop():
    http = create_server(_app, map={}, host="127.0.0.1", port=0, threads=1)
    use_orch_channels(http)
    assert "asyncore" not in vars(http)  # the class's: wasyncore
    http.close()
    http.task_dispatcher.shutdown(timeout=2)


def _slow_app(environ, start_response):
    time.sleep(0.5)  # a worker holds the connection meanwhile
    body = environ["PATH_INFO"].encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def test_data_while_a_worker_serves_the_connection(serve):
    """The connection stays registered for input while busy (no epoll_ctl);
    a request arriving then neither spins the loop nor is lost."""
    http, smap = serve()
    http.application = _slow_app
    sock = _connect(http)
    sock.sendall(b"GET /first HTTP/1.1\r\nHost: a\r\n\r\n")
    time.sleep(0.2)
    before = smap.visits
    sock.sendall(b"GET /second HTTP/1.1\r\nHost: a\r\n\r\n")
    answer = b""
    while not answer.endswith(b"/second"):
        data = sock.recv(4096)
        assert data, "closed by the server"
        answer += data
    assert answer.index(b"/first") < answer.index(b"/second")
    assert smap.visits - before < 60  # a spin would be thousands in 0.3 s
    sock.close()


def test_inline_request_visits_its_connection_alone(serve):
    """A request answered inline costs one visit: its connection. The
    listener and the trigger are not asked again at every turn (their
    answers change only when a socket comes or goes, or at maintenance)."""
    http, smap = serve()
    for dispatcher in list(smap.values()):
        if hasattr(dispatcher, "add_task"):
            use_orch_channels(http, inline={("GET", "/x"): lambda h, b, p: (b"ok", {})})
            break
    sock = _connect(http)
    _ask(sock)  # connected: the listener was asked then
    before = smap.visits
    for _ in range(50):
        assert _ask(sock).startswith(b"HTTP/1.1 200 OK")
    visits = smap.visits - before
    # Asking the listener and the trigger as well: three a request.
    assert visits <= 50 + 5, visits
    sock.close()


def test_connection_limit_still_applies(serve):
    """At the limit the listener stops accepting; a connection that goes
    makes room (the listener is asked again when the sockets change)."""
    # waitress counts every socket of its map: the listener and the trigger too.
    http, smap = serve(connection_limit=4)
    first, second = _connect(http), _connect(http)
    _ask(first)
    _ask(second)
    third = _connect(http)  # queued in the backlog, not accepted
    third.sendall(REQUEST)
    third.settimeout(0.5)
    with pytest.raises(socket.timeout):
        third.recv(10)
    first.close()
    third.settimeout(15)
    answer = b""
    while not answer.endswith(b"\r\n\r\nok"):
        data = third.recv(4096)
        assert data, "closed by the server"
        answer += data
    assert answer.startswith(b"HTTP/1.1 200 OK")
    second.close()
    third.close()


def _held_server():
    """A one-worker server whose app holds each request until ``release``;
    ``entered`` is set once one is held."""
    entered, release = threading.Event(), threading.Event()

    def held_app(environ, start_response):
        entered.set()
        release.wait(10)
        return _app(environ, start_response)

    http = create_server(held_app, map=socket_map(), host="127.0.0.1", port=0, threads=1)
    use_orch_channels(http)
    return http, entered, release


def test_a_worker_that_outlives_the_stop_keeps_the_trigger_open():
    """A worker still serving when stop_serving gives up may pull the
    trigger yet: its pipe stays open until a later stop closes it."""
    http, entered, release = _held_server()
    thread = threading.Thread(target=http.run, daemon=True)
    thread.start()
    sock = _connect(http)
    sock.sendall(REQUEST)
    assert entered.wait(10)
    assert stop_serving(http, thread, timeout=10, workers_timeout=0.1) is False
    assert not thread.is_alive() and not http.trigger._closed
    release.set()
    http.pull_trigger()  # as the worker does when it ends: the pipe is there
    assert stop_serving(http, thread, timeout=10) is True
    assert http.trigger._closed
    sock.close()


class _Signalled(Exception):
    pass


def test_after_a_signal_ends_run_the_trigger_outlives_the_workers():
    """The server's exit (orch/server/server.py): a signal's exception ends
    run() on this thread while a worker still serves. The trigger stays open
    until that worker has ended (and pulled it); waitress's close() closed
    it first, so the worker's pull hit a closed pipe, or another file."""
    http, entered, release = _held_server()
    sock = _connect(http)
    sock.sendall(REQUEST)

    def interrupt(_signum, _frame):
        raise _Signalled

    def signal_once_served():
        entered.wait(10)
        os.kill(os.getpid(), signal.SIGUSR1)

    previous = signal.signal(signal.SIGUSR1, interrupt)
    try:
        threading.Thread(target=signal_once_served, daemon=True).start()
        with pytest.raises(_Signalled):
            http.run()  # on this (the main) thread, as the server's main()
    finally:
        signal.signal(signal.SIGUSR1, previous)
    closed: list[bool] = []
    closer = threading.Thread(target=lambda: closed.append(close_after_run(http, 10.0)))
    closer.start()
    _wait(lambda: http.socket is None or http.socket.fileno() == -1)  # the listener goes at once
    time.sleep(0.1)
    assert not http.trigger._closed  # the worker may still pull it
    release.set()
    closer.join(15)
    assert closed == [True] and not http.task_dispatcher.threads
    assert http.trigger._closed
    assert close_after_run(http) is True  # again: nothing touches the closed pipe
    sock.close()


def test_a_socket_closed_by_another_thread_before_its_registration_is_forgotten():
    """A worker whose send fails closes its connection (the fd) while the
    loop, which read the map just before, registers it: epoll said EBADF and
    the exception ended the loop (seen in CI once streams ended when their
    client went). Now the fd is forgotten; the map's delete queued it."""
    smap = EpollMap()
    smap._epoll = select.epoll()
    try:
        sock = socket.socket()
        fd = sock.fileno()
        sock.close()
        smap._register(fd, object(), select.POLLIN, 0)
        assert fd not in smap._registered
        # One registered, closed (epoll drops it), its number taken by a new
        # socket: a modify finds nothing, so it is registered anew.
        first = socket.socket()
        fd = first.fileno()
        smap._register(fd, object(), select.POLLIN, 0)
        first.close()
        second = socket.socket()
        try:
            assert second.fileno() == fd  # the lowest free number
            obj = object()
            smap._register(fd, obj, select.POLLIN | select.POLLOUT, select.POLLIN)
            assert smap._registered[fd] == (obj, select.POLLIN | select.POLLOUT)
        finally:
            second.close()
    finally:
        smap._epoll.close()
