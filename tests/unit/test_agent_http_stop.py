"""HttpServer.stop (orch/agent/main.py): the loop, the workers and the
trigger stop in that order, whatever wakes the loop meanwhile."""

import threading

import requests

from orch.agent.main import HttpServer

from waiting import wait_for


def _app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "2")])
    return [b"ok"]


def _parts(server: HttpServer):
    return server._server, server._thread


def test_a_pull_that_wakes_the_loop_before_stop_writes_its_byte_is_harmless():
    # Seen in test_agent_inline's teardown: a worker ending its request pulls
    # the trigger just as stop() queues its thunk; the woken loop runs the
    # thunk before stop() writes its byte. A thunk that closed the trigger
    # (close_all) made that write fail with EBADF, or land in whatever file
    # had taken the fd's number since.
    server = HttpServer(_app, "127.0.0.1", 0, threads=1)
    server.start()
    assert requests.get(f"{server.url}/x", timeout=5).text == "ok"
    http, loop = _parts(server)
    trigger = http.trigger
    real_pull = trigger._physical_pull
    woken: list[bool] = []

    def worker_pulls_first():
        # The worker's pull (its byte), then stop()'s own write only once
        # the woken loop has run the thunk.
        real_pull()
        woken.append(wait_for(lambda: not loop.is_alive(), 10.0))
        real_pull()

    trigger._physical_pull = worker_pulls_first
    server.stop()
    assert woken == [True]  # the thunk ran first, as in the failed teardown
    assert not loop.is_alive() and not http.task_dispatcher.threads
    assert trigger._closed and trigger._fds == []  # closed after the write
    assert server._sock.fileno() == -1  # the listener too
    server.stop()  # again: nothing is written to the closed pipe's fd


def test_stop_waits_for_a_request_in_progress_before_closing_the_trigger():
    entered, release = threading.Event(), threading.Event()
    answers: list[int] = []

    def slow_app(environ, start_response):
        entered.set()
        release.wait(10)
        return _app(environ, start_response)

    server = HttpServer(slow_app, "127.0.0.1", 0, threads=1)
    server.start()
    http, loop = _parts(server)

    def ask():
        try:
            answers.append(requests.get(f"{server.url}/x", timeout=10).status_code)
        except requests.ConnectionError:  # stop() closed the connection
            answers.append(0)

    client = threading.Thread(target=ask)
    client.start()
    assert entered.wait(10)
    stopper = threading.Thread(target=server.stop)
    stopper.start()
    assert wait_for(lambda: not loop.is_alive(), 10.0)  # connections closed at once
    assert not http.trigger._closed  # the worker may still pull it
    release.set()
    stopper.join(10)
    client.join(10)
    assert not stopper.is_alive() and not http.task_dispatcher.threads
    assert http.trigger._closed
