"""Job versions: stored with the job, trimmed, diffed, reverted, purged."""

from __future__ import annotations

import pytest

from orch.config import ServerConfig
from orch.errors import NotFound
from orch.server.api import make_app
from orch.server.server import Server
from orch.server.versions import diff
from tests.jobspec import exec_job

from helpers import call


def spec(count=1, command="true", job_id="web") -> dict:
    return exec_job(job_id, command, count=count, cpu=10, memory=16)


@pytest.fixture
def server(tmp_path, state_database):
    srv = Server(ServerConfig(data_dir=str(tmp_path), database=state_database, job_versions=3))
    yield srv
    srv.stop()


# ---- diff ------------------------------------------------------------------


def test_diff_names_changed_leaves_by_path():
    old, new = spec(count=2, command="a"), spec(count=3, command="b")
    assert diff(old, new) == [
        {"path": "task_groups[0].count", "old": 2, "new": 3},
        {"path": "task_groups[0].tasks[0].config.command", "old": "a", "new": "b"},
    ]


def test_diff_of_added_and_removed_keys_and_items():
    assert diff({"a": 1}, {"a": 1, "b": [1, 2]}) == [{"path": "b", "old": None, "new": [1, 2]}]
    assert diff({"l": [1, 2, 3]}, {"l": [1]}) == [
        {"path": "l[1]", "old": 2, "new": None},
        {"path": "l[2]", "old": 3, "new": None},
    ]
    assert diff({"x": True}, {"x": 1}) == [{"path": "x", "old": True, "new": 1}]
    assert diff(spec(), spec()) == []


# ---- store -----------------------------------------------------------------


def test_versions_round_trip_and_survive_a_restart(open_store, server):
    server.submit_job(spec(count=1))
    server.submit_job(spec(count=2))
    versions = server.store.job_versions("web")
    assert [(j.version, j.task_groups[0].count) for j, _ in versions] == [(1, 2), (0, 1)]
    server.store.close()
    reopened = open_store(versions_kept=3)
    assert [j.version for j, _ in reopened.job_versions("web")] == [1, 0]


def test_only_the_last_n_versions_are_kept(server):
    for count in range(1, 7):
        server.submit_job(spec(count=count))
    versions = server.store.job_versions("web")
    assert [j.version for j, _ in versions] == [5, 4, 3]


def test_an_unchanged_submit_makes_no_version(server):
    server.submit_job(spec())
    server.submit_job(spec())
    assert len(server.store.job_versions("web")) == 1


def test_purge_deletes_the_versions(server):
    server.submit_job(spec(count=1))
    server.submit_job(spec(count=2))
    server.delete_job("web")
    with pytest.raises(NotFound):
        server.store.job_versions("web")
    server.submit_job(spec(count=5))  # a new job of the same id starts over
    assert [j.version for j, _ in server.store.job_versions("web")] == [0]


def test_revert_submits_the_old_spec_as_a_new_version(server):
    server.submit_job(spec(count=1))
    server.submit_job(spec(count=2, command="new"))
    job, ev = server.revert_job("web", 0)
    assert job.version == 2
    assert job.task_groups[0].count == 1
    assert job.task_groups[0].tasks[0].config == {"command": "true"}
    assert server.store.get_job("web").version == 2
    # Reverting to what the job is already is a no-op, as an unchanged submit.
    again, _ = server.revert_job("web", 2)
    assert again.version == 2
    with pytest.raises(NotFound):
        server.revert_job("web", 9)


# ---- API -------------------------------------------------------------------


def test_versions_route_shows_newest_first_with_diffs(server):
    app = make_app(server)
    server.submit_job(spec(count=1))
    server.submit_job(spec(count=3))
    status, body = call(app, "GET", "/jobs/web/versions")
    assert status == 200
    assert body["count"] == 2
    newest, oldest = body["versions"]
    assert newest["version"] == 1 and newest["stable"] is False
    assert newest["job"]["task_groups"][0]["count"] == 3
    assert newest["diff"] == [{"path": "task_groups[0].count", "old": 1, "new": 3}]
    assert oldest["diff"] == []
    assert newest["submit_time"] >= oldest["submit_time"] > 0


def test_revert_route(server):
    app = make_app(server)
    server.submit_job(spec(count=1))
    server.submit_job(spec(count=3))
    status, body = call(app, "POST", "/jobs/web/revert", {"version": 0})
    assert status == 200, body
    assert body["version"] == 2
    assert body["message"] == "job reverted to version 0"
    assert body["evaluation_id"]
    assert server.store.get_job("web").task_groups[0].count == 1


@pytest.mark.parametrize(
    "path,body,code",
    [
        ("/jobs/web/revert", {"version": 7}, 404),
        ("/jobs/nope/revert", {"version": 0}, 404),
        ("/jobs/nope/versions", None, 404),
        ("/jobs/web/revert", {"version": -1}, 400),
        ("/jobs/web/revert", {"version": True}, 400),
        ("/jobs/web/revert", {"version": "1"}, 400),
        ("/jobs/web/revert", {"version": 0, "x": 1}, 400),
        ("/jobs/web/revert", [0], 400),
    ],
)
def test_bad_versions_requests_get_json_errors(server, path, body, code):
    app = make_app(server)
    server.submit_job(spec())
    method = "GET" if path.endswith("versions") else "POST"
    status, out = call(app, method, path, body)
    assert status == code, out
    assert "error" in out


def test_rollout_route_takes_no_body_or_an_empty_object(server):
    app = make_app(server)
    server.submit_job(exec_job("web", "sleep 60", type_="service", cpu=10, memory=16))
    status, body = call(app, "POST", "/jobs/web/rollout")
    assert status == 200, body
    assert body["version"] == 1 and body["evaluation_id"]
    status, body = call(app, "POST", "/jobs/web/rollout", {})
    assert status == 200, body
    assert body["version"] == 2


@pytest.mark.parametrize(
    "body,says",
    [
        (b"{not json", "JSON"),
        (b"[1]", "body: must be a JSON object"),
        (b'"x"', "body: must be a JSON object"),
        (b'{"count": 3}', "count: unknown field"),
    ],
)
def test_rollout_route_refuses_a_bad_body_with_json(server, body, says):
    app = make_app(server)
    server.submit_job(exec_job("web", "sleep 60", type_="service", cpu=10, memory=16))
    status, out = call(app, "POST", "/jobs/web/rollout", body)
    assert status == 400, out
    assert says in out["error"]
    assert server.store.get_job("web").version == 0  # nothing rolled out


def web_with_an_old_copy(server):
    """Job web at version 0 with one running copy ("old-copy") on n1; its app."""
    import types

    from orch.structs import Allocation, AllocStatus, Node, Resources

    server.store.upsert_node(Node("n1", resources=Resources(cpu=1000, memory=1000)))
    v0, _ = server.submit_job(spec(command="sleep 1000"))
    old = Allocation(
        "old-copy", "web", v0.task_groups[0].name, "n1", 0,
        client_status=AllocStatus.RUNNING, job_version=0,
    )  # fmt: skip
    server.store.commit_plan(types.SimpleNamespace(job_id="web", stop=[], place=[old]), [])
    return make_app(server)


def test_an_allocation_shows_the_spec_of_the_version_it_runs(server):
    """During a rollout old and new copies run different specs: each read
    showed the job's newest (an old copy with the new command and memory)."""
    app = web_with_an_old_copy(server)
    changed = spec(command="sleep 1001")
    changed["task_groups"][0]["tasks"][0]["resources"]["memory"] = 64
    server.submit_job(changed)
    status, job = call(app, "GET", "/jobs/web")
    assert status == 200 and job["version"] == 1
    [shown] = [a for a in job["allocations"] if a["allocation_id"] == "old-copy"]
    task = next(iter(shown["tasks"].values()))
    assert task["config"]["command"] == "sleep 1000" and task["resources"]["memory"] == 16
    status, alloc = call(app, "GET", "/allocations/old-copy")
    task = next(iter(alloc["tasks"].values()))
    assert task["config"]["command"] == "sleep 1000" and task["resources"]["memory"] == 16


def test_a_job_and_its_allocations_read_without_the_database(server, monkeypatch):
    """With the database lost, GET /jobs/<id> of an updated job answered 503:
    it read the old version its allocations run from SQL. Memory answers."""
    from orch.errors import StorageError

    app = web_with_an_old_copy(server)
    server.submit_job(spec(command="sleep 1001"))

    def lost(*_args, **_kw):
        raise StorageError("state store unavailable: connection failed")

    monkeypatch.setattr(server.store.backend, "execute", lost)
    status, job = call(app, "GET", "/jobs/web")
    assert status == 200 and job["version"] == 1
    [shown] = [a for a in job["allocations"] if a["allocation_id"] == "old-copy"]
    assert next(iter(shown["tasks"].values()))["config"]["command"] == "sleep 1001"
    status, _alloc = call(app, "GET", "/allocations/old-copy")
    assert status == 200
