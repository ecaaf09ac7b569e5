"""Blocking queries that hold no thread: a request parked on the I/O loop.

A blocking query (``GET /jobs/<id>?index=N&wait=30s``) that must wait held
a waitress worker thread for as long as it waited, so the server let only a
few wait at once (``orch.server.changes.MAX_BLOCKING``, 4) and answered the
rest at once, unchanged. Their clients asked again at once: past 4
watchers of one cluster, each spun, at a core of server CPU between them
(bench/README.md). Nomad parks a blocking query on a goroutine; here an
inline route (``orch.wsgichannel``) may answer ``Later``, and the request
stays on its connection, with no thread, until the change it waits for or
its deadline:

- the connection keeps the request in ``channel.requests``, so waitress
  reads nothing more from it (no lookahead), and the epoll loop leaves it
  out of its turns (``channel.parked``) until it is answered;
- ``watch`` tells the waker of a change from the writer's thread (under the
  feed's lock); the waker queues the answer for the loop's thread and wakes
  it (``EpollMap.call_soon_threadsafe``: no lock taken);
- the deadline is a timer of the loop (``EpollMap.call_at``);
- the answer is the route's read, given on the loop's thread. If it cannot
  be read now (the store's lock is busy) it is tried again shortly; if its
  subject is gone, or the read fails, the request goes to a worker, whose
  route answers it (a 404, or the error) as before.

Other blocking reads (orch's lists, the /v1 face) are answered by their
route, computed on a thread of their own (``orch.server.parkedreads``): the
request waits parked the same way between one computation and the next,
and ``Later.answer`` says ``PENDING`` while nothing is ready to send.

A parked connection is read no more, but the loop hears its client hang
up (``EPOLLRDHUP``; a half close too, as Go's server, Nomad's, takes it):
the request is forgotten then, not at its deadline. A worker that finds a
blocking query pipelined behind the request it ended parks it through the
loop's thread, whose timers are its own.

How many may wait is bounded by the connections waitress accepts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from orch.wsgichannel import InlineAnswer

log = logging.getLogger(__name__)

# A parked query whose answer cannot be read yet (the store's lock is busy)
# is asked again this much later.
RETRY_S = 0.002


class Declined(Exception):
    """``Later.answer``: the route must answer this one (on a worker)."""


class _Pending:
    def __repr__(self) -> str:
        return "PENDING"


# ``Later.answer``: nothing to send yet; asked again at the next ``set()``.
PENDING: Any = _Pending()


@dataclass(frozen=True)
class Response:
    """A whole answer (any status and type), as a WSGI app gave it."""

    status: bytes  # b"200 OK"
    content_type: bytes
    body: bytes
    headers: Mapping[str, str]


@dataclass(eq=False)
class Later:
    """An inline route's answer that waits for a change.

    ``watch(waker)`` calls ``waker.set()`` at each change (from any thread,
    without blocking), and at once if the change came already;
    ``unwatch(waker)`` stops that; ``answer()`` reads the answer on the loop's
    thread (an ``InlineAnswer`` or a ``Response``): None if it cannot yet
    (asked again shortly), ``PENDING`` if it waits for the next ``set()``,
    ``Declined`` for the route.
    ``deadline`` (``time.monotonic()``): answered then, changed or not."""

    deadline: float
    watch: Callable[[Any], None]
    unwatch: Callable[[Any], None]
    answer: Callable[[], InlineAnswer | Response | None]


@dataclass(eq=False)
class Parked:
    """One parked request: its connection, its ``Later`` and how it resumes."""

    tasks: Any  # the listener's _InlineTasks: it sends the answer
    channel: Any
    later: Later
    loop: Any  # the EpollMap
    timer: list = field(default_factory=list)
    woken: bool = False

    def start(self) -> None:
        """On the loop's thread."""
        channel = self.channel
        channel.parked = self
        self.timer = self.loop.call_at(self.later.deadline, self.resume)
        self.later.watch(self)
        if not channel.connected:
            self.resume()  # gone before it could wait: forgotten at once
        else:
            self.loop.touch(channel._fileno)  # heard only for its hang-up now

    def set(self) -> None:
        """A change came (any thread): answer on the loop's thread."""
        if self.woken:
            return
        self.woken = True
        try:
            self.loop.call_soon_threadsafe(self.resume, self.channel.server.trigger)
        except OSError:
            pass  # the server is closing: the connection goes with it

    def hang_up(self) -> None:
        """On the loop's thread: its client closed the connection (or half
        closed it, which Go's server, Nomad's, also takes as gone)."""
        self.channel.handle_close()
        self.resume()

    def resume(self) -> None:
        """On the loop's thread: answer if it can be, or wait on."""
        channel = self.channel
        if channel.parked is not self:
            return  # answered already (a change and the deadline both came)
        answer: InlineAnswer | Response | None = None
        declined = False
        if channel.connected:
            # Before the answer is asked: a set() while it is read is not lost.
            self.woken = False
            try:
                answer = self.later.answer()
            except Declined:
                declined = True
            except Exception:
                log.exception("a parked blocking query's answer failed")
                declined = True
            if answer is PENDING:
                return
            if answer is None and not declined:
                # Not readable now: soon again (the deadline's timer stays).
                self.loop.call_at(time.monotonic() + RETRY_S, self.resume)
                return
        channel.parked = None
        self.later.unwatch(self)
        self.loop.cancel(self.timer)
        if not channel.connected:  # the client went: nobody to answer
            with channel.requests_lock:
                for request in channel.requests:
                    request.close()
                channel.requests = []
            return
        self.tasks.unpark(channel, answer)
        self.loop.touch(channel._fileno)


def park(tasks, channel, later: Later) -> bool:
    """Hold ``channel``'s first request until ``later`` answers it; False
    where the connection's loop keeps no timers (no epoll)."""
    loop: Any = getattr(channel, "_map", None)
    if not hasattr(loop, "call_soon_threadsafe"):
        return False
    parked = Parked(tasks, channel, later, loop)
    if loop.on_loop():
        parked.start()
    else:
        # A worker that ended the request before it (pipelined) parks it:
        # the loop's timers are the loop's alone. The request stays first
        # in channel.requests meanwhile, so nothing else is read or served.
        loop.call_soon_threadsafe(parked.start, channel.server.trigger)
    return True
