"""The waitress connection both orch HTTP servers (server and agent) use.

waitress (pinned in requirements.txt) has two costs that show at a few
requests per millisecond, fixed here by subclassing its channel and task:

- its I/O thread spins while a worker holds a connection's output lock (see
  ``_Channel.writable``): the cost of a request grew 5-8x with 3-12
  concurrent connections;
- it writes an answer's header and its body as two socket sends from the
  worker thread: two syscalls and two TCP segments, which the client reads as
  two wake-ups. Here the header is held back and goes out with the first part
  of the body, so an ordinary JSON answer is one send. Streams (UI events,
  log follows) are unchanged: each later part is still sent as it is written.

Both rely on waitress 3.0's internals (``HTTPChannel.writable``,
``write_soon``, ``outbuf_lock``, ``WSGITask.write``): re-check on an upgrade.
"""

from __future__ import annotations

from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer, MultiSocketServer
from waitress.task import WSGITask


class _Channel(HTTPChannel):
    """A connection that does not spin, and whose task can hold its header
    for the body's first part."""

    _hold = False
    _held = b""

    def writable(self):
        # While a worker writes (and flushes) under the outbuf lock, waitress
        # still says "writable" and its handle_write then finds the lock taken
        # and does nothing: the I/O thread spins, holding the GIL the worker
        # needs back, which waits out a switch interval each time (measured:
        # 165 handle_write calls and 1.2-1.8 ms of CPU per read at 3
        # connections, 0.24 ms without). A worker that leaves data unsent
        # pulls the trigger; the end of its request pulls it again with the
        # lock free, so what is left is sent then (a stream's chunk left in a
        # full socket buffer goes at the next write, or the loop's 1 s tick).
        if self.requests:
            if not self.outbuf_lock.acquire(False):
                return False
            self.outbuf_lock.release()
        return super().writable()

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


def use_orch_channels(http) -> None:
    """Make every listener of a waitress server (``create_server``'s result)
    open its connections as ``_Channel``."""
    # One listening server per address (a name may resolve to several).
    listeners = http.map if isinstance(http, MultiSocketServer) else http._map
    for dispatcher in list(listeners.values()):
        if isinstance(dispatcher, BaseWSGIServer):
            dispatcher.channel_class = _Channel
