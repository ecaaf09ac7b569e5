"""Dispatch of parameterized jobs, job/group meta, and their way to the agent."""

import base64
import os

import pytest

from orch.agent import taskenv
from orch.agent.spec import parse_alloc
from orch.codec import job_from
from orch.errors import Conflict, DriverError, ValidationError
from orch.jobspec import parse_job
from orch.server.dispatch import MAX_PAYLOAD, dispatch
from orch.server.planner import new_eval
from orch.server.push import alloc_payload
from orch.server.state import StateStore
from orch.structs import Allocation, TriggeredBy


def body(**extra):
    return {
        "job_id": "work",
        "meta": {"team": "a", "level": "job"},
        "task_groups": [
            {
                "name": "g",
                "meta": {"level": "group"},
                "tasks": [
                    {
                        "name": "t",
                        "config": {"command": "true"},
                        "dispatch_payload": {"file": "in/input.json"},
                    }
                ],
            }
        ],
        **extra,
    }


PARAMS = {"meta_required": ["user"], "meta_optional": ["mode"], "payload": "optional"}


@pytest.fixture
def store(tmp_path):
    store = StateStore(str(tmp_path))
    job = parse_job(body(parameterized=PARAMS))
    store.submit_job(job, lambda trigger: new_eval(job.job_id, trigger, 1.0))
    yield store
    store.close()


def test_dispatch_makes_a_child_with_meta_and_payload(store):
    queued = []
    payload = base64.b64encode(b'{"n": 1}').decode()
    child, ev = dispatch(
        store, "work", {"meta": {"user": "ann"}, "payload": payload}, queued.append, now=1000.0
    )
    assert child.job_id.startswith("work-dispatch-1000-") and len(child.job_id) == len("work") + 19
    assert child.parent_id == "work" and child.parameterized is None
    assert child.meta == {"team": "a", "level": "job", "user": "ann"}
    assert child.payload == payload
    assert queued == [ev] and ev.triggered_by == TriggeredBy.JOB_REGISTER
    assert job_from(child.to_dict()) == child  # stored JSON round-trips


@pytest.mark.parametrize(
    "request_body, message",
    [
        ({}, "missing required keys: user"),
        ({"meta": {"user": "x", "color": "red"}}, "keys not allowed by the job: color"),
        ({"meta": {"user": "x"}, "payload": "%%%"}, "not valid base64"),
        ({"meta": {"user": "x"}, "payload": 5}, "must be a base64 string"),
        ({"meta": {"user": 1.5e400}}, "meta"),
        ({"meta": {"user": "x"}, "bogus": 1}, "bogus: unknown field"),
        (
            {"meta": {"user": "x"}, "payload": base64.b64encode(b"x" * (MAX_PAYLOAD + 1)).decode()},
            "at most",
        ),
    ],
)
def test_bad_dispatches_are_refused(store, request_body, message):
    with pytest.raises(ValidationError, match=message):
        dispatch(store, "work", request_body, lambda e: None, now=1.0)


def test_payload_modes_and_plain_jobs(tmp_path):
    store = StateStore(str(tmp_path))
    for job_id, mode in (("req", "required"), ("none", "forbidden")):
        job = parse_job({**body(parameterized={"payload": mode}), "job_id": job_id})
        store.submit_job(job, lambda trigger, j=job: new_eval(j.job_id, trigger, 1.0))
    with pytest.raises(ValidationError, match="payload: required"):
        dispatch(store, "req", {}, lambda e: None, now=1.0)
    with pytest.raises(ValidationError, match="payload: forbidden"):
        dispatch(store, "none", {"payload": "eA=="}, lambda e: None, now=1.0)
    plain = parse_job(body())
    store.submit_job(plain, lambda trigger: new_eval("work", trigger, 1.0))
    with pytest.raises(ValidationError, match="not parameterized"):
        dispatch(store, "work", {}, lambda e: None, now=1.0)
    store.close()


def test_a_stopped_parent_cannot_be_dispatched(store):
    store.stop_job("work", new_eval("work", TriggeredBy.JOB_DEREGISTER, 2.0))
    with pytest.raises(Conflict):
        dispatch(store, "work", {"meta": {"user": "x"}}, lambda e: None, now=3.0)


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"periodic": {"crons": ["@daily"]}, "parameterized": {}}, "both periodic"),
        ({"type": "service", "periodic": {"crons": ["@daily"]}}, "only allowed on batch"),
        ({"parameterized": {"payload": "sometimes"}}, "parameterized.payload"),
        ({"meta": {"bad key": "x"}}, "invalid meta key"),
        ({"meta": {"k": {"nested": 1}}}, "meta.k: must be a string"),
        ({"job_id": "x" * 110, "parameterized": {}}, "job_id: must be at most"),
    ],
)
def test_job_fields_are_validated(extra, message):
    with pytest.raises(ValidationError, match=message):
        parse_job(body(**extra))


@pytest.mark.parametrize("name", ["/etc/passwd", "../x", "a/../../b", "", "a//b"])
def test_payload_file_must_stay_in_the_task_dir(name):
    raw = body()
    raw["task_groups"][0]["tasks"][0]["dispatch_payload"] = {"file": name}
    with pytest.raises(ValidationError, match="dispatch_payload.file"):
        parse_job(raw)


def test_alloc_payload_carries_merged_meta_and_payload_to_the_agent(store):
    child, _ = dispatch(
        store, "work", {"meta": {"user": "ann"}, "payload": "aGk="}, lambda e: None, now=5.0
    )
    alloc = Allocation("a-1", child.job_id, "g", "n1", 0)
    sent = alloc_payload(alloc, child)
    assert sent["task_group"]["meta"] == {"team": "a", "level": "group", "user": "ann"}
    assert sent["dispatch_payload"] == "aGk="
    spec = parse_alloc(sent)
    assert spec.meta == sent["task_group"]["meta"] and spec.payload_bytes() == b"hi"
    assert spec.tasks[0].payload_file == "in/input.json"
    assert parse_alloc(spec.to_dict()) == spec  # the agent's persisted form


def test_a_job_without_the_new_fields_keeps_its_shapes(tmp_path):
    raw = {"task_groups": [{"name": "g", "tasks": [{"name": "t", "config": {"command": "x"}}]}]}
    job = parse_job(raw)
    out = job.to_dict()
    assert not {"meta", "periodic", "parameterized", "parent_id", "payload"} & set(out)
    sent = alloc_payload(Allocation("a", job.job_id, "g", "n", 0), job)
    assert "meta" not in sent["task_group"] and "dispatch_payload" not in sent


def test_task_env_and_payload_file(tmp_path):
    env = taskenv.meta_env({"user": "ann", "build.id": "7"})
    assert env["ORCH_META_user"] == env["ORCH_META_USER"] == "ann"
    assert env["ORCH_META_BUILD_ID"] == "7"
    taskenv.write_payload(str(tmp_path), "in/input.json", b"data")
    assert (tmp_path / "in" / "input.json").read_bytes() == b"data"
    taskenv.write_payload(str(tmp_path), None, b"data")  # no file wanted: nothing
    with pytest.raises(DriverError):
        taskenv.write_payload(str(tmp_path), "../escape", b"x")
    assert not os.path.exists(tmp_path.parent / "escape")


def test_a_dispatch_token_launches_one_child_however_often_it_is_sent(store):
    """Nomad's idempotency token: each retry launched a child of its own."""
    import threading

    queued = []
    request = {"meta": {"user": "ann"}, "idempotency_token": "retry-1"}
    first, ev = dispatch(store, "work", request, queued.append, now=1000.0)
    again, none = dispatch(store, "work", dict(request), queued.append, now=1001.0)
    assert again == first and none is None and queued == [ev]
    assert job_from(first.to_dict()) == first  # the token is stored
    other, _ = dispatch(
        store, "work", {**request, "idempotency_token": "retry-2"}, queued.append, now=1002.0
    )
    assert other.job_id != first.job_id
    # Many at once with one token: one child.
    made = []
    token = {"meta": {"user": "bob"}, "idempotency_token": "burst"}
    threads = [
        threading.Thread(
            target=lambda: made.append(
                dispatch(store, "work", dict(token), lambda e: None, now=1003.0)[0].job_id
            )
        )
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 8 and len(set(made)) == 1
    assert len([c for c in store.children_of("work") if c.dispatch_token == "burst"]) == 1


def test_a_payload_with_line_breaks_is_read_as_go_reads_it(store):
    """base64.encodebytes (76-column lines) was a 400: Go's decoder skips them."""
    raw = bytes(range(256)) * 3
    wrapped = base64.encodebytes(raw).decode().replace("\n", "\r\n", 1)
    child, _ = dispatch(store, "work", {"meta": {"user": "a"}, "payload": wrapped}, print, now=5.0)
    assert base64.b64decode(child.payload) == raw
