"""orch.wsgiparser.FastParser against waitress's own parser: one corpus of
requests, hostile ones included, fed to both; every field compared."""

from __future__ import annotations

import random

import pytest
from waitress.adjustments import Adjustments
from waitress.parser import HTTPRequestParser

from orch import wsgiparser
from orch.wsgiparser import FAST_MAX_HEADER, FastParser

ADJ = Adjustments(max_request_body_size=1_000_000)

# Requests of the plain shape: the fast path must take these.
PLAIN = [
    b"GET / HTTP/1.1\r\n\r\n",
    b"GET /jobs HTTP/1.1\r\nHost: 127.0.0.1:4646\r\n\r\n",
    b"GET /jobs/web-1?index=12&wait=5s HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n",
    b"GET /jobs/a%20b%2Fc HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /x? HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /x?a=1?b=2 HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /v1/ui/:id;x=1@y HTTP/1.0\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
    b"GET / HTTP/1.0\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.1\r\nConnection: Close\r\n\r\n",
    b"DELETE /jobs/web HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer s3cr3t\r\n\r\n",
    b"POST /heartbeat HTTP/1.1\r\nHost: 127.0.0.1:4646\r\nAccept-Encoding: identity\r\n"
    b"Content-Type: application/json\r\nContent-Length: 17\r\n\r\n"
    b'{"node_id": "n1"}',
    b"POST /jobs HTTP/1.1\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\nhello",
    b"PUT /jobs/x HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    b"POST /x HTTP/1.1\r\nContent-Length: 007\r\n\r\nabcdefg",
    b"POST /x HTTP/1.1\r\nX-Empty:\r\nX-Spaces: \t a  b \t \r\nContent-Length: 2\r\n\r\nok",
    b"GET / HTTP/1.1\r\nHost:a\r\nUser-Agent: python-requests/2.32 (x; y)\r\n\r\n",
    b'GET / HTTP/1.1\r\nCookie: a=b; c="d e"; f={g}\r\n\r\n',
    b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",  # a blank line before: RFC 7230 3.5
    b"POST /x HTTP/1.1\r\nContent-Length:\t5\r\n\r\nhello",
    # Over max_request_body_size: the parser's received() refuses it (413).
    b"POST /x HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n",
]

# Everything else: waitress's parser decides (and the answers must match).
HOSTILE = [
    b"POST /x HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    b"POST /x HTTP/1.1\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\nhello",
    b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
    b"POST /x HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    b"POST /x HTTP/1.1\r\nTransfer-Encoding: identity\r\n\r\n",
    b"POST /x HTTP/1.0\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\nab",
    b"POST /x HTTP/1.1\r\nContent-Length : 5\r\n\r\nhello",
    b"POST /x HTTP/1.1\r\n Content-Length: 5\r\n\r\nhello",
    b"POST /x HTTP/1.1\r\nX: a\r\n  folded\r\nContent-Length: 1\r\n\r\nz",
    b"POST /x HTTP/1.1\nContent-Length: 5\n\nhello\r\n\r\n",
    b"POST /x HTTP/1.1\r\nContent-Length: 5\nX: y\r\n\r\nhello",
    b"POST /x HTTP/1.1\r\nX: a\rb\r\n\r\n",
    b"GET /x HTTP/1.1\r\nX: \x00\r\n\r\n",
    b"GET /x HTTP/1.1\r\nX: caf\xc3\xa9\r\n\r\n",
    b"GET /x HTTP/1.1\r\nX\xc3\xa9: a\r\n\r\n",
    b"GET /x HTTP/1.1\r\nX_Forwarded_For: 1.2.3.4\r\n\r\n",
    b"GET /x HTTP/1.1\r\nX-A: 1\r\nX_A: 2\r\n\r\n",
    b"GET /x HTTP/1.1\r\nNoColon\r\n\r\n",
    b"GET /x HTTP/1.1\r\n: novalue\r\n\r\n",
    b"POST /x HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
    b"POST /x HTTP/1.1\r\nContent-Length: 1e3\r\n\r\n",
    b"POST /x HTTP/1.1\r\nContent-Length: +5\r\n\r\nhello",
    b"POST /x HTTP/1.1\r\nContent-Length: \xd9\xa5\r\n\r\nhello",  # Arabic-Indic 5
    b"POST /x HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\nhello",
    b"POST /x HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
    b"get /x HTTP/1.1\r\n\r\n",
    b"GET  /x HTTP/1.1\r\n\r\n",
    b"GET /x  HTTP/1.1\r\n\r\n",
    b"GET /x HTTP/1.1 \r\n\r\n",
    b"GET /x HTTP/2.0\r\n\r\n",
    b"GET /x HTTP/1.1x\r\n\r\n",
    b"GET /x\r\n\r\n",
    b"GET\r\n\r\n",
    b"GET http://evil.example/x HTTP/1.1\r\n\r\n",
    b"GET //evil.example/x HTTP/1.1\r\n\r\n",
    b"GET * HTTP/1.1\r\n\r\n",
    b"GET /x#frag HTTP/1.1\r\n\r\n",
    b"GET /a b HTTP/1.1\r\n\r\n",
    b"GET /\x7f HTTP/1.1\r\n\r\n",
    b"GET /caf\xc3\xa9 HTTP/1.1\r\n\r\n",
    b"GET /x?q=\xff HTTP/1.1\r\n\r\n",
    b"GET /x HTTP/1.1\r\n\x0bX: a\r\n\r\n",
    b"GET /x HTTP/1.1\r\nX: a\x0b\r\n\r\n",
    b"GET /x HTTP/1.1\r\nX: a\x85\r\n\r\n",
    b"GET /x HTTP/1.1\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n",
    b"GET /x HTTP/1.1\r\nX: " + b"a" * (FAST_MAX_HEADER + 10) + b"\r\n\r\n",
    b"GET /x HTTP/1.1\r\nX: " + b"a" * 300_000 + b"\r\n\r\n",
    b"\r\n\r\n",
    b"   \r\n\r\n",
    b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",  # an empty request first
]


def _parse(cls, raw: bytes, step: int):
    """Feed ``raw`` to a new parser ``step`` bytes at a time, as a channel
    does; the parser and the bytes it consumed."""
    parser = cls(ADJ)
    consumed = 0
    for at in range(0, len(raw), step):
        data = raw[at : at + step]
        while data and not parser.completed:
            n = parser.received(data)
            consumed += n
            data = data[n:]
    return parser, consumed


FIELDS = (
    "completed empty headers_finished chunked content_length expect_continue "
    "connection_close version headers first_line command request_uri path query "
    "fragment url_scheme proxy_scheme proxy_netloc body_bytes_received"
).split()


def _fields(parser, consumed: int) -> dict:
    seen = {name: getattr(parser, name, "<unset>") for name in FIELDS}
    error = parser.error
    seen["error"] = None if error is None else (type(error).__name__, error.body)
    body = parser.body_rcv
    seen["body"] = None if body is None else (type(body).__name__, body.getbuf().get())
    seen["consumed"] = consumed
    return seen


def _same(raw: bytes, step: int) -> bool:
    """Both parsers agree field by field; True if the fast path took it."""
    before = FastParser.fast_count
    fast = _fields(*_parse(FastParser, raw, step))
    took_fast = FastParser.fast_count > before
    assert fast == _fields(*_parse(HTTPRequestParser, raw, step)), raw[:200]
    return took_fast


@pytest.mark.parametrize("step", [1, 7, 1 << 20])
@pytest.mark.parametrize("raw", PLAIN)
def test_plain_requests_take_the_fast_path_with_waitress_fields(raw, step):
    assert _same(raw, step)


@pytest.mark.parametrize("raw", HOSTILE)
def test_anything_else_is_left_to_waitress(raw):
    assert not _same(raw, 1 << 20)
    assert not _same(raw, 5)


def test_mutated_requests_agree_with_waitress():
    """Random bytes of the tricky kinds put into plain requests: whichever
    parser takes each, the fields are waitress's."""
    rng = random.Random(17)
    tricky = [b"\r", b"\n", b"\r\n", b" ", b"\t", b":", b"_", b"\x00", b"\x7f", b"\x80",
              b"\xff", b",", b"%", b"?", b"#", b"/", b"0", b"a", b"A", b"-"]  # fmt: skip
    fast = 0
    for _ in range(1500):
        raw = bytearray(rng.choice(PLAIN))
        for _ in range(rng.randint(1, 3)):
            at = rng.randrange(len(raw))
            raw[at : at + rng.randint(0, 2)] = rng.choice(tricky)
        fast += _same(bytes(raw), rng.choice([4, 1 << 20]))
    # Many mutations stay plain (a changed value, path or body): both paths ran.
    assert 150 < fast < 1350


def test_pipelined_requests_parse_one_at_a_time():
    raw = PLAIN[11] + PLAIN[2]
    first, n = _parse(FastParser, raw, 1 << 20)
    assert first.path == "/heartbeat" and first.body_rcv.getbuf().get() == b'{"node_id": "n1"}'
    second = FastParser(ADJ)
    second.received(raw[n:])
    assert second.completed and second.path == "/jobs/web-1" and second.query == "index=12&wait=5s"


def test_a_header_seen_before_is_not_parsed_again(monkeypatch):
    """The second parse of the same header comes from the kept fields: the
    same fields as waitress's, and headers of its own (not shared)."""
    raw = PLAIN[11]
    wsgiparser._PARSED.clear()
    first, _ = _parse(FastParser, raw, 1 << 20)
    first.headers["X_CHANGED"] = "by the first request"
    monkeypatch.setattr(wsgiparser, "_plain_fields", None)  # parsing again would fail
    assert _same(raw, 1 << 20)
    second, _ = _parse(FastParser, raw, 1 << 20)
    assert "X_CHANGED" not in second.headers


def test_the_kept_headers_are_bounded():
    wsgiparser._PARSED.clear()
    for i in range(wsgiparser.PARSED_MAX + 50):
        assert _same(b"GET /jobs/j%d HTTP/1.1\r\nHost: a\r\n\r\n" % i, 1 << 20)
        assert len(wsgiparser._PARSED) <= wsgiparser.PARSED_MAX
    big = b"GET /x HTTP/1.1\r\nX-Big: " + b"a" * wsgiparser.PARSED_KEY_MAX + b"\r\n\r\n"
    assert _same(big, 1 << 20)
    assert all(len(key) <= wsgiparser.PARSED_KEY_MAX for key in wsgiparser._PARSED)
