"""waitress's I/O loop with epoll: a turn visits the sockets that changed,
not every open connection.

``wasyncore.loop`` asks every socket in its map ``readable()`` and
``writable()`` at every turn and hands all of them to ``select()``: with one
keep-alive connection per agent (thousands) each request paid for all the
idle ones. ``EpollMap`` is the socket map waitress is given
(``create_server(map=...)``, its documented parameter); it notes every
socket added or removed, and ``run`` (what the server's ``run()`` calls
through its ``asyncore`` attribute, see ``orch.wsgichannel``) keeps the
interest of each socket registered with a level-triggered epoll. A turn
asks only these again:

- sockets that had an event, or were added or removed;
- connections that are not idle (a request in progress, output queued,
  closing): workers change them and pull the trigger, as for waitress's loop;
- the listeners, when a socket came or went (their ``readable()`` applies
  waitress's connection limit) or their maintenance (``channel_timeout``) is
  due: ``readable()`` runs it then; when it has run, every connection is
  asked again, as it may have been told to close. The loop's wait ends by
  then. Between the two a listener's answer cannot change, nor the
  trigger's (always readable): asking them at every turn was two of a
  quiet heartbeat's four visits.

An idle connection (readable, nothing to write, no request) stays
registered for input and is not visited until it sends something. Only the
events a socket waits for go to ``wasyncore.readwrite``, as in waitress's
poll loop (which leaves a socket with no interest out). epoll's interest is
widened at once and narrowed lazily: a connection a worker serves stays
registered for input, and is narrowed only if an unwanted event comes.

The loop also keeps timers (``call_at``: a parked blocking query's deadline,
``orch.wsgipark``), run on its thread at the end of the turn they fall in;
a connection parked that way is idle as well until it is ``touch``-ed.

``stop_serving`` stops a server whose ``run()`` loops in a thread of ours;
``close_after_run`` closes one whose ``run()`` has returned (a signal).
"""

from __future__ import annotations

import errno
import heapq
import itertools
import logging
import select
import threading
import time
from collections import deque
from typing import Any

from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.server import BaseWSGIServer
from waitress.trigger import trigger as Trigger

log = logging.getLogger(__name__)

_READ = select.POLLIN | select.POLLPRI
_WRITE = select.POLLOUT
_INTEREST = _READ | _WRITE
# Reported whatever the interest, as poll() reports them for a registered fd.
_ALWAYS = select.POLLERR | select.POLLHUP | select.POLLNVAL
HAVE_EPOLL = hasattr(select, "epoll")
# A parked connection (orch.wsgipark) is read no more, but its client's
# hang-up is heard: its waiting ends then, not at its deadline.
_HANGUP = getattr(select, "EPOLLRDHUP", 0)


class EpollMap(dict):
    """waitress's socket map (fd -> dispatcher) that polls with epoll."""

    def __init__(self) -> None:
        super().__init__()
        # fds to ask again at the next turn; set.pop() and .add() are atomic,
        # and a worker thread may close a connection (remove its fd).
        self._pending: set[int] = set()
        self._registered: dict[int, tuple[Any, int]] = {}  # fd -> (dispatcher, mask)
        self._wanted: dict[int, int] = {}  # fd -> events it waits for, this turn
        self._epoll: Any = None
        self._loop_thread: int | None = None
        self._listeners: set[int] = set()
        # When the listeners are asked again: their earliest maintenance, or
        # as soon as the number of sockets changes.
        self._cleanup_at = 0.0
        self._size = -1
        self.visits = 0  # sockets asked readable()/writable(), for tests
        # Hooks around the handling of a turn's events (start(), end()): the
        # inline writes of a turn share one commit (orch.wsgichannel).
        self.turns: Any = None
        # [monotonic deadline, order, callback or None once cancelled],
        # soonest first; the cancelled are dropped when they come up, or all
        # at once when they are most of the heap.
        self._timers: list[list[Any]] = []
        self._order = itertools.count()
        self._cancelled = 0
        # Callbacks from other threads, run at the end of the next turn
        # (deque: append and popleft are atomic).
        self._soon: deque[Any] = deque()

    def call_soon_threadsafe(self, callback, trigger) -> None:
        """Run ``callback()`` on the loop's thread at its next turn, from any
        thread; ``trigger`` (the server's) wakes the loop. Unlike
        ``trigger.pull_trigger(thunk)`` it takes no lock: waitress runs the
        thunks under the trigger's lock, and a caller holding a lock of its
        own that a thunk takes would deadlock with it."""
        self._soon.append(callback)
        trigger.pull_trigger()

    def call_at(self, deadline: float, callback) -> list[Any]:
        """Run ``callback()`` on the loop's thread once ``time.monotonic()``
        reaches ``deadline``; the handle is for ``cancel``. Only from the
        loop's thread, as ``cancel``."""
        timer = [deadline, next(self._order), callback]
        heapq.heappush(self._timers, timer)
        return timer

    def cancel(self, timer: list[Any]) -> None:
        if timer[2] is None:
            return
        timer[2] = None
        self._cancelled += 1
        if self._cancelled > 64 and self._cancelled * 2 > len(self._timers):
            self._timers = [t for t in self._timers if t[2] is not None]
            heapq.heapify(self._timers)
            self._cancelled = 0

    def on_loop(self) -> bool:
        """Whether the caller runs on the loop's thread."""
        return threading.get_ident() == self._loop_thread

    def touch(self, fd: int) -> None:
        """Ask ``fd``'s dispatcher again next turn (a parked one is not)."""
        self._pending.add(fd)

    def __setitem__(self, fd, obj) -> None:
        super().__setitem__(fd, obj)
        self._pending.add(fd)

    def __delitem__(self, fd) -> None:
        super().__delitem__(fd)
        self._pending.add(fd)

    def clear(self) -> None:
        self._pending.update(self)
        super().clear()

    def run(self, timeout: float) -> None:
        """Serve until the map is empty (every socket closed)."""
        self._epoll = select.epoll()
        self._loop_thread = threading.get_ident()
        try:
            while self:
                self.poll(timeout)
        finally:
            self._epoll.close()
            self._registered.clear()
            self._wanted.clear()

    def poll(self, timeout: float) -> None:
        """One turn: update the interests that may have changed, wait, handle."""
        self._refresh()
        if self._listeners:
            # Wake for the listeners' maintenance even if nothing happens.
            timeout = min(timeout, max(self._cleanup_at - time.time(), 0.0))
        if self._timers:
            timeout = min(timeout, max(self._timers[0][0] - time.monotonic(), 0.0))
        if self._soon:
            timeout = 0.0
        events = self._epoll.poll(timeout)
        turns = self.turns
        if turns is None or not events:
            self._handle(events)
        else:
            turns.start()
            try:
                self._handle(events)
            finally:
                turns.end()
        soon = self._soon
        while soon:
            self._run(soon.popleft())
        if self._timers:
            self._run_timers()

    @staticmethod
    def _run(callback) -> None:
        try:
            callback()
        except Exception:
            log.exception("a callback of the I/O loop failed")

    def _run_timers(self) -> None:
        now = time.monotonic()
        # self._timers is read again each time: a callback's cancel may rebuild it.
        while self._timers and self._timers[0][0] <= now:
            timer = heapq.heappop(self._timers)
            callback, timer[2] = timer[2], None  # run: a cancel now does nothing
            if callback is None:
                self._cancelled -= 1
                continue
            self._run(callback)

    def _handle(self, events: list[tuple[int, int]]) -> None:
        for fd, flags in events:
            self._pending.add(fd)
            obj = self.get(fd)
            if obj is not None:
                parked = getattr(obj, "parked", None)
                if parked is not None and flags & (_HANGUP | _ALWAYS):
                    parked.hang_up()  # the client went: nobody to answer
                    continue
                flags = self._wanted_events(fd, obj, flags)
                if flags:
                    wasyncore.readwrite(obj, flags)

    def _wanted_events(self, fd: int, obj, flags: int) -> int:
        """The events waitress's poll loop would hand over: those the socket
        waits for (errors and hang-ups only if it waits for anything)."""
        want = self._wanted.get(fd, 0)
        if not want or flags & ~want & _INTEREST:
            # Registered wider than wanted (narrowed lazily, see _update): ask
            # again, the socket may have changed since the turn began.
            want = self._wanted[fd] = self._want(obj)
            if not want or flags & ~want & _INTEREST:
                mask = want | _HANGUP if getattr(obj, "parked", None) is not None else want
                self._register(fd, obj, mask, self._registered.get(fd, (None, 0))[1])
        return flags & (want | _ALWAYS) if want else 0

    def _refresh(self) -> None:
        pending, busy = self._pending, []
        if self._listeners and (len(self) != self._size or time.time() >= self._cleanup_at):
            self._size = len(self)
            self._cleanup_at = float("inf")
            pending.update(self._listeners)
        while pending:
            fd = pending.pop()
            if self._update(fd):
                busy.append(fd)
        pending.update(busy)

    def _update(self, fd: int) -> bool:
        """Note what ``fd``'s dispatcher waits for now, registering it if epoll
        lacks some of it; True if it must be asked again next turn (it is not
        an idle connection)."""
        obj = self.get(fd)
        registered = self._registered.get(fd)
        if registered is not None and registered[0] is not obj:
            self._unregister(fd)  # closed, or its fd number taken by a new socket
            registered = None
        if obj is None:
            self._wanted.pop(fd, None)
            self._listeners.discard(fd)
            return False
        cleanup = getattr(obj, "next_channel_cleanup", None)
        mask = self._wanted[fd] = self._want(obj)
        if getattr(obj, "parked", None) is not None:
            mask |= _HANGUP
        if isinstance(obj, BaseWSGIServer):
            if obj.next_channel_cleanup != cleanup:
                # Maintenance ran: some connections may now be closing.
                self._pending.update(obj.active_channels)
            self._listeners.add(fd)
            self._cleanup_at = min(self._cleanup_at, obj.next_channel_cleanup)
        old = registered[1] if registered is not None else 0
        # Wider than wanted is left as it is: a connection a worker serves
        # goes back to reading when it is done, and narrowing it in between
        # cost two epoll_ctl calls a request (each a GIL handover with the
        # worker). An event it does not want narrows it then (poll).
        if mask & ~old:
            self._register(fd, obj, mask, old)
        if isinstance(obj, BaseWSGIServer) or (mask == _READ and isinstance(obj, Trigger)):
            return False  # asked again as _refresh decides / never changes
        if getattr(obj, "parked", None) is not None:
            return False  # waits for its answer: touched when it has one
        return not (mask == _READ and isinstance(obj, HTTPChannel) and not obj.requests)

    def _want(self, obj) -> int:
        """The events ``obj`` waits for, asked as waitress's poll loop asks."""
        self.visits += 1
        mask = _READ if obj.readable() else 0
        if obj.writable() and not obj.accepting:
            mask |= _WRITE
        return mask

    def _register(self, fd: int, obj, mask: int, old: int) -> None:
        if not mask:
            self._unregister(fd)
            return
        try:
            try:
                if old:
                    self._epoll.modify(fd, mask)
                else:
                    self._epoll.register(fd, mask)
            except FileExistsError:
                self._epoll.modify(fd, mask)
            except FileNotFoundError:
                # Closed since it was registered (epoll dropped it), its
                # number now another socket's.
                self._epoll.register(fd, mask)
        except OSError as exc:
            if exc.errno != errno.EBADF:
                raise
            # Closed by another thread since the map was read: a worker whose
            # send fails closes its connection (waitress's handle_close). Its
            # removal from the map queued the fd for the next turn, which
            # forgets it. Raising here ended the loop: the server served no more.
            self._registered.pop(fd, None)
            return
        self._registered[fd] = (obj, mask)

    def _unregister(self, fd: int) -> None:
        self._registered.pop(fd, None)
        try:
            self._epoll.unregister(fd)
        except OSError:
            pass  # closed: the kernel dropped it already


class Asyncore:
    """What a waitress server's ``run()`` finds as ``self.asyncore``: its
    ``loop`` runs an ``EpollMap``, any other map as waitress does."""

    @staticmethod
    def loop(timeout=30.0, use_poll=False, map=None, count=None):
        """``wasyncore.loop``'s signature."""
        if isinstance(map, EpollMap) and count is None:
            map.run(timeout)
        else:
            wasyncore.loop(timeout=timeout, use_poll=use_poll, map=map, count=count)


def socket_map() -> dict:
    """A new socket map for ``create_server(map=...)``: an ``EpollMap`` where
    the platform has epoll."""
    return EpollMap() if HAVE_EPOLL else {}


def stop_serving(
    http, thread: threading.Thread, timeout: float = 3.0, workers_timeout: float = 2.0
) -> bool:
    """Stop a waitress server of one listener whose ``run()`` loops in
    ``thread``: its sockets closed from the loop, the loop and the workers
    joined, then its trigger closed; False (the trigger left open) if the
    loop or a worker outlived its timeout."""
    # The trigger is closed last, here, not by the thunk (close_all would):
    # pull_trigger queues the thunk before it writes its byte, and a worker's
    # pull may wake the loop in between. The thunk then closed the pipe first
    # and the write failed with EBADF, or went to whatever file had taken the
    # fd's number. A worker ending a request pulls it too: it stays open
    # until the workers have left.
    trigger = http.trigger
    if trigger._closed:
        return True  # stopped before: its fd numbers may be another file's now

    trigger.pull_trigger(lambda: _close_all_but_the_trigger(http))
    thread.join(timeout)
    return _close_trigger_after_workers(http, workers_timeout, loop_alive=thread.is_alive())


def close_after_run(http, workers_timeout: float = 2.0) -> bool:
    """Close a waitress server whose ``run()`` has returned on this thread
    (a signal's SystemExit): its sockets, then the workers joined, then its
    trigger; False (the trigger left open) if a worker outlived the timeout.

    waitress's own ``close()`` closes the trigger first: a worker ending its
    request after that pulled a closed pipe, as in ``stop_serving``."""
    if http.trigger._closed:
        return True
    _close_all_but_the_trigger(http)
    return _close_trigger_after_workers(http, workers_timeout, loop_alive=False)


def _close_all_but_the_trigger(http) -> None:
    trigger = http.trigger
    others = {}
    for fd, obj in list(http._map.items()):
        if isinstance(obj, BaseWSGIServer):
            wasyncore.dispatcher.close(obj)  # its own close() closes the trigger too
        elif obj is not trigger:
            others[fd] = obj
    wasyncore.close_all(others)  # each leaves http._map as it closes
    trigger.del_channel()  # the map is empty: a running loop returns


def _close_trigger_after_workers(http, workers_timeout: float, loop_alive: bool) -> bool:
    http.task_dispatcher.shutdown(timeout=workers_timeout)
    if loop_alive or http.task_dispatcher.threads:
        log.warning("waitress did not stop in time: its trigger is left open")
        return False
    http.trigger.close()
    return True
