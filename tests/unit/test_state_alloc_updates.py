"""An allocation's status updates (reports, push failures) rewrite its row in
place on SQLite (one b-tree page, not three: bench/README.md, issue #17), on
both engines durably and waking the job's readers; SQLite checkpoints its WAL
at its default 1,000 pages (the power-loss window the README states)."""

import sqlite3

import pytest
from test_state import alloc, evaluation, job, node

from orch.server.state import StateStore
from orch.server.state.store import StoreCore, jobs_written
from orch.structs import AllocStatus, EvalStatus, Plan, TaskState, TaskStatus, replace


def _placed(store):
    store.upsert_node(node())
    store.put_job(job(), evaluation())
    decided = replace(evaluation(), status=EvalStatus.COMPLETE, placed=1)
    store.commit_plan(Plan(eval_id="e1", job_id="j1", place=[alloc()]), [decided])
    return store.get_alloc("a1")


def _reported(current):
    state = TaskState(status=TaskStatus.COMPLETE, exit_code=0, events=[{"time": 2.0, "type": "x"}])
    return replace(current, client_status=AllocStatus.COMPLETE, end_time=2.0, tasks={"t": state})


def test_an_update_is_durable_and_wakes_the_jobs_readers(open_store):
    store = open_store()
    current = _placed(store)
    before = store.changes.job_index("j1")
    store.update_allocs([_reported(current)])
    assert store.changes.job_index("j1") > before
    store.close()
    again = open_store().get_alloc("a1")
    assert again.client_status == AllocStatus.COMPLETE
    assert again.tasks["t"].exit_code == 0
    assert again.tasks["t"].events == [{"time": 2.0, "type": "x"}]
    assert again.job_id == "j1" and again.node_id == "n1"


def _row(path):
    db = sqlite3.connect(path)
    try:
        return db.execute(
            "SELECT rowid, job_id, node_id FROM allocations WHERE allocation_id = 'a1'"
        ).fetchall()
    finally:
        db.close()


def test_sqlite_updates_the_row_in_place(tmp_path):
    """A REPLACE would give the row a new rowid (deleted and inserted again)."""
    store = StateStore(str(tmp_path))
    try:
        current = _placed(store)
        path = str(tmp_path / "state.db")
        ((rowid, job_id, node_id),) = _row(path)
        store.update_allocs([_reported(current)])
        assert _row(path) == [(rowid, job_id, node_id)]
        count = sqlite3.connect(path).execute("SELECT COUNT(*) FROM allocations").fetchone()
        assert count == (1,)
    finally:
        store.close()


@pytest.mark.parametrize("sql", [StoreCore._UPDATE_ALLOC, StoreCore._UPSERT_ALLOC])
def test_both_statements_name_the_job_of_their_rows(sql):
    assert jobs_written([(sql, [("a1", "j1", "n1", "{}"), ("a2", "j2", "n1", "{}")])]) == {
        "j1",
        "j2",
    }


def test_sqlite_checkpoints_at_its_default_interval(tmp_path):
    store = StateStore(str(tmp_path))
    try:
        ((pages,),) = store.backend.execute("PRAGMA wal_autocheckpoint")
        assert pages == 1000  # README: what a power loss may lose
    finally:
        store.close()
