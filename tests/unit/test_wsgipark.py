"""Requests parked on the I/O loop (orch.wsgipark): a waiting route answers
``Later``, and the request waits on its connection, with no worker thread,
until it is woken or its deadline comes."""

import http.client
import socket
import threading
import time

import bottle
import pytest

from orch.wsgiloop import EpollMap
from orch.wsgipark import Declined, Later

from waiting import wait_for


class Gate:
    """A ``Later``'s parts, driven by the test: ``wakers`` are the parked
    queries' wakers (``open`` wakes them all); ``answers`` what ``answer``
    gives next (None: not yet), or Declined."""

    def __init__(self):
        self.wakers = []
        self.watched_on = []  # the threads their watch ran on
        self.answers = []
        self.asked = 0
        self.unwatched = 0

    def later(self, wait_s: float = 30.0) -> Later:
        def answer():
            self.asked += 1
            got = self.answers.pop(0) if self.answers else (b'{"by":"later"}', {})
            if got is Declined:
                raise Declined
            return got

        return Later(time.monotonic() + wait_s, self._watch, self._unwatch, answer)

    def _watch(self, waker):
        self.watched_on.append(threading.current_thread().name)
        self.wakers.append(waker)

    def _unwatch(self, _waker):
        self.unwatched += 1

    def open(self):
        for waker in list(self.wakers):
            waker.set()


def _app(seen):
    app = bottle.Bottle()

    @app.route("/thing/<name>")
    def thing(name):
        seen.append(("app", name, bottle.request.query_string))
        bottle.response.content_type = "application/json"
        return '{"by":"app"}'

    return app


def _routes(seen, gate, wait_s=30.0):
    def plain(headers, body, param):
        seen.append(("inline", param))
        return b'{"by":"inline"}', {}

    def waiting(headers, query, param):
        seen.append(("waiting", param, query))
        if param == "app":
            return None
        return gate.later(float(query.partition("=")[2] or wait_s))

    return {("GET", "/thing/*"): plain}, {("GET", "/thing/*"): waiting}


def _get(port, path, timeout=20):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _in_thread(fn, *args):
    out = []
    thread = threading.Thread(target=lambda: out.append(fn(*args)), daemon=True)
    thread.start()
    return thread, out


def test_parked_requests_hold_no_worker_and_answer_when_woken(serve):
    seen, gate = [], Gate()
    inline, waiting = _routes(seen, gate)
    port = serve(_app(seen), inline, waiting)
    threads_before = threading.active_count()
    parked = [_in_thread(_get, port, f"/thing/{i}?wait=30") for i in range(24)]
    assert wait_for(lambda: len(gate.wakers) == 24, timeout=10)
    # 24 waiting, more than the server's worker threads: none of them holds
    # one, so the app still answers at once, and nothing answered them yet.
    assert _get(port, "/thing/app?x=1", timeout=5) == (200, b'{"by":"app"}')
    assert threading.active_count() - threads_before == 24  # only the clients' threads
    assert not any(out for _, out in parked)
    gate.open()
    for thread, out in parked:
        thread.join(10)
        assert out == [(200, b'{"by":"later"}')]
    assert gate.unwatched == 24
    assert not [s for s in seen if s[0] == "app" and s[1] != "app"]


def test_the_deadline_answers_a_query_nothing_woke(serve):
    seen, gate = [], Gate()
    port = serve(_app(seen), *_routes(seen, gate))
    start = time.monotonic()
    assert _get(port, "/thing/a?wait=0.3") == (200, b'{"by":"later"}')
    assert 0.25 < time.monotonic() - start < 5
    assert gate.asked == 1 and gate.unwatched == 1


def test_an_answer_not_ready_is_asked_again_until_it_is(serve):
    seen, gate = [], Gate()
    port = serve(_app(seen), *_routes(seen, gate))
    gate.answers = [None, None, None, (b'{"by":"fourth"}', {})]
    thread, out = _in_thread(_get, port, "/thing/a?wait=30")
    assert wait_for(lambda: gate.wakers, timeout=10)
    gate.open()
    thread.join(10)
    assert out == [(200, b'{"by":"fourth"}')] and gate.asked == 4


def test_a_declined_answer_goes_to_the_route_with_its_query(serve):
    seen, gate = [], Gate()
    port = serve(_app(seen), *_routes(seen, gate))
    gate.answers = [Declined]
    thread, out = _in_thread(_get, port, "/thing/gone?wait=30")
    assert wait_for(lambda: gate.wakers, timeout=10)
    gate.open()
    thread.join(10)
    assert out == [(200, b'{"by":"app"}')]
    assert ("app", "gone", "wait=30") in seen


def test_a_request_pipelined_behind_a_parked_one_is_answered_after_it(serve):
    seen, gate = [], Gate()
    port = serve(_app(seen), *_routes(seen, gate))
    gate.answers = [(b'{"n":1}', {})]
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        one = b"GET /thing/%s HTTP/1.1\r\nHost: x\r\n\r\n"
        sock.sendall(one % b"a?wait=30" + one % b"b")
        assert wait_for(lambda: gate.wakers, timeout=10)
        time.sleep(0.2)
        sock.settimeout(0.2)
        with pytest.raises(TimeoutError):
            sock.recv(4096)  # the second is not answered before the first
        sock.settimeout(10)
        gate.open()
        got = b""
        while got.count(b"HTTP/1.1 200") < 2 or not got.endswith(b"}"):
            got += sock.recv(4096)
        assert got.index(b'{"n":1}') < got.index(b'{"by":"inline"}')
    finally:
        sock.close()


def test_a_client_gone_while_parked_leaves_the_server_serving(serve):
    seen, gate = [], Gate()
    port = serve(_app(seen), *_routes(seen, gate))
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"GET /thing/a?wait=30 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert wait_for(lambda: gate.wakers, timeout=10)
    sock.close()
    time.sleep(0.1)
    gate.open()  # its answer finds the connection gone, or sends into it
    assert wait_for(lambda: gate.unwatched == 1, timeout=10)
    assert _get(port, "/thing/b") == (200, b'{"by":"inline"}')


@pytest.mark.parametrize("hang_up", ["close", "half-close"])
def test_a_client_that_hangs_up_is_forgotten_at_once(serve, hang_up):
    """Not at its deadline: the loop hears the hang-up of a connection it
    reads no more (a half close too, as Go's server, Nomad's, takes it)."""
    seen, gate = [], Gate()
    port = serve(_app(seen), *_routes(seen, gate))
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        sock.sendall(b"GET /thing/a?wait=60 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert wait_for(lambda: gate.wakers, timeout=10)
        if hang_up == "close":
            sock.close()
        else:
            sock.shutdown(socket.SHUT_WR)
        assert wait_for(lambda: gate.unwatched == 1, timeout=5)
        assert gate.asked == 0  # nobody to answer
        if hang_up == "half-close":
            assert sock.recv(4096) == b""  # closed, unanswered
    finally:
        sock.close()
    assert _get(port, "/thing/b") == (200, b'{"by":"inline"}')


def test_a_query_pipelined_behind_a_workers_request_is_parked_by_the_loop(serve):
    """The worker that ends the first request finds the second: its timers
    and watch are the loop's to start, not the worker's."""
    seen, gate = [], Gate()
    port = serve(_app(seen), *_routes(seen, gate))
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        one = b"GET /thing/%s HTTP/1.1\r\nHost: x\r\n\r\n"
        sock.sendall(one % b"app?x=1" + one % b"b?wait=0.3")
        got = b""
        while got.count(b"HTTP/1.1 200") < 2 or not got.endswith(b"}"):
            got += sock.recv(4096)
        assert got.index(b'{"by":"app"}') < got.index(b'{"by":"later"}')
    finally:
        sock.close()
    assert len(gate.watched_on) == 1
    assert not gate.watched_on[0].startswith("waitress-")  # the loop's thread
    assert gate.unwatched == 1


def test_the_loops_timers_run_in_order_and_cancelled_ones_do_not():
    loop = EpollMap()
    ran = []
    now = time.monotonic()
    timers = [loop.call_at(now - 1 + i / 100, lambda i=i: ran.append(i)) for i in (3, 1, 2, 0)]
    loop.cancel(timers[2])  # the one of 2
    loop.cancel(timers[2])  # twice: no harm
    loop._run_timers()
    assert ran == [0, 1, 3]
    # Cancelled timers are dropped in one go once they are most of the heap.
    later = [loop.call_at(now + 60, lambda: None) for _ in range(200)]
    for timer in later[:150]:
        loop.cancel(timer)
    assert len(loop._timers) < 200
    assert sum(t[2] is not None for t in loop._timers) == 50
    assert loop._timers[0] == min(loop._timers)  # still a heap
