"""The wire between agents and their task supervisor: one JSON object per line.

    agent -> supervisor  {"id": n, "start": {spec}}
    supervisor -> agent  {"id": n, "pid": p, "create_time": t} | {"id": n, "error": ".."}
                         | {"id": n, "claimed": true}
    supervisor -> agents {"exited": p, ...}   once the run's record says how it ended,
                         with the fields it appended there (exit_code, signal,
                         oom_killed, cgroups_kept...); bare if that append failed

The supervisor says READY (or IN_USE: another serves the name) on its stdout
once bound. Both sides import this module; the supervisor runs without site
packages, so it stays stdlib only, but for orjson through ``orch.fastjson``
where the dir that holds orch holds it too (the zipapp's does; a checkout's
does not, and the standard library does the JSON).
"""

from __future__ import annotations

import socket

from orch import fastjson

READY = b"ready\n"
IN_USE = b"in-use\n"


def receive(sock: socket.socket) -> bytes:
    """What the peer sent; b"" once it is gone (closed, reset)."""
    try:
        return sock.recv(65536)
    except OSError:
        return b""


def take_lines(buf: bytearray) -> list[bytes]:
    """The whole lines at the front of `buf`, taken off it (a partial one waits)."""
    end = buf.rfind(b"\n")
    if end < 0:
        return []
    lines = bytes(buf[:end]).split(b"\n")
    del buf[: end + 1]
    return lines


def encode(doc: dict) -> bytes:
    """`doc` as a line (orjson writes a start's answer in ~0.4 us, where the
    hand-formatted line it replaced took ~2.5)."""
    return fastjson.dumps(doc, escape=True) + b"\n"


def socket_address(name: str) -> bytes:
    """The abstract-namespace address: no file to leave behind, no path length limit."""
    return b"\0" + name.encode()
