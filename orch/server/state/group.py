"""Group commit: the writes of one I/O loop turn in one SQLite transaction.

Waitress's I/O thread answers submits and report beats inline
(``orch.server.inline``); with several clients, one epoll turn often finds
several of them ready. Each committed alone, they wrote the same b-tree
pages (the tables' and indexes' last leaves) to the WAL again and again:
~10 pages and 28 ``pwrite64`` a submit (bench/README.md). Here the turn's
first write opens a transaction that its later writes join (each in a
savepoint of its own: one that fails takes back only its rows and gets
its error as before), and the turn ends with one COMMIT.

What keeps this as safe as one transaction a write:

- the group holds the store's lock from its first write to its COMMIT: no
  other thread writes, settles or reads under the lock in between, and a
  blocking reader is woken only after the COMMIT;
- nothing leaves the server before the COMMIT: the turn's inline answers are
  held (``orch.wsgichannel``), and so are the pushes and broker enqueues
  the writes asked for (``after_commit``), which then run in commit order;
- memory runs ahead of the disk inside the group (a write's later writes
  compute on it). If the COMMIT fails (a full disk, an I/O error), memory is
  loaded again from the database, as a follower does when its change log is
  gone, the held effects are dropped and every held answer becomes the
  write's error (503): nothing acknowledged is lost, the server stays up.

Only the armed thread (the loop's, ``arm_group``) groups; other threads'
writes and every write on PostgreSQL (its commit is a network round trip,
and the leader's fence is checked per write) keep a transaction each.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from orch.errors import StorageError
from orch.server.state.store import StoreCore

log = logging.getLogger(__name__)


class GroupCommit(StoreCore):
    """The store's group commit; the loop calls ``arm_group`` at a turn's
    start and ``end_group`` at its end (``TurnCommit``)."""

    _held: list[Callable[[], object]]

    def arm_group(self) -> None:
        """This thread's writes, until ``end_group``, share one transaction."""
        if getattr(self.backend, "groups", False):
            self._group_thread = threading.get_ident()

    def group_pending(self) -> bool:
        """True on the group's thread while its writes await their COMMIT."""
        return self._grouped and self._group_thread == threading.get_ident()

    def _join_group(self) -> None:
        # Under the lock (``_write``): held once more, until end_group.
        self._lock.acquire()
        self._depth += 1
        self._grouped = True
        self._held = []
        self.backend.open_group()  # type: ignore[attr-defined]

    def after_commit(self, effect: Callable[[], object]) -> None:
        """Run ``effect`` once what was written is durable: at once, or on a
        group's thread after its COMMIT (never, if the COMMIT fails)."""
        if self._grouped and self._group_thread == threading.get_ident():
            self._held.append(effect)
        else:
            effect()

    def end_group(self) -> StorageError | None:
        """COMMIT the group, then run its held effects and wake its readers;
        the error if the COMMIT failed (memory is then the database's again)."""
        self._group_thread = None
        if not self._grouped:
            return None
        effects, self._held = self._held, []
        failed = None
        woken: set[str] | None = None
        try:
            try:
                self.backend.close_group()  # type: ignore[attr-defined]
            except StorageError as exc:
                failed = exc
                self._reload_after(exc)
            else:
                for effect in effects:
                    try:
                        effect()
                    except Exception:
                        log.exception("an effect of a committed write failed")
        finally:
            self._grouped = False
            self._depth -= 1
            if self._depth == 0:
                woken, self._unwoken = self._unwoken, None
            self._lock.release()
            if woken is not None:
                self.changes.wake(woken)
        return failed

    def _reload_after(self, exc: StorageError) -> None:
        """Memory back to what the database holds: the group's writes are not there."""
        log.error("state group commit failed, reloading memory from the database: %s", exc)
        self._reset_memory()
        self._load()
        self.changes.bump(all_jobs=True)


class TurnCommit:
    """A store's group commit as the I/O loop's turn hooks
    (``orch.wsgichannel.TurnWrites``)."""

    def __init__(self, store: GroupCommit):
        self._store = store

    def start(self) -> None:
        self._store.arm_group()

    def pending(self) -> bool:
        return self._store.group_pending()

    def end(self) -> StorageError | None:
        return self._store.end_group()
