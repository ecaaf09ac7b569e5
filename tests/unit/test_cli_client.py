"""The client's routes and error mapping, against the canned HTTP server."""

import pytest

from orch import errors
from orch.client import Client, ClientError, WaitTimeout

pytestmark = pytest.mark.usefixtures("clean_env")


@pytest.mark.parametrize(
    "status, cls",
    [
        (400, errors.ValidationError),
        (401, errors.Unauthorized),
        (404, errors.NotFound),
        (405, errors.MethodNotAllowed),
        (413, errors.PayloadTooLarge),
        (503, errors.StorageError),
        (500, errors.OrchError),
        (409, errors.OrchError),
    ],
)
def test_error_status_maps_to_exception_class(canned, status, cls):
    canned.add("GET", "/jobs/web", status, {"error": "作业不存在", "field": "x"})
    with pytest.raises(cls) as exc:
        Client(canned.url).jobs.get("web")
    assert type(exc.value) is cls
    assert exc.value.message == "作业不存在"
    assert exc.value.status == status
    assert exc.value.extra == {"field": "x"}


def test_non_json_error_names_the_url_and_what_it_answered(canned):
    canned.add("GET", "/nodes", 502, "<html>Bad Gateway</html>", "text/html; charset=utf-8")
    with pytest.raises(ClientError) as exc:
        Client(canned.url).nodes.list()
    assert exc.value.message == (f"{canned.url}/nodes: answered 502 text/html, not an orch server?")
    assert exc.value.status == 502


def test_json_error_without_an_error_field_is_not_orch(canned):
    canned.add("GET", "/jobs", 404, {"detail": "Not Found"})
    with pytest.raises(ClientError) as exc:
        Client(canned.url).jobs.list()
    assert exc.value.message.endswith("/jobs: answered 404 application/json, not an orch server?")


def test_unreachable_server_is_a_client_error(canned):
    from orch.dev.launcher import free_port

    address = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ClientError) as exc:
        Client(address, timeout=1).jobs.list()
    assert exc.value.message.endswith(": connection refused")
    assert isinstance(exc.value, errors.OrchError)


def test_non_json_success_is_a_client_error(canned):
    canned.add("GET", "/jobs", 200, "ok", "text/plain")
    with pytest.raises(ClientError) as exc:
        Client(canned.url).jobs.list()
    assert exc.value.message == f"{canned.url}/jobs: answered 200 text/plain, not an orch server?"


def test_bearer_token_sent_only_when_set(canned):
    canned.add("GET", "/jobs", 200, {"jobs": [{"job_id": "a"}], "count": 1})
    assert Client(canned.url, token="s3cret").jobs.list() == [{"job_id": "a"}]
    assert canned.requests[-1]["headers"]["Authorization"] == "Bearer s3cret"
    Client(canned.url).jobs.list()
    assert "Authorization" not in canned.requests[-1]["headers"]


@pytest.mark.parametrize("token", ["\u2603", "a\nb", "a b", "tab\there"])
def test_a_token_that_cannot_go_in_a_header_is_refused_in_one_line(canned, token):
    """requests raised UnicodeEncodeError deep in http.client (a traceback),
    or blamed the connection for a newline."""
    with pytest.raises(ClientError) as exc:
        Client(canned.url, token=token)
    assert exc.value.message == "token: must be printable ASCII, without spaces"
    assert not canned.requests


def test_submit_is_one_post_for_new_and_existing_jobs(canned):
    canned.add("POST", "/jobs", 200, {"job_id": "web", "evaluation_id": "e1"})
    client = Client(canned.url)
    assert client.jobs.submit({"task_groups": []})["evaluation_id"] == "e1"
    before = len(canned.requests)
    client.jobs.submit({"job_id": "web", "task_groups": []})
    # POST creates or updates: no check first that a racing purge could outdate.
    assert [(r["method"], r["path"]) for r in canned.requests[before:]] == [("POST", "/jobs")]
    assert canned.requests[-1]["body"] == {"job_id": "web", "task_groups": []}


def test_job_verbs_use_the_seed_routes(canned):
    for method, path in (
        ("DELETE", "/jobs/web"),
        ("POST", "/jobs/web/restart"),
        ("POST", "/jobs/web/delete"),
        ("GET", "/evaluations/e1"),
        ("GET", "/allocations/a1"),
    ):
        canned.add(method, path, 200, {"ok": path})
    client = Client(canned.url)
    assert client.jobs.stop("web") == {"ok": "/jobs/web"}
    assert client.jobs.restart("web") == {"ok": "/jobs/web/restart"}
    assert client.jobs.delete("web") == {"ok": "/jobs/web/delete"}
    assert client.evaluations.get("e1") == {"ok": "/evaluations/e1"}
    assert client.allocs.get("a1") == {"ok": "/allocations/a1"}


def test_ids_are_quoted_into_one_path_segment(canned):
    with pytest.raises(errors.NotFound):
        Client(canned.url).jobs.get("a/b?c")
    assert canned.requests[-1]["path"] == "/jobs/a%2Fb%3Fc"


def test_logs_are_bytes_with_type_and_offset(canned):
    canned.add("GET", "/allocations/a1/logs/main", 200, b"\xffhello\n", "application/octet-stream")
    data = Client(canned.url).allocs.logs("a1", "main", stderr=True, offset=7)
    assert data == b"\xffhello\n"
    assert canned.requests[-1]["query"] == {"type": ["stderr"], "offset": ["7"]}
    Client(canned.url).allocs.logs("a1", "main")
    assert canned.requests[-1]["query"] == {"type": ["stdout"], "offset": ["0"]}


def test_wait_returns_the_job_or_times_out(canned):
    canned.add("GET", "/jobs/web", 200, {"job_id": "web", "status": "running"})
    client = Client(canned.url)
    assert client.jobs.wait("web", ["running"], timeout=1)["status"] == "running"
    with pytest.raises(TimeoutError, match="'running'") as exc:
        client.jobs.wait("web", "complete", timeout=0.05, interval=0.01)
    assert isinstance(exc.value, WaitTimeout) and isinstance(exc.value, errors.OrchError)
    assert exc.value.job["status"] == "running"


def test_plan_and_node_get(canned):
    canned.add("POST", "/jobs/plan", 200, {"job_id": "web", "diff": {}, "failures": {}})
    canned.add("GET", "/nodes/n1", 200, {"node_id": "n1"})
    client = Client(canned.url)
    assert client.jobs.plan({"job_id": "web"})["job_id"] == "web"
    assert canned.requests[-1]["body"] == {"job_id": "web"}
    assert client.nodes.get("n1") == {"node_id": "n1"}
