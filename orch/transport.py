"""The one HTTP client layer of the server and the agent.

http.client dials (TCP, TLS with its checks, unix sockets); the exchange on
a kept connection is written and read by orch/httpwire.py (http.client's own
request building and email-based header parsing cost several times the
bytes' work).

Server -> agent pushes, agent -> server register/heartbeat, the server's log
relay and the docker engine ping all speak through ``HttpClient``: keep-alive
HTTP/1.1, explicit (connect, read) timeouts, one redial when a kept
connection turns out stale, https with certificate checks unless
``tls_skip_verify``, an optional bearer token, and unix sockets (docker).
A client is not thread-safe: each thread (a push worker, the node loop) owns
its own. `requests` stays with the CLI's Python client only (orch/client.py).

Several servers (``--server URL1,URL2,URL3``, ``ORCH_ADDR``): ``Servers``
keeps the list and which one answered last, and ``FailoverClient`` sends
each request to the servers in that order: the next one on a connection
error or a 503 (a follower without a leader, a database away), a
follower's 307 followed to the leader, which is then asked first.

Errors: what a failed exchange raises is in ``ERRORS``::

    OSError (connection refused, timeouts, ssl.SSLError and certificate checks)
        ConnectionResetError
            PeerGone (a kept connection broke, then the redial was refused)
    http.client.HTTPException (a malformed or missing answer)
"""

from __future__ import annotations

import http.client
import logging
import os
import socket
import ssl
import threading
import time
from collections import OrderedDict
from urllib.parse import quote, urlencode, urljoin, urlsplit

from orch import fastjson
from orch.httpwire import Conn, read_answer, request_head

log = logging.getLogger(__name__)

ERRORS = (OSError, http.client.HTTPException)
# A kept connection the peer closed meanwhile fails in one of these ways on
# its next request: dialing again once is safe (nothing was processed).
STALE = (
    http.client.RemoteDisconnected,
    http.client.BadStatusLine,
    ConnectionResetError,
    BrokenPipeError,
)


class PeerGone(ConnectionResetError):
    """Raised when a kept connection broke and dialing again was refused:
    the peer went away, perhaps after it had read the request."""


class Response:
    """The status, headers and body of one answer."""

    def __init__(self, status: int, headers, content: bytes):
        self.status_code = status
        self.headers = headers
        self.content = content

    @property
    def status(self) -> int:
        return self.status_code

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    def json(self):
        return fastjson.loads(self.content)


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over a unix socket (the docker engine's)."""

    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def tls_context(skip_verify: bool) -> ssl.SSLContext:
    """Certificates are checked unless the operator said --tls-skip-verify.

    As requests did, a CA bundle named by REQUESTS_CA_BUNDLE is trusted."""
    context = ssl.create_default_context(cafile=os.environ.get("REQUESTS_CA_BUNDLE") or None)
    if skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class HttpClient:
    """Keep-alive connections to a few hosts (least recently used closed first)."""

    def __init__(
        self,
        *,
        timeout: float | tuple[float, float] = 5.0,
        token: str | None = None,
        tls_skip_verify: bool = False,
        unix_socket: str | None = None,
        max_hosts: int = 10,
        keep_alive: bool = True,
    ):
        self.timeout = _pair(timeout)
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._tls_skip_verify = tls_skip_verify
        self._tls: ssl.SSLContext | None = None
        self._unix = unix_socket
        self._max_hosts = max_hosts
        self._keep_alive = keep_alive
        self._conns: OrderedDict[tuple, Conn] = OrderedDict()

    def get(self, url: str, *, params: dict | None = None, **kw) -> Response:
        if params:
            url += ("&" if "?" in url else "?") + urlencode(params)
        return self.request("GET", url, **kw)

    def post(self, url: str, body, **kw) -> Response:
        return self.request("POST", url, body=body, **kw)

    def delete(self, url: str, **kw) -> Response:
        return self.request("DELETE", url, **kw)

    def request(
        self,
        method: str,
        url: str,
        *,
        body=None,
        headers: dict | None = None,
        timeout: float | tuple[float, float] | None = None,
    ) -> Response:
        """One exchange; ``body`` is a dict/list (sent as JSON) or bytes."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname and not self._unix:
            raise ValueError(f"not an http(s) URL: {url}")
        key = (parts.scheme, parts.netloc)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        all_headers = {"Accept": "application/json", **self._headers, **(headers or {})}
        if body is not None and not isinstance(body, bytes):
            body = fastjson.dumps(body, escape=True)
            all_headers.setdefault("Content-Type", "application/json")
        connect, read = _pair(timeout) if timeout is not None else self.timeout
        reused = key in self._conns
        try:
            return self._exchange(key, parts, method, target, body, all_headers, connect, read)
        except STALE as exc:
            if not reused:
                raise
            lost = exc
        # The kept connection had been closed by the peer: dial once more.
        try:
            return self._exchange(key, parts, method, target, body, all_headers, connect, read)
        except ConnectionRefusedError as exc:
            # Not a clean refusal: the lost connection may have carried the
            # request before the peer went away (a push it did persist).
            raise PeerGone(
                f"connection lost ({type(lost).__name__}), then refused: {exc}"
            ) from lost

    def _exchange(
        self, key, parts, method, target, body, headers, connect: float, read: float
    ) -> Response:
        conn = self._conns.pop(key, None)
        try:
            if conn is None:
                conn = self._dial(parts, connect)
            conn.sock.settimeout(read)
            host = "localhost" if self._unix else parts.netloc.rpartition("@")[2]
            conn.sock.sendall(request_head(method, target, host, headers, body) + (body or b""))
            status, answer_headers, content, will_close = read_answer(conn.reader, method)
        except BaseException:
            if conn is not None:
                conn.close()
            raise
        if will_close or not self._keep_alive:
            conn.close()
        else:
            self._conns[key] = conn
            while len(self._conns) > self._max_hosts:
                self._conns.popitem(last=False)[1].close()
        return Response(status, answer_headers, content)

    def _dial(self, parts, timeout: float) -> Conn:
        conn: http.client.HTTPConnection
        if self._unix:
            conn = _UnixConnection(self._unix, timeout)
        elif parts.scheme == "https":
            if self._tls is None:
                self._tls = tls_context(self._tls_skip_verify)
            conn = http.client.HTTPSConnection(
                parts.hostname, parts.port, timeout=timeout, context=self._tls
            )
        else:
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        # http.client dials (proxy-free TCP, TLS with its checks, unix); the
        # exchanges on the socket are ours (request_head, read_answer).
        conn.connect()
        sock, conn.sock = conn.sock, None
        return Conn(sock)

    def close(self) -> None:
        """Drop every kept connection (they are dialed again when needed)."""
        while self._conns:
            self._conns.popitem()[1].close()


def _pair(timeout) -> tuple[float, float]:
    return tuple(timeout) if isinstance(timeout, tuple) else (timeout, timeout)


HEAD_MAX = 65536  # bytes of status line and headers get_once accepts


# What a path keeps as is when percent-encoded: RFC 3986's reserved and
# unreserved characters, and "%" (a path may come encoded already).
URL_PATH_SAFE = "/?#[]@!$&'()*+,;=:%~"


def get_once(host: str, port: int, path: str, timeout: float, limit: int) -> tuple[int, bytes]:
    """One GET over a fresh connection: (status, the body's first ``limit`` bytes).

    An agent's http health checks make hundreds of these a second; read by
    hand, an HTTP/1.0 exchange (never chunked) costs a fraction of the CPU
    of http.client's, whose header parsing goes through the email package.
    ``timeout`` bounds the whole exchange. Raises what ERRORS lists. A path
    that is not ASCII is percent-encoded (UTF-8), as a browser sends it."""
    deadline = time.monotonic() + timeout
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    path = quote(path, safe=URL_PATH_SAFE)
    request = f"GET {path} HTTP/1.0\r\nHost: {netloc}\r\nAccept: */*\r\n\r\n".encode("ascii")
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(request)
        head, body = _read_head(sock, deadline)
        status, length = _parse_head(head)
        # The rest is read (up to Content-Length or the end) as http.client
        # did, so that the server never writes into a closed connection.
        kept, seen = body[:limit], len(body)
        while length is None or seen < length:
            chunk = _recv(sock, deadline)
            if not chunk:
                break
            seen += len(chunk)
            if len(kept) < limit:
                kept += chunk[: limit - len(kept)]
    return status, bytes(kept)


def _recv(sock: socket.socket, deadline: float) -> bytes:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("timed out")
    sock.settimeout(left)
    return sock.recv(65536)


def _read_head(sock: socket.socket, deadline: float) -> tuple[bytes, bytes]:
    """(status line and headers, what came of the body with them)."""
    data = b""
    while (end := data.find(b"\r\n\r\n")) < 0:
        if len(data) > HEAD_MAX:
            raise http.client.LineTooLong("header")
        chunk = _recv(sock, deadline)
        if not chunk:
            raise http.client.RemoteDisconnected("connection closed before the headers ended")
        data += chunk
    return data[:end], data[end + 4 :]


def _parse_head(head: bytes) -> tuple[int, int | None]:
    """(status, Content-Length or None) of an answer's head."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise http.client.BadStatusLine(lines[0].decode("latin-1")[:100])
    length = None
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            length = int(value.strip())
    return int(parts[1]), length


# A follower sends agents to the leader with these; the body is sent again.
REDIRECTS = frozenset({307, 308})
MAX_REDIRECTS = 3
# Answers that mean "not here, try another server": nothing was written.
UNAVAILABLE = frozenset({503})


def server_list(raw: str) -> list[str]:
    """``URL1,URL2`` as a list of base URLs; ValueError for a bad one."""
    urls = [u.strip().rstrip("/") for u in raw.split(",") if u.strip()]
    if not urls:
        raise ValueError("no server URL given")
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL such as http://host:4646: {url!r}")
    return urls


def base_url(url: str) -> str:
    """scheme://host:port of a URL."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


class Servers:
    """Several servers' base URLs; the one that answered last is tried first."""

    def __init__(self, urls: list[str] | str):
        self.urls = server_list(urls) if isinstance(urls, str) else list(urls)
        self._first = self.urls[0]
        self._lock = threading.Lock()

    def order(self) -> list[str]:
        """Every server once, the one that answered last first."""
        with self._lock:
            first = self._first
        return [first, *(u for u in self.urls if u != first)]

    def answered(self, url: str) -> None:
        """``url`` answered (a leader we were redirected to may be new to us)."""
        with self._lock:
            self._first = url

    def __str__(self) -> str:
        return ",".join(self.order())


class FailoverClient:
    """Requests by path to whichever of several servers can answer them."""

    def __init__(self, servers: Servers, client: HttpClient):
        self.servers = servers
        self.client = client

    def request(self, method: str, path: str, *, body=None, timeout=None) -> Response:
        """The first usable answer; the last 503 when every server gave one;
        the last connection error when none answered at all."""
        unavailable: Response | None = None
        error: BaseException | None = None
        for base in self.servers.order():
            try:
                resp, answered = self._follow(method, base + path, body, timeout)
            except ERRORS as exc:
                log.debug("server %s: %s: %s", base, type(exc).__name__, exc)
                error = exc
                continue
            if resp.status_code in UNAVAILABLE:
                unavailable = resp
                continue
            self.servers.answered(answered)
            return resp
        if unavailable is not None:
            return unavailable
        assert error is not None
        raise error

    def post(self, path: str, body, **kw) -> Response:
        return self.request("POST", path, body=body, **kw)

    def get(self, path: str, **kw) -> Response:
        return self.request("GET", path, **kw)

    def _follow(self, method: str, url: str, body, timeout) -> tuple[Response, str]:
        """One request and the redirects it answers with; (answer, its server)."""
        for _ in range(MAX_REDIRECTS):
            resp = self.client.request(method, url, body=body, timeout=timeout)
            location = resp.headers.get("Location") if resp.status_code in REDIRECTS else None
            if not location:
                return resp, base_url(url)
            url = urljoin(url, location)
        return self.client.request(method, url, body=body, timeout=timeout), base_url(url)

    def close(self) -> None:
        self.client.close()
