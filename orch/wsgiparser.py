"""A strict fast path in front of waitress's request header parser.

waitress's ``HTTPRequestParser.parse_header`` matches a regular expression
per header line, ``urlsplit``s the target and unquotes the path: a quarter
of the server's I/O thread under heartbeat load (bench/README.md).
Almost every request orch hears has one plain shape - a request line with an
upper-case method, an origin-form target and HTTP/1.0 or 1.1, then printable
ASCII ``Name: value`` lines, each name once, the body (if any) sized by one
Content-Length. ``FastParser`` checks that shape with one regular expression
over the whole header and fills in exactly the fields waitress's parser
fills in for it; anything else - Transfer-Encoding, obs-fold, a bare CR or
LF, whitespace before a colon, a repeated name, an underscore or a byte
outside printable ASCII, a header over ``FAST_MAX_HEADER`` - is parsed by
waitress's own code, so its answers (400, 431, 501) stay as they are.
tests/unit/test_wsgiparser.py feeds one corpus (hostile requests included)
to both and compares every field. The fields of a plain header are kept by
its bytes (a bounded dict): an agent's header is the same at every beat.
"""

from __future__ import annotations

import re

from waitress.buffers import OverflowableBuffer
from waitress.parser import HTTPRequestParser, unquote_bytes_to_wsgi
from waitress.receiver import FixedStreamReceiver

# Larger headers are rare (a browser's cookies): waitress's parser takes them.
FAST_MAX_HEADER = 8 * 1024

# The request line: an upper-case method token, an origin-form target (one
# leading "/", no fragment, no space or control byte), HTTP/1.0 or 1.1.
_REQUEST_LINE = re.compile(
    rb"([A-Z]+) (/(?!/)[!$%&'()*+,\-./0-9:;=@A-Z_a-z~]*)(?:\?([!$%&'()*+,\-./0-9:;=?@A-Z_a-z~]*))?"
    rb" HTTP/(1\.[01])"
)
# Every header line: a token without "_" (waitress drops those: its path),
# a colon right after it, then a value of printable ASCII, spaces and tabs.
# One match over the whole block: the lines are separated by CRLF only.
_HEADER_LINES = re.compile(
    rb"(?:[!#$%&'*+\-.^`|~0-9A-Za-z]+:[ \t\x21-\x7e]*(?:\r\n(?=.)|\Z))*",
    re.DOTALL,
)


# A plain header's fields (below), by its bytes. An agent sends the same
# header at every beat (its Content-Length takes a few values): parsing it
# again was most of the 11 us the fast path took. Cleared when full.
_PARSED: dict[bytes, tuple] = {}
PARSED_MAX = 512
# Longer headers are parsed each time (and not kept).
PARSED_KEY_MAX = 1024


class FastParser(HTTPRequestParser):
    """waitress's request parser with a strict fast path for the plain shape."""

    # Counts requests parsed each way (tests check the fast path is taken).
    fast_count = 0

    def parse_header(self, header_plus: bytes) -> None:
        """The fast path when the header has the plain shape, else waitress's."""
        if not self._parse_plain(header_plus):
            super().parse_header(header_plus)

    def _parse_plain(self, header_plus: bytes) -> bool:
        """Fill in the fields from a header of the plain shape; False (nothing
        set) for any other header."""
        fields = plain_header(header_plus)
        if fields is None:
            return False
        self._set_fields(*fields)
        FastParser.fast_count += 1
        return True

    def _set_fields(
        self,
        first_line: bytes,
        headers: dict,
        uri: tuple[str, str, str, str, str],
        connection_close: bool,
        expect_continue: bool,
        length: int,
    ) -> None:
        """What ``HTTPRequestParser.parse_header`` sets for this request."""
        self.first_line = first_line
        self.headers.update(headers)  # a copy: the request may change its own
        self.request_uri, self.command, self.version, self.path, self.query = uri
        self.proxy_scheme = self.proxy_netloc = self.fragment = ""
        self.url_scheme = self.adj.url_scheme
        if self.version != "1.0":
            self.expect_continue = expect_continue
        self.connection_close = connection_close
        self.content_length = length
        if length > 0:
            self.body_rcv = FixedStreamReceiver(length, OverflowableBuffer(self.adj.inbuf_overflow))


def plain_header(header_plus: bytes) -> tuple | None:
    """The fields of a header of the plain shape, kept or parsed (the
    arguments of ``FastParser._set_fields``: its headers dict must not be
    changed); None for any other header."""
    fields = _PARSED.get(header_plus)
    if fields is None:
        fields = _plain_fields(header_plus)
        if fields is not None and len(header_plus) <= PARSED_KEY_MAX:
            if len(_PARSED) >= PARSED_MAX:
                _PARSED.clear()
            _PARSED[header_plus] = fields
    return fields


def _plain_fields(header_plus: bytes) -> tuple | None:
    """The arguments of ``FastParser._set_fields`` for a header of the plain
    shape (a function of its bytes alone), None for any other header."""
    # waitress hands the header over with the blank line that ends it.
    if len(header_plus) > FAST_MAX_HEADER or not header_plus.endswith(b"\r\n\r\n"):
        return None
    first_line, _, block = header_plus[:-4].partition(b"\r\n")
    line = _REQUEST_LINE.fullmatch(first_line)
    if line is None or _HEADER_LINES.fullmatch(block) is None:
        return None
    headers = _header_map(block)
    if headers is None or "TRANSFER_ENCODING" in headers:
        return None
    length = headers.get("CONTENT_LENGTH", "0")
    # Digits only (waitress's rule), and no number too long to be sane.
    if not length.isdigit() or not length.isascii() or len(length) > 15:
        return None
    command, path, query, version = line.groups()
    uri = (
        line.group(0)[len(command) + 1 : -9].decode("latin-1"),
        command.decode("latin-1"),
        version.decode("latin-1"),
        unquote_bytes_to_wsgi(path) if b"%" in path else path.decode("latin-1"),
        query.decode("latin-1") if query else "",
    )
    connection = headers.get("CONNECTION", "").lower()
    if version == b"1.0":
        connection_close = connection != "keep-alive"
    else:
        connection_close = connection == "close"
    expect_continue = headers.get("EXPECT", "").lower() == "100-continue"
    return first_line, headers, uri, connection_close, expect_continue, int(length)


def _header_map(block: bytes) -> dict[str, str] | None:
    """The header lines as waitress names them (upper case, "_" for "-"),
    values stripped of spaces and tabs; None if a name repeats."""
    if not block:
        return {}
    # ASCII only (the block matched _HEADER_LINES): one decode for all lines.
    lines = block.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.upper().replace("-", "_")] = value.strip(" \t")
    return headers if len(headers) == len(lines) else None
