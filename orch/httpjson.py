"""JSON-only HTTP plumbing shared by the server and the agent (bottle).

One place turns exceptions into responses: OrchError subclasses carry their
status; anything unexpected is a 500 with a JSON body. Bottle's own error
pages (unknown route, wrong method) are replaced by JSON ones, which must be
returned as *strings* with the content type set, or bottle renders HTML.
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import bottle

from orch import fastjson
from orch.errors import (
    BadGateway,
    Forbidden,
    OrchError,
    PayloadTooLarge,
    Unauthorized,
    ValidationError,
)
from orch.validation import document

if TYPE_CHECKING:
    from orch.transport import Response

log = logging.getLogger(__name__)

JSON = "application/json"

# A route handler: path parameters in, a JSON-able value (or, raw, the body) out.
Handler = Callable[..., Any]

__all__ = [
    "Router",
    "read_json",
    "dumps",
    "passthrough",
    "BadGateway",
    "error_body",
    "require_token",
    "check_origin",
]


def error_body(message: str, **extra: object) -> str:
    return json.dumps({"error": message, **extra}, ensure_ascii=False)


def dumps(payload: object) -> str:
    """A route's JSON answer as text (compact, UTF-8 as is)."""
    return fastjson.dumps(payload).decode()


def read_json(max_body: int | None = None) -> Any:
    """The request body parsed as JSON; ValidationError if it is not safe JSON.

    Any JSON value: the validation layer checks its shape."""
    limit = max_body or bottle.request.environ.get("orch.max_body", 1 << 20)
    length = bottle.request.content_length
    if length > limit:
        raise PayloadTooLarge(f"request body over {limit} bytes")
    raw = bottle.request.body.read(limit + 1)
    if len(raw) > limit:
        raise PayloadTooLarge(f"request body over {limit} bytes")
    if not raw.strip():
        raise ValidationError("body: must be a JSON object, got an empty body")
    # Depth, finite numbers and valid Unicode are checked here, for every
    # POST route of server and agent alike.
    return document.loads(raw)


def passthrough(resp: Response) -> bytes:
    """Relay an agent's answer (orch.transport.Response: status, content
    type, body) unchanged."""
    bottle.response.status = resp.status_code
    bottle.response.content_type = resp.headers.get("Content-Type", JSON)
    return resp.content


def require_token(token: str | None) -> None:
    """Unauthorized unless the request carries the bearer token (if one is set)."""
    if not _authorized(token):
        raise Unauthorized("missing or invalid bearer token")


_DEFAULT_PORTS = {"http": "80", "https": "443"}
_WRITES = frozenset({"POST", "PUT", "DELETE", "PATCH"})


def _host_port(host: str, scheme: str) -> str:
    """``host:port`` lower-cased, the scheme's default port filled in.

    A ``Host`` without a port gets the Origin's scheme's default: the browser
    omits the default port of the scheme it used (behind a TLS proxy, 443).
    """
    host = host.strip().lower()
    if host.endswith("]") or ":" not in host.rsplit("]", 1)[-1]:
        host = f"{host}:{_DEFAULT_PORTS.get(scheme, '80')}"
    return host


def check_origin() -> None:
    """Forbidden for a state-changing request from another site.

    Browsers send ``Origin`` on cross-site writes; the CLI and agents send
    none, so only a browser on a foreign page is refused. A proxy in front
    may rewrite ``Host``; its ``X-Forwarded-Host`` counts too (a foreign page
    cannot set that header without a CORS preflight, which orch never grants).
    """
    if bottle.request.method not in _WRITES:
        return
    origin = bottle.request.get_header("Origin")
    if origin is None:
        return
    scheme, sep, rest = origin.partition("://")
    if not sep or not rest or "/" in rest:
        raise Forbidden(f"cross-origin request refused (Origin {origin!r})")
    candidates = [
        bottle.request.get_header("Host", ""),
        bottle.request.get_header("X-Forwarded-Host", ""),
    ]
    claimed = _host_port(rest, scheme.lower())
    if not any(h and _host_port(h.split(",")[0], scheme.lower()) == claimed for h in candidates):
        raise Forbidden(f"cross-origin request refused (Origin {origin!r})")


def _authorized(token: str | None) -> bool:
    if not token:
        return True
    header = bottle.request.get_header("Authorization", "")
    expected = f"Bearer {token}"
    return hmac.compare_digest(header.encode(), expected.encode())


class DeferredRouter(bottle.Router):
    """bottle's router, compiling a method's patterns at its first match.

    bottle recompiles all of a method's combined pattern at every route added:
    ~30 ms of a server's start (its 50-odd routes), on `orch dev`'s critical
    path. Routes are all added before the app serves; the first match compiles
    under a lock, and a method leaves the stale set only once compiled, so no
    request sees half a table."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._stale: set[str] = set()
        self._lock = threading.Lock()

    def _compile(self, method: str) -> None:
        self._stale.add(method)

    def match(self, environ: dict) -> Any:
        if self._stale:
            with self._lock:
                for method in sorted(self._stale):
                    super()._compile(method)
                    self._stale.discard(method)
        return super().match(environ)


class Router:
    """Registers handlers that return dicts and raise OrchError."""

    def __init__(self, app: bottle.Bottle, *, token: str | None = None, max_body: int = 1 << 20):
        if not app.routes and type(app.router) is bottle.Router:
            # Before any route (see DeferredRouter); bottle refuses to rebind
            # an attribute through its own __setattr__ (a plugin guard).
            object.__setattr__(app, "router", DeferredRouter())
        self.app = app
        self.token = token
        self.max_body = max_body
        self.routes: list[tuple[str, str]] = []
        for code in (400, 404, 405, 413, 500):
            app.error(code)(self._bottle_error)

    def __call__(
        self,
        method: str,
        path: str,
        *,
        public: bool = False,
        raw: bool = False,
        blocking: bool = False,
    ) -> Callable[[Handler], Handler]:
        """``blocking``: a read that answers ``?index=&wait=`` as a blocking
        query (its route's config says so: orch.server.parkedreads parks it)."""

        def decorate(fn: Handler) -> Handler:
            @functools.wraps(fn)
            def handler(**kwargs: str) -> object:
                return self._handle(fn, kwargs, public, raw)

            self.app.route(path, method, blocking=blocking)(handler)
            self.routes.append((method, path))
            return fn

        return decorate

    def _handle(self, fn: Handler, kwargs: dict[str, str], public: bool, raw: bool) -> object:
        bottle.request.environ["orch.max_body"] = self.max_body
        try:
            check_origin()
            if not public and not _authorized(self.token):
                raise Unauthorized("missing or invalid bearer token")
            result = fn(**kwargs)
        except OrchError as exc:
            bottle.response.status = exc.status
            bottle.response.content_type = JSON
            return dumps(exc.to_dict())
        except Exception as exc:
            log.exception("unexpected error on %s %s", bottle.request.method, bottle.request.path)
            bottle.response.status = 500
            bottle.response.content_type = JSON
            return error_body(f"internal error: {type(exc).__name__}")
        if raw:
            return result
        bottle.response.content_type = JSON
        return dumps(result)

    @staticmethod
    def _bottle_error(err: bottle.HTTPError) -> str:
        bottle.response.content_type = JSON
        if err.status_code == 404:
            return error_body(f"no route for {bottle.request.method} {bottle.request.path}")
        if err.status_code == 405:
            return error_body(
                f"method {bottle.request.method} not allowed on {bottle.request.path}"
            )
        if err.status_code == 500:
            return error_body("internal error")
        return error_body(str(err.body or err.status_line))
