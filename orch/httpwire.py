"""The bytes of one HTTP/1.1 exchange on a kept client connection.

orch/transport.py dials with http.client (TCP, TLS with its checks, unix
sockets) and writes and reads the exchange here: http.client builds a
request in a dozen calls and parses an answer's headers with the email
package, several times the work of the bytes themselves (a push's client
CPU 155 -> 44 us in isolation). Answers are framed by Content-Length,
chunked encoding, or the end of the connection; 1xx answers are skipped.
Errors are http.client's own exceptions, so callers catch what they did.
"""

from __future__ import annotations

import http.client
import socket


class Headers(dict):
    """An answer's headers by name, case-insensitive (the first of a repeated name)."""

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(name.lower())

    def get(self, name: str, default=None):
        return super().get(name.lower(), default)


class Conn:
    """A dialed socket and the buffered reader of its answers (kept alive together)."""

    __slots__ = ("sock", "reader")

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.reader = sock.makefile("rb")

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


# http.client's limits on an answer's head.
LINE_MAX = 65536
HEADERS_MAX = 100
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_BAD_IN_TARGET = frozenset(chr(c) for c in (*range(0x21), 0x7F))


def request_head(method: str, target: str, host: str, headers: dict, body) -> bytes:
    """The request line and headers as http.client would send them, encoded once.

    http.client builds a request in a dozen calls and parses the answer's
    headers with the email package: a push's exchange cost about twice what
    writing and reading the bytes directly costs."""
    if not _BAD_IN_TARGET.isdisjoint(target):
        raise http.client.InvalidURL(f"URL can't contain control characters: {target!r}")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", "Accept-Encoding: identity"]
    for name, value in headers.items():
        value = str(value)
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
            raise ValueError(f"Invalid header {name!r}: {value!r}")
        lines.append(f"{name}: {value}")
    if body is not None or method in _BODY_METHODS:
        lines.append(f"Content-Length: {len(body or b'')}")
    lines.append("\r\n")
    target.encode("ascii")  # UnicodeEncodeError, as http.client raises for such a path
    return "\r\n".join(lines).encode("latin-1")


def _read_line(reader, what: str) -> bytes:
    line = reader.readline(LINE_MAX + 1)
    if len(line) > LINE_MAX:
        raise http.client.LineTooLong(what)
    return line


def _read_headers(reader) -> Headers:
    headers = Headers()
    for _ in range(HEADERS_MAX + 1):
        line = _read_line(reader, "header line")
        if line in (b"\r\n", b"\n", b""):
            return headers
        name, sep, value = line.decode("latin-1").partition(":")
        if sep:
            headers.setdefault(name.strip().lower(), value.strip())
    raise http.client.HTTPException(f"got more than {HEADERS_MAX} headers")


def read_answer(reader, method: str) -> tuple[int, Headers, bytes, bool]:
    """(status, headers, body, whether the connection ends) of one answer."""
    while True:
        line = _read_line(reader, "status line")
        if not line:
            # A kept connection the peer closed: STALE, dialed again once.
            raise http.client.RemoteDisconnected("Remote end closed connection without response")
        version, _, rest = line.decode("latin-1").rstrip("\r\n").partition(" ")
        code = rest[:3]
        if (
            not version.startswith("HTTP/")
            or not (code.isascii() and code.isdigit())
            or rest[3:4] not in ("", " ")
        ):
            raise http.client.BadStatusLine(line.decode("latin-1")[:100])
        status = int(code)
        headers = _read_headers(reader)
        if not 100 <= status < 200 or status == 101:
            break  # an interim answer (100 Continue) is followed by the real one
    connection = headers.get("connection", "").lower()
    will_close = "close" in connection or (version == "HTTP/1.0" and "keep-alive" not in connection)
    if method == "HEAD" or status in (101, 204, 304):
        return status, headers, b"", will_close
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return status, headers, _read_chunked(reader), will_close
    length = headers.get("content-length")
    if length is None:
        return status, headers, reader.read(), True  # the body ends with the connection
    if not (length.isascii() and length.isdigit()):  # latin-1 also has "²"
        raise http.client.HTTPException(f"bad Content-Length {length[:40]!r}")
    return status, headers, _read_exactly(reader, int(length)), will_close


def _read_exactly(reader, size: int) -> bytes:
    data = reader.read(size)
    if len(data) < size:
        raise http.client.IncompleteRead(data, size - len(data))
    return data


def _read_chunked(reader) -> bytes:
    parts: list[bytes] = []
    while True:
        line = _read_line(reader, "chunk size")
        try:
            size = int(line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise http.client.IncompleteRead(b"".join(parts)) from None
        if size == 0:
            break
        parts.append(_read_exactly(reader, size))
        _read_exactly(reader, 2)  # the chunk's CRLF
    while _read_line(reader, "trailer") not in (b"\r\n", b"\n", b""):
        pass  # trailers: none that orch reads
    return b"".join(parts)
