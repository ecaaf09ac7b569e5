"""The /v1 face's HTTP plumbing: Nomad's auth header, error form and indexes.

Nomad answers an error with its status and a plain-text body (``job not
found``), not JSON; clients such as python-nomad pick their exception by the
status alone (400 BadRequest, 403 URLNotAuthorized, 404 URLNotFound). A
missing or wrong token is Nomad's 403 ``Permission denied``, where orch's own
routes say 401. The token comes as ``X-Nomad-Token`` or as orch's bearer.

A handler returns ``(payload, index)``: the payload is sent as JSON and the
index as ``X-Nomad-Index``, as Nomad sends it on reads. A GET carrying
``?index=N`` is a blocking query: it is answered once the index passes N or
``wait`` runs out (orch.server.changes wakes it on every state write).
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
from collections.abc import Callable
from typing import Any

import bottle

from orch import httpjson
from orch.errors import OrchError, ValidationError
from orch.server.changes import ChangeFeed
from orch.validation import fields

log = logging.getLogger(__name__)

# Nomad's defaults for a blocking query: 5 min unless ``wait`` says, at most 10.
DEFAULT_WAIT_S = 300.0
MAX_WAIT_S = 600.0
TEXT = "text/plain; charset=utf-8"
METHODS = ("GET", "POST", "PUT", "DELETE")

Handler = Callable[..., Any]


def flag(name: str, default: bool = False) -> bool:
    """A boolean query parameter, any case (python-nomad sends ``True``)."""
    raw = bottle.request.query.get(name)
    if raw is None or raw == "":
        return default
    # Go's strconv.ParseBool's words (Nomad's parser), in any case.
    if raw.lower() in ("true", "t", "1"):
        return True
    if raw.lower() in ("false", "f", "0"):
        return False
    raise ValidationError(f"{name}: must be true or false")


def integer(name: str, default: int = 0) -> int:
    """A non-negative integer query parameter (ASCII digits only)."""
    return parse_integer(bottle.request.query.get(name), name, default)


def wait_seconds() -> float:
    """A blocking query's ``wait`` ("30s", "5m"; capped at 10 min as in Nomad)."""
    return parse_wait(bottle.request.query.get("wait"))


def parse_integer(raw: str | None, name: str, default: int = 0) -> int:
    """``integer``'s rule for a parameter's text (None: not given)."""
    if raw is None or raw == "":
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19 or int(raw) > fields.INT_MAX:
        raise ValidationError(f"{name}: must be a non-negative integer")
    return int(raw)


def parse_wait(raw: str | None) -> float:
    """``wait_seconds``'s rule for the parameter's text (None: not given)."""
    if not raw:
        return DEFAULT_WAIT_S
    return min(MAX_WAIT_S, max(0.0, fields.duration(raw, "wait")))


def body() -> Any:
    """The request's JSON body (orch's limits: size, depth, finite numbers)."""
    return httpjson.read_json()


class NomadRouter:
    """Registers /v1 handlers; one place turns their exceptions into Nomad's form."""

    def __init__(self, app: bottle.Bottle, *, token: str | None, changes: ChangeFeed):
        self.app = app
        self.token = token
        self.changes = changes

    def __call__(self, method: str, path: str, *, raw: bool = False):
        def decorate(fn: Handler) -> Handler:
            @functools.wraps(fn)
            def handler(**kwargs: str) -> object:
                return self._handle(fn, kwargs, raw)

            # Every JSON read answers ?index= as a blocking query (_answer).
            self.app.route(path, method, blocking=method == "GET" and not raw)(handler)
            return fn

        return decorate

    def catch_all(self, prefix: str) -> None:
        """Unknown /v1 paths: Nomad's plain-text 404 (405 for a known path)."""

        def unknown(rest: str = "") -> str:
            bottle.response.content_type = TEXT
            if self._other_method_matches():
                bottle.response.status = 405
                return "Invalid method"
            bottle.response.status = 404
            return "Invalid URL"

        for path in (prefix, f"{prefix}/", f"{prefix}/<rest:path>"):
            self.app.route(path, "ANY")(unknown)

    def _other_method_matches(self) -> bool:
        environ = dict(bottle.request.environ)
        for method in METHODS:
            environ["REQUEST_METHOD"] = method
            try:
                route, _ = self.app.router.match(environ)
            except bottle.HTTPError:
                continue
            if route.method != "ANY":
                return True
        return False

    def _handle(self, fn: Handler, kwargs: dict[str, str], raw: bool) -> object:
        try:
            httpjson.check_origin()
            if not self._authorized():
                bottle.response.status = 403
                bottle.response.content_type = TEXT
                return "Permission denied"
            if raw:
                return fn(**kwargs)
            payload, index = self._answer(fn, kwargs)
        except OrchError as exc:
            bottle.response.status = exc.status
            bottle.response.content_type = TEXT
            return exc.message
        except Exception as exc:
            log.exception("unexpected error on %s %s", bottle.request.method, bottle.request.path)
            bottle.response.status = 500
            bottle.response.content_type = TEXT
            return f"internal error: {type(exc).__name__}"
        if index is not None:
            bottle.response.set_header("X-Nomad-Index", str(index))
            bottle.response.set_header("X-Nomad-KnownLeader", "true")
            bottle.response.set_header("X-Nomad-LastContact", "0")
        bottle.response.content_type = "application/json"
        return json.dumps(payload, ensure_ascii=False, separators=(",", ":"))

    def _answer(self, fn: Handler, kwargs: dict[str, str]) -> tuple[Any, int | None]:
        """The handler's answer; a blocking GET waits for its index to pass ``index``."""
        after = integer("index")
        if bottle.request.method != "GET" or after == 0:
            return fn(**kwargs)
        return self.changes.block(lambda: fn(**kwargs), after, wait_seconds())

    def _authorized(self) -> bool:
        if not self.token:
            return True
        expected = self.token.encode()
        given = bottle.request.get_header("X-Nomad-Token")
        if given is not None:
            return hmac.compare_digest(given.encode(), expected)
        bearer = bottle.request.get_header("Authorization", "")
        return hmac.compare_digest(bearer.encode(), b"Bearer " + expected)
