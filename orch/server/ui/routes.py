"""The web UI's routes: public page shells, token-guarded fragments, static files.

A page shell carries no cluster data: it is the same for every visitor and
loads its data part from ``<page>?fragment=1`` with the bearer token the
browser keeps in session storage. Fragments are server-rendered HTML from
the same functions the JSON API uses.
"""

from __future__ import annotations

import functools
import logging
import mimetypes
from html import escape
from importlib import resources
from typing import TYPE_CHECKING

import bottle

from orch import httpjson
from orch.config import clean_prefix
from orch.errors import NotFound
from orch.server.ui import detail, render

if TYPE_CHECKING:
    from orch.server.server import Server

log = logging.getLogger(__name__)

HTML = "text/html; charset=utf-8"
# No inline script anywhere; inline style attributes size the bars and boxes.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
STATIC = ("app.css", "app.js")
PAGES = {"jobs": "Jobs", "job": "Job", "alloc": "Allocation", "nodes": "Nodes"}
PAGES.update({"topology": "Topology", "run": "Run a job"})


@functools.cache
def template(name: str) -> bottle.SimpleTemplate:
    """A template compiled once; {{...}} escapes HTML, only {{!...}} does not."""
    source = (resources.files(__package__) / "templates" / f"{name}.tpl").read_text("utf-8")
    return bottle.SimpleTemplate(source=source, name=name)


@functools.cache
def static_file(name: str) -> bytes:
    return (resources.files(__package__) / "static" / name).read_bytes()


def prefix_of(configured: str) -> str:
    """The path prefix links carry: a proxy's X-Forwarded-Prefix, else the flag."""
    header = bottle.request.get_header("X-Forwarded-Prefix")
    if header:
        try:
            return clean_prefix(header.split(",")[0])
        except ValueError:
            log.warning("ignoring X-Forwarded-Prefix %r: not a path prefix", header)
    return configured


def attr(value: object) -> str:
    """Any value as escaped HTML text, quotes included (for attributes)."""
    return escape(str(value), quote=True)


def data_attrs(params: dict[str, str]) -> str:
    """The page's own ids as ``data-*`` attributes of <body>, escaped."""
    return "".join(
        f' data-{key.replace("_", "-")}="{escape(value, quote=True)}"'
        for key, value in sorted(params.items())
    )


def html(body: str) -> str:
    bottle.response.content_type = HTML
    bottle.response.set_header("Content-Security-Policy", CSP)
    bottle.response.set_header("X-Content-Type-Options", "nosniff")
    bottle.response.set_header("Referrer-Policy", "no-referrer")
    bottle.response.set_header("Cache-Control", "no-store")
    return body


def _matches(app: bottle.Bottle, environ: dict) -> bool:
    try:
        app.router.match(environ)
    except bottle.HTTPError:
        return False
    return True


def mount(app: bottle.Bottle, route: httpjson.Router, server: Server) -> None:
    """Add the UI under /ui (and <prefix>/ui) to the server's app."""
    configured = server.config.ui_prefix
    token = server.config.token

    if configured:

        @app.hook("before_request")
        def route_with_or_without_prefix():
            # Proxies that strip the prefix and proxies that keep it reach the
            # same routes, whether a route was added with the prefix or without.
            environ = bottle.request.environ
            path = environ.get("PATH_INFO", "")
            if _matches(app, environ):
                return
            if path == configured or path.startswith(configured + "/"):
                other = path[len(configured) :] or "/"
            else:
                other = configured + path
            environ["PATH_INFO"] = other
            if not _matches(app, environ):
                environ["PATH_INFO"] = path  # the 404 names the path asked for

    def page(name: str, render_data, **params: str) -> str:
        prefix = prefix_of(configured)
        base = f"{prefix}/ui"
        if bottle.request.query.get("fragment") == "1":
            httpjson.require_token(token)
            data = render_data()
            return html(template(name).render(base=base, escape=attr, **data))
        # The run page's form holds no cluster data: it is part of its shell.
        run_form = template("run").render(base=base) if name == "run" else ""
        return html(
            template("shell").render(
                base=base,
                api=prefix,
                page=name,
                title=PAGES[name],
                attrs=data_attrs(params),
                run_form=run_form,
                # Whether to ask for a token before the first call (no 401 to
                # see first); says nothing about the token itself.
                auth=bool(token),
            )
        )

    @route("GET", "/ui", public=True, raw=True)
    @route("GET", "/ui/", public=True, raw=True)
    def ui_root():
        bottle.response.status = 302
        bottle.response.set_header("Location", f"{prefix_of(configured)}/ui/jobs")
        return ""

    @route("GET", "/ui/static/<name>", public=True, raw=True)
    def ui_static(name):
        if name not in STATIC:
            raise NotFound(f"no static file {name}")
        bottle.response.content_type = mimetypes.guess_type(name)[0] or "text/plain"
        bottle.response.set_header("Cache-Control", "no-cache")
        bottle.response.set_header("X-Content-Type-Options", "nosniff")
        return static_file(name)

    @route("GET", "/ui/jobs", public=True, raw=True)
    def ui_jobs():
        return page("jobs", lambda: {"rows": render.job_rows(server)})

    @route("GET", "/ui/jobs/<job_id>", public=True, raw=True)
    def ui_job(job_id):
        return page("job", lambda: {"job": detail.job_detail(server, job_id)}, job_id=job_id)

    @route("GET", "/ui/allocations/<alloc_id>", public=True, raw=True)
    def ui_alloc(alloc_id):
        return page(
            "alloc", lambda: {"alloc": detail.alloc_detail(server, alloc_id)}, alloc_id=alloc_id
        )

    @route("GET", "/ui/nodes", public=True, raw=True)
    def ui_nodes():
        return page("nodes", lambda: {"rows": render.node_rows(server)})

    @route("GET", "/ui/topology", public=True, raw=True)
    def ui_topology():
        def data():
            boxes = render.topology(server)
            return {"boxes": boxes, "legend": render.legend(boxes)}

        return page("topology", data)

    @route("GET", "/ui/run", public=True, raw=True)
    def ui_run():
        return page("run", dict)
