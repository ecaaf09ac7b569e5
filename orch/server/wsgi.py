"""The server's waitress: how it is set up, and an answer in one send().

waitress (pinned in requirements.txt) writes an answer's header and its body
as two socket sends from the worker thread: two syscalls and two TCP
segments, which the client reads as two wake-ups, for every answer however
small. Here the header is held back and goes out with the first part of the
body, so an ordinary JSON answer is one send. Streams (UI events, log
follows) are unchanged: each later part is still sent as it is written.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from waitress import create_server
from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer, MultiSocketServer
from waitress.task import WSGITask

if TYPE_CHECKING:
    from orch.config import ServerConfig


class _Channel(HTTPChannel):
    """A connection whose task can hold its header for the body's first part."""

    _hold = False
    _held = b""

    def write_soon(self, data):
        if self._hold and data:
            # The header: kept until the body's first part joins it.
            self._hold = False
            self._held = bytes(data)
            return len(data)
        if self._held:
            held, self._held = self._held, b""
            if not isinstance(data, (bytes, bytearray, memoryview)):
                super().write_soon(held)  # a file (wsgi.file_wrapper) follows it
            else:
                data = held + bytes(data)
        return super().write_soon(data)

    def release(self) -> None:
        """Send a header still held (an answer without a body)."""
        self._hold = False
        if self._held:
            self.write_soon(b"")


class _Task(WSGITask):
    """Sends the header together with the first part of the body."""

    channel: _Channel

    def write(self, data):
        if self.wrote_header or not data:
            return super().write(data)
        channel = self.channel
        channel._hold = True
        try:
            return super().write(data)
        finally:
            channel.release()


_Channel.task_class = _Task


def http_server(app, config: ServerConfig):
    """The waitress server that serves ``app`` (not yet running)."""
    http = create_server(
        app,
        host=config.bind,
        port=config.port,
        # A UI stream holds its thread for as long as the page is open: the
        # streams get threads of their own on top of the API's.
        threads=config.http_threads + config.ui_max_streams,
        # No lookahead: with it, waitress keeps reading a connection while its
        # request runs, which doubled the server's CPU per request (0.36-0.43
        # ms without, 0.53-0.86 ms with, an empty heartbeat on a loaded host;
        # bench/README.md). The price: an open UI stream sees its browser tab
        # closed at its next write (an event or the 15 s keepalive), not at once.
        channel_request_lookahead=0,
        ident="orch",
        connection_limit=1000,
        channel_timeout=60,
        clear_untrusted_proxy_headers=True,
    )
    # One listening server per address (a name may resolve to several): each
    # makes its connections from its channel_class.
    listeners = http.map if isinstance(http, MultiSocketServer) else http._map
    for dispatcher in list(listeners.values()):
        if isinstance(dispatcher, BaseWSGIServer):
            dispatcher.channel_class = _Channel
    return http
