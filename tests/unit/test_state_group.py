"""Group commit (orch.server.state.group): the writes of one armed turn share
one SQLite transaction, their effects wait for its COMMIT, a failing write
takes back only its own rows, and a failed COMMIT leaves memory as the file
is (checked with a second connection and a store opened again)."""

import resource
import signal
import sqlite3
import threading
from contextlib import contextmanager

import pytest

from orch.errors import StorageError
from orch.server.state import StateStore
from orch.server.state.group import TurnCommit
from orch.structs import Evaluation, Job, TaskGroup, TriggeredBy


def _job(job_id: str) -> Job:
    return Job(job_id=job_id, task_groups=(TaskGroup(name="g", count=1, tasks=()),))


def _eval(job_id: str) -> Evaluation:
    return Evaluation(eval_id=f"ev-{job_id}", job_id=job_id, triggered_by=TriggeredBy.JOB_REGISTER)


def _submit(store: StateStore, job_id: str, on_commit=None):
    return store.submit_job(_job(job_id), lambda _trigger: _eval(job_id), on_commit=on_commit)


@pytest.fixture
def store(tmp_path):
    s = StateStore(str(tmp_path))
    yield s
    s.close()


@pytest.fixture
def statements(store):
    """The SQL the store's connection runs, as SQLite traces it."""
    seen: list[str] = []
    store.backend.db.set_trace_callback(seen.append)
    yield seen
    store.backend.db.set_trace_callback(None)


def _on_disk(store: StateStore) -> set[str]:
    """The job ids another connection reads from the file (committed only)."""
    other = sqlite3.connect(store.backend.path)
    try:
        return {row[0] for row in other.execute("SELECT job_id FROM jobs")}
    finally:
        other.close()


def _control(statements: list[str]) -> list[str]:
    return [s.split()[0] for s in statements if s.split()[0] in ("BEGIN", "SAVEPOINT", "COMMIT")]


def test_the_writes_of_a_turn_share_one_transaction_committed_at_its_end(store, statements):
    queued = []
    store.arm_group()
    for job_id in ("a", "b", "c"):
        _submit(store, job_id, on_commit=queued.append)
    # Memory has them (each write computes on the last), the file not yet,
    # and nothing they asked for has run.
    assert {j.job_id for j in store.list_jobs()} == {"a", "b", "c"}
    assert _on_disk(store) == set()
    assert queued == []
    assert store.group_pending()
    assert store.end_group() is None
    assert _on_disk(store) == {"a", "b", "c"}
    assert [e.job_id for e in queued] == ["a", "b", "c"]  # in commit order
    assert _control(statements) == ["BEGIN", "SAVEPOINT", "SAVEPOINT", "COMMIT"]
    assert not store.group_pending()
    # Unarmed: a transaction a write, effects at once.
    statements.clear()
    _submit(store, "d", on_commit=queued.append)
    assert _on_disk(store) == {"a", "b", "c", "d"}
    assert len(queued) == 4
    assert _control(statements) == ["BEGIN", "COMMIT"]


def test_other_threads_wait_for_the_commit_and_their_writes_stay_their_own(store, statements):
    store.arm_group()
    _submit(store, "a")
    settled = threading.Event()
    waiter_saw: list[set[str]] = []

    def reader_then_writer():
        store.settle()  # blocked while the group holds the store's lock
        waiter_saw.append(_on_disk(store))
        _submit(store, "from-thread")
        settled.set()

    thread = threading.Thread(target=reader_then_writer)
    thread.start()
    assert not settled.wait(0.3)
    assert store.end_group() is None
    thread.join(5)
    assert settled.is_set()
    assert waiter_saw == [{"a"}]  # what it was let in to see was committed
    assert _on_disk(store) == {"a", "from-thread"}
    assert _control(statements) == ["BEGIN", "COMMIT", "BEGIN", "COMMIT"]


def test_the_change_feed_wakes_readers_only_after_the_commit(store):
    woke: list[set[str]] = []
    index = store.changes.index

    def blocking_reader():
        store.changes.wait(index, 5.0)
        store.settle()
        woke.append(_on_disk(store))

    thread = threading.Thread(target=blocking_reader)
    thread.start()
    store.arm_group()
    _submit(store, "a")
    _submit(store, "b")
    thread.join(0.3)
    assert woke == []
    store.end_group()
    thread.join(5)
    assert woke == [{"a", "b"}]


def test_a_failing_write_takes_back_its_own_rows_only(store, statements):
    store.arm_group()
    _submit(store, "a")
    with pytest.raises(StorageError):
        # A real failure inside SQLite after a good statement of the same write.
        store._write(
            [
                (store._UPSERT_JOB, [("half", "{}")]),
                ("INSERT INTO no_such_table VALUES (?)", [(1,)]),
            ]
        )
    _submit(store, "b")
    assert store.end_group() is None
    assert _on_disk(store) == {"a", "b"}
    assert _control(statements) == ["BEGIN", "SAVEPOINT", "SAVEPOINT", "COMMIT"]


def test_a_failing_first_write_leaves_the_group_to_the_next(store):
    store.arm_group()
    with pytest.raises(StorageError):
        store._write([("INSERT INTO no_such_table VALUES (?)", [(1,)])])
    _submit(store, "a")
    assert store.end_group() is None
    assert _on_disk(store) == {"a"}


def test_a_turn_without_writes_commits_nothing(store, statements):
    store.arm_group()
    assert not store.group_pending()
    assert store.end_group() is None
    assert _control(statements) == []


@contextmanager
def _files_cannot_grow_past(size: int):
    """A real write failure (EFBIG: SQLite's disk full) for every file of
    this process past ``size`` bytes, meanwhile."""
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, handler)


def test_a_failed_commit_answers_an_error_and_memory_is_the_files_again(store, tmp_path):
    _submit(store, "kept")
    turn = TurnCommit(store)
    queued = []
    turn.start()
    _submit(store, "lost-1", on_commit=queued.append)
    _submit(store, "lost-2", on_commit=queued.append)
    assert turn.pending()
    wal = tmp_path / "state.db-wal"
    with _files_cannot_grow_past(wal.stat().st_size):
        failed = turn.end()
    assert isinstance(failed, StorageError)
    assert "unavailable" in failed.message, failed.message  # EFBIG: "disk I/O error"
    assert queued == []  # the broker never heard of them
    assert {j.job_id for j in store.list_jobs()} == {"kept"}
    assert store.get_eval("ev-lost-1") is None
    assert not turn.pending()
    # The store works on: the next turn's write commits.
    turn.start()
    _submit(store, "after")
    assert turn.end() is None
    assert _on_disk(store) == {"kept", "after"}
    store.close()
    again = StateStore(str(tmp_path))
    try:
        assert {j.job_id for j in again.list_jobs()} == {"kept", "after"}
    finally:
        again.close()
