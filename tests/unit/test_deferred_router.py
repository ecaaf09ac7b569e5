"""httpjson.DeferredRouter: bottle's routes compiled at the first match, not per route added."""

from __future__ import annotations

import threading

import bottle

from orch import httpjson


def app_with_routes(count: int) -> bottle.Bottle:
    app = bottle.Bottle()
    route = httpjson.Router(app)
    for i in range(count):
        route("GET", f"/r{i}/<item>")(lambda item, i=i: {"route": i, "item": item})
    return app


def match(app: bottle.Bottle, path: str, method: str = "GET") -> tuple[str, dict]:
    """The rule the router picks for ``path``, and its arguments."""
    route, args = app.router.match({"REQUEST_METHOD": method, "PATH_INFO": path})
    return route.rule, args


def test_nothing_is_compiled_until_the_first_match():
    app = app_with_routes(60)
    assert isinstance(app.router, httpjson.DeferredRouter)
    assert not app.router.dyna_regexes  # bottle would have compiled 60 times by now
    assert match(app, "/r59/x") == ("/r59/<item>", {"item": "x"})
    assert "GET" in app.router.dyna_regexes


def test_concurrent_first_matches_all_find_their_route():
    """A request never sees half a table while another thread compiles it."""
    app = app_with_routes(200)  # several of bottle's 99-group chunks
    found: list = []
    start = threading.Barrier(8)

    def worker(n: int) -> None:
        start.wait()
        found.append(match(app, f"/r{199 - n}/y"))

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert sorted(found) == sorted((f"/r{199 - n}/<item>", {"item": "y"}) for n in range(8))


def test_a_route_added_after_a_match_is_found_too():
    app = app_with_routes(3)
    assert match(app, "/r0/a")[0] == "/r0/<item>"
    httpjson.Router(app)("POST", "/late/<item>")(lambda item: {"late": item})
    assert match(app, "/late/b", "POST") == ("/late/<item>", {"item": "b"})
    assert match(app, "/r2/c")[0] == "/r2/<item>"
