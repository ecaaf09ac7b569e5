"""The CLI's argument parsing, the client's error mapping and the CLI's output.

The client is tested against a tiny real HTTP server on port 0 that answers
canned JSON: that is a unit test of the client, not of orch's server.
"""

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from orch import __main__ as entry
from orch import __version__, errors
from orch.cli.commands import alloc_summary, follow_logs, load_job_file
from orch.cli.format import (
    Style,
    ago,
    alloc_counts,
    colour_enabled,
    describe_failures,
    describe_placement_failure,
    group_progress,
    node_row,
    progress_line,
    table,
)
from orch.cli.job import job_summary, plan_text
from orch.cli.run import Live, RunMonitor
from orch.client import Client, ClientError, WaitTimeout
from orch.config import DEFAULT_ADDRESS, AgentConfig, ServerConfig


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    import os

    for name in list(os.environ):
        if name.startswith("ORCH_"):
            monkeypatch.delenv(name)


def parse(*argv):
    return entry.build_parser().parse_args(list(argv))


# ---- parsing ---------------------------------------------------------------


def test_server_defaults_come_from_server_config():
    args = parse("server")
    config = entry.server_config(args)
    assert config == ServerConfig(insecure=False)
    assert args.role == "server" and args.handler is entry.cmd_server


def test_server_flags():
    args = parse(
        "server",
        "--bind",
        "0.0.0.0",
        "--port",
        "5000",
        "--data-dir",
        "/d",
        "--node-ttl",
        "2.5",
        "--token",
        "s3cret",
    )
    config = entry.server_config(args)
    assert (config.bind, config.port, config.data_dir, config.node_ttl, config.token) == (
        "0.0.0.0",
        5000,
        "/d",
        2.5,
        "s3cret",
    )


def test_agent_flags_and_repeated_meta():
    args = parse(
        "agent",
        "--server",
        "http://10.0.0.1:4646/",
        "--port",
        "0",
        "--advertise",
        "http://10.0.0.2:9000",
        "--region",
        "eu",
        "--node-id",
        "n1",
        "--meta",
        "rack=r1",
        "--meta",
        "gpu=yes",
        "--meta",
        "note=a=b",
        "--data-dir",
        "/a",
        "--heartbeat-interval",
        "0.5",
        "--token",
        "t",
    )
    config = entry.agent_config(args)
    assert config.server == "http://10.0.0.1:4646"
    assert config.meta == {"rack": "r1", "gpu": "yes", "note": "a=b"}
    assert (config.port, config.advertise, config.region, config.node_id) == (
        0,
        "http://10.0.0.2:9000",
        "eu",
        "n1",
    )
    assert (config.data_dir, config.heartbeat_interval, config.token) == ("/a", 0.5, "t")
    assert args.role == "agent"


def test_agent_defaults_come_from_agent_config():
    assert entry.agent_config(parse("agent")) == AgentConfig(meta={})


def test_dev_flags():
    args = parse(
        "dev",
        "--agents",
        "5",
        "--port",
        "0",
        "--node-ttl",
        "3",
        "--heartbeat-interval",
        "0.2",
        "--data-dir",
        "/x",
        "--token",
        "t",
    )
    config = entry.dev_config(args)
    assert (
        config.agents,
        config.port,
        config.node_ttl,
        config.heartbeat_interval,
        config.data_dir,
        config.token,
        config.log_level,
    ) == (5, 0, 3.0, 0.2, "/x", "t", "INFO")
    assert entry.dev_config(parse("dev")).data_dir is None


@pytest.mark.parametrize(
    "argv, bad",
    [
        (["agent", "--meta", "novalue"], "KEY=VALUE"),
        (["agent", "--server", "10.0.0.1:4646"], "URL"),
        (["server", "--port", "70000"], "range"),
        (["server", "--node-ttl", "0"], "positive"),
        (["dev", "--agents", "0"], "at least 1"),
        (["--log-level", "loud", "version"], "one of"),
        (["job"], "required"),
        (["alloc", "logs"], "required"),
    ],
)
def test_bad_arguments_exit_2_with_a_reason(argv, bad, capsys):
    with pytest.raises(SystemExit) as exc:
        parse(*argv)
    assert exc.value.code == 2
    assert bad in capsys.readouterr().err


def test_client_commands():
    args = parse("job", "run", "job.json", "--detach", "--address", "http://h:1", "--token", "t")
    assert (args.file, args.detach, args.address, args.token, args.role) == (
        "job.json",
        True,
        "http://h:1",
        "t",
        "client",
    )
    assert parse("job", "run", "j.json").detach is False
    assert parse("job", "status").id is None
    status = parse("job", "status", "web", "--json")
    assert (status.id, status.json) == ("web", True)
    for verb in ("stop", "restart", "delete"):
        args = parse("job", verb, "web")
        assert args.id == "web" and args.handler.__name__ == f"job_{verb}"
    assert parse("node", "status", "--json").json is True
    assert parse("alloc", "status", "1a2b").id == "1a2b"
    logs = parse("alloc", "logs", "1a2b", "main", "--stderr", "-f")
    assert (logs.id, logs.task, logs.stderr, logs.follow) == ("1a2b", "main", True, True)
    assert parse("alloc", "logs", "1a2b", "main").follow is False


def test_address_and_token_fall_back_to_environment(monkeypatch):
    assert parse("node", "status").address == DEFAULT_ADDRESS
    monkeypatch.setenv("ORCH_ADDR", "http://10.1.1.1:4646")
    monkeypatch.setenv("ORCH_TOKEN", "from-env")
    args = parse("node", "status")
    assert (args.address, args.token) == ("http://10.1.1.1:4646", "from-env")
    assert parse("node", "status", "--address", "http://x:1").address == "http://x:1"


def test_config_flags_fall_back_to_environment(monkeypatch):
    monkeypatch.setenv("ORCH_PORT", "7000")
    monkeypatch.setenv("ORCH_NODE_TTL", "4")
    monkeypatch.setenv("ORCH_HEARTBEAT_INTERVAL", "0.25")
    assert entry.server_config(parse("server")).port == 7000
    assert entry.server_config(parse("server")).node_ttl == 4.0
    assert entry.agent_config(parse("agent")).heartbeat_interval == 0.25


def test_meta_falls_back_to_orch_meta_too(monkeypatch, capsys):
    monkeypatch.setenv("ORCH_META", "rack=r1, zone=a")
    assert entry.agent_config(parse("agent")).meta == {"rack": "r1", "zone": "a"}
    assert entry.agent_config(parse("agent", "--meta", "rack=r2", "--meta", "x=1")).meta == {
        "rack": "r2",
        "zone": "a",
        "x": "1",
    }
    monkeypatch.setenv("ORCH_META", "rack")
    with pytest.raises(SystemExit) as exc:
        parse("agent")
    assert exc.value.code == "orch: ORCH_META: expected KEY=VALUE, got 'rack'"


def test_a_bad_number_in_the_environment_is_one_line(monkeypatch):
    monkeypatch.setenv("ORCH_PORT", "http")
    with pytest.raises(SystemExit) as exc:
        entry.main(["version"])
    assert exc.value.code == "orch: ORCH_PORT: not a number: 'http'"


def test_log_level_on_top_level_subcommand_or_environment(monkeypatch):
    assert parse("version").log_level == "INFO"
    assert parse("--log-level", "debug", "server").log_level == "DEBUG"
    assert parse("server", "--log-level", "warning").log_level == "WARNING"
    assert parse("--log-level", "debug", "server", "--log-level", "error").log_level == "ERROR"
    monkeypatch.setenv("ORCH_LOG_LEVEL", "debug")
    assert parse("job", "status").log_level == "DEBUG"


def test_version_and_help(capsys):
    assert entry.main(["version"]) == 0
    assert capsys.readouterr().out.strip() == f"orch {__version__}"
    with pytest.raises(SystemExit) as exc:
        entry.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ("server", "agent", "dev", "job", "node", "alloc", "version"):
        assert command in out


def test_logging_format_names_role_and_pid():
    import logging
    import os

    entry.configure_logging("agent", "DEBUG")
    root = logging.getLogger()
    record = logging.LogRecord("orch.x", logging.INFO, __file__, 1, "hello %s", ("w",), None)
    line = root.handlers[0].format(record)
    assert f"INFO [agent pid={os.getpid()}] orch.x: hello w" in line
    assert root.level == logging.DEBUG


# ---- a canned HTTP server --------------------------------------------------


class Canned:
    """Routes (method, path) to (status, body, content type); records requests."""

    def __init__(self):
        self.routes = {}
        self.requests = []

    def add(self, method, path, status=200, body=None, ctype="application/json"):
        if not isinstance(body, (bytes, str)):
            body = json.dumps(body if body is not None else {})
        self.routes[(method, path)] = (status, body, ctype)


@pytest.fixture
def canned():
    routes = Canned()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self):
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            routes.requests.append(
                {
                    "method": self.command,
                    "path": parts.path,
                    "query": parse_qs(parts.query),
                    "headers": dict(self.headers),
                    "body": json.loads(body) if body else None,
                }
            )
            status, payload, ctype = routes.routes.get(
                (self.command, parts.path),
                (404, json.dumps({"error": "no route"}), "application/json"),
            )
            data = payload.encode() if isinstance(payload, str) else payload
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = _answer

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    routes.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield routes
    httpd.shutdown()
    httpd.server_close()


# ---- client ----------------------------------------------------------------


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


# ---- formatting ------------------------------------------------------------


def test_placement_failure_in_words():
    ev = {
        "status": "blocked",
        "placed": 1,
        "queued": 2,
        "failures": {"memory exhausted": 2, "constraint region = eu": 1},
        "groups": {"web": {"wanted": 3, "placed": 1, "failed": 2}},
    }
    assert describe_placement_failure(ev) == [
        "2 of 3 not placed: memory exhausted on 2 nodes; 1 node filtered by constraint region = eu"
    ]


def test_placement_failure_names_the_nearest_nodes():
    near = [
        {
            "node_id": "a1b2c3d4-0000-4000-8000-000000000000",
            "reason": "memory exhausted",
            "needs": {"cpu": 100, "memory": 512},
            "free": {"cpu": 900, "memory": 300},
        },
        {
            "node_id": "ffff0000-0000-4000-8000-000000000000",
            "reason": "memory exhausted",
            "needs": {"cpu": 100, "memory": 512},
            "free": {"cpu": 900, "memory": 200},
        },
    ]
    ev = {
        "failures": {"memory exhausted": 1, "constraint region = eu": 1},
        "groups": {"web": {"wanted": 3, "placed": 1, "failed": 2}},
        "failed_nodes": {"web": near[:1]},
    }
    assert describe_placement_failure(ev) == [
        "2 of 3 not placed: memory exhausted on node a1b2c3d4 (needs 512 MB, 300 free); "
        "1 node filtered by constraint region = eu"
    ]
    assert describe_failures({"memory exhausted": 4}, near) == (
        "memory exhausted on 4 nodes (needs 512 MB; free: a1b2c3d4 300, ffff0000 200)"
    )
    cpu = [dict(near[0], reason="cpu exhausted", needs={"cpu": 5000}, free={"cpu": 40})]
    assert (
        describe_failures({"cpu exhausted": 1}, cpu)
        == "cpu exhausted on node a1b2c3d4 (needs 5000 MHz, 40 free)"
    )
    two = {
        "failures": {"memory exhausted": 2},
        "groups": {"a": {"wanted": 1, "failed": 1}, "b": {"wanted": 1, "failed": 1}},
        "failed_nodes": {"a": near[:1]},
    }
    assert describe_placement_failure(two)[1] == (
        'group "a": 1 of 1 not placed: memory exhausted on node a1b2c3d4 (needs 512 MB, 300 free)'
    )


def test_placement_failure_per_group_and_without_reasons():
    ev = {
        "failures": {},
        "groups": {"a": {"wanted": 1, "failed": 1}, "b": {"wanted": 2, "failed": 2}},
    }
    assert describe_placement_failure(ev) == [
        "3 of 3 not placed: no eligible node",
        'group "a": 1 of 1 not placed',
        'group "b": 2 of 2 not placed',
    ]
    assert describe_placement_failure(
        {"queued": 2, "placed": 0, "failures": {"missing drivers": 3}}
    ) == ["2 of 2 not placed: 3 nodes filtered by missing drivers"]
    assert describe_failures({"cpu exhausted": 1}) == "cpu exhausted on 1 node"


def test_table_and_ages():
    assert (
        table(["ID", "Status"], [["a", "running"], ["bbbb", None]])
        == "ID    Status\na     running\nbbbb  -"
    )
    assert ago(None, 100) == "-"
    assert ago(97, 100) == "3s ago"
    assert ago(100 - 125, 100) == "2m5s ago"
    assert ago(100 - 3720, 100) == "1h2m ago"
    assert ago(100 - 3 * 86400, 100) == "3d ago"
    assert ago(105, 100) == "0s ago"


def job_body(status="running", allocs=(), count=3, job_type="service", version=0):
    return {
        "job_id": "web",
        "type": job_type,
        "status": status,
        "version": version,
        "task_groups": [{"name": "g", "count": count, "tasks": []}],
        "allocations": list(allocs),
    }


def alloc(i, status="running", desired="run", version=0, node="node-1234567890"):
    return {
        "allocation_id": f"alloc-{i}-0000000",
        "node_id": node,
        "task_group": "g",
        "name": f"web.g[{i}]",
        "status": status,
        "client_status": status,
        "desired_status": desired,
        "job_version": version,
        "create_time": 90.0 - i,
    }


def test_alloc_counts_ignore_stopped_but_keep_unchanged_ones():
    # An update that leaves the group unchanged keeps its version-0 allocation.
    job = job_body(
        version=1,
        allocs=[alloc(0, version=1), alloc(1, version=0), alloc(2, desired="stop", version=1)],
    )
    assert alloc_counts(job) == "2/3"
    assert alloc_counts(job_body(status="dead")) == "0/0"


def test_job_summary_lists_allocations():
    text = job_summary(job_body(allocs=[alloc(0), alloc(1, "pending")]), now=100.0)
    assert "ID        = web" in text and "Allocs    = 1/3" in text
    lines = text.splitlines()
    header = lines.index("Allocations") + 1
    assert lines[header].split() == ["ID", "Node", "Group", "Status", "Desired", "Created"]
    assert lines[header + 1].split() == [
        "alloc-0-",
        "node-123",
        "g",
        "running",
        "run",
        "10s",
        "ago",
    ]


def test_node_row_counts_live_allocations():
    node = {
        "node_id": "abcdef0123",
        "region": "eu",
        "endpoint": "http://h:1",
        "healthy": True,
        "resources": {"cpu": 4000, "memory": 8192},
        "allocations": [
            {"status": "running", "resources": {"cpu": 100, "memory": 64}},
            {"status": "complete", "resources": {"cpu": 500, "memory": 500}},
        ],
    }
    assert node_row(node) == [
        "abcdef01",
        "eu",
        "http://h:1",
        "true",
        "100/4000 MHz",
        "64/8192 MB",
        1,
    ]
    node["allocations"] = [{"status": "running"}]
    assert node_row(node)[4:] == ["4000 MHz", "8192 MB", 1]
    # The server's own count wins: one unit, MB, as job files and the API use.
    node["allocated"] = {"cpu": 300, "memory": 128}
    assert node_row(node)[4:] == ["300/4000 MHz", "128/8192 MB", 1]


def test_alloc_summary_shows_tasks_and_events():
    body = dict(
        alloc(0, "failed"),
        tasks={
            "main": {
                "status": "failed",
                "exit_code": 3,
                "error": "exit status 3",
                "restarts": 2,
                "events": [
                    {"time": 95.0, "type": "Started", "message": "task started"},
                    {"time": 98.0, "type": "Terminated", "message": "exit code 3"},
                ],
            }
        },
    )
    text = alloc_summary(body, now=100.0)
    assert 'Task "main" is "failed"' in text
    assert "Exit Code = 3" in text and "Error     = exit status 3" in text
    assert text.index("exit code 3") < text.index("task started")  # newest first


def test_load_job_file_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(errors.ValidationError, match="bad.json: invalid JSON"):
        load_job_file(str(bad))
    bad.write_text("[]")
    with pytest.raises(errors.ValidationError, match="JSON object"):
        load_job_file(str(bad))
    with pytest.raises(errors.ValidationError, match="missing.json"):
        load_job_file(str(tmp_path / "missing.json"))


# ---- job run's monitor -----------------------------------------------------


class FakeClient:
    """Plays back a sequence of evaluation and job bodies."""

    def __init__(self, evals, jobs, allocs=None, stderr=None):
        self._evals, self._jobs = list(evals), list(jobs)
        self.jobs = self.evaluations = self.allocs = self
        self._allocs = allocs or {}
        self._stderr = stderr or {}  # (alloc id, task) -> bytes

    def logs(self, alloc_id, task, stderr=False, offset=0):
        assert stderr
        return self._stderr.get((alloc_id, task), b"")[offset : offset + 5]  # small pages

    def get(self, ident):
        if ident.startswith("eval"):
            return self._evals.pop(0) if len(self._evals) > 1 else self._evals[0]
        if ident in self._allocs:
            return self._allocs[ident]
        return self._jobs.pop(0) if len(self._jobs) > 1 else self._jobs[0]


def monitor(client, job_type="service", timeout=5.0):
    clock = [0.0]
    return RunMonitor(
        client,
        "web",
        "eval-1",
        job_type,
        timeout=timeout,
        now=lambda: clock[0],
        sleep=lambda s: clock.__setitem__(0, clock[0] + s),
    )


def test_run_exits_0_when_every_service_allocation_runs(capsys):
    client = FakeClient(
        evals=[{"status": "pending"}, {"status": "complete", "placed": 3}],
        jobs=[
            job_body("pending", [alloc(0, "pending")]),
            job_body("running", [alloc(0), alloc(1), alloc(2, "pending")]),
            job_body("running", [alloc(0), alloc(1), alloc(2)]),
        ],
    )
    assert monitor(client).run() == 0
    out = capsys.readouterr().out
    assert "Evaluation eval-1: pending -> complete (placed 3)" in out
    # Not a terminal: a group's line is printed again only when it changed.
    assert out.count("    g: 1 placed, 0 running, 0 failed of 3\n") == 1
    assert "    g: 3 placed, 2 running, 0 failed of 3\n" in out
    assert "    g: 3 placed, 3 running, 0 failed of 3\n" in out
    assert "\x1b" not in out
    assert "3 of 3 allocations running" in out


def test_live_block_is_redrawn_in_place_on_a_terminal():
    import io

    out = io.StringIO()
    live = Live(out, tty=True)
    live.show([("a", "a: 1"), ("b", "b: 1")])
    live.say("message")
    live.show([("a", "a: 2"), ("b", "b: 1")])
    assert out.getvalue() == (
        "a: 1\nb: 1\n\x1b[2F\x1b[Jmessage\na: 1\nb: 1\n\x1b[2F\x1b[Ja: 2\nb: 1\n"
    )
    plain = io.StringIO()
    live = Live(plain, tty=False)
    live.show([("a", "a: 1"), ("b", "b: 1")])
    live.show([("a", "a: 2"), ("b", "b: 1")])
    assert plain.getvalue() == "a: 1\nb: 1\na: 2\n"


def test_group_progress_counts_the_last_submission():
    job = dict(
        job_body(
            version=1,
            allocs=[
                alloc(0, "running", version=1),
                alloc(1, "failed", desired="stop", version=1),
                alloc(2, "pending", version=1),
                alloc(3, "running", desired="stop", version=0),
                alloc(4, "failed", desired="stop", version=0),
            ],
        ),
        submit_time=88.0,
    )
    # alloc(4) failed before this submission (created at 86): not counted.
    counts = group_progress(job)["g"]
    assert counts == {"count": 3, "placed": 2, "running": 1, "complete": 0, "failed": 1}
    assert progress_line("g", counts, batch=False) == "    g: 2 placed, 1 running, 1 failed of 3"
    assert (
        progress_line("g", counts, batch=True)
        == "    g: 2 placed, 1 running, 0 complete, 1 failed of 3"
    )
    assert "\x1b[31m1 failed\x1b[0m" in progress_line("g", counts, False, Style(True))


class FakeTTY:
    def isatty(self):
        return True


def test_colour_only_on_a_terminal_without_no_color():
    assert colour_enabled(FakeTTY(), {}) is True
    assert colour_enabled(FakeTTY(), {"NO_COLOR": "1"}) is False
    assert colour_enabled(FakeTTY(), {"TERM": "dumb"}) is False
    assert colour_enabled(object(), {}) is False
    assert Style(False).status("failed") == "failed"
    assert Style(True).status("failed") == "\x1b[31mfailed\x1b[0m"
    painted = table(
        ["ID", "Status"], [["a", "running"], ["bbbb", "failed"]], paint=Style(True).cell
    )
    assert painted.splitlines()[1] == "a     \x1b[32mrunning\x1b[0m"
    assert painted.splitlines()[2] == "bbbb  \x1b[31mfailed\x1b[0m"


def test_run_exits_2_with_reasons_when_placement_fails(capsys):
    client = FakeClient(
        evals=[
            {
                "status": "blocked",
                "placed": 1,
                "queued": 2,
                "failures": {"memory exhausted": 2},
                "groups": {"g": {"wanted": 3, "placed": 1, "failed": 2}},
            }
        ],
        jobs=[job_body("pending", [alloc(0, "pending")])],
    )
    assert monitor(client).run() == 2
    assert "2 of 3 not placed: memory exhausted on 2 nodes" in capsys.readouterr().out


def test_run_batch_waits_for_complete_and_reports_failures(capsys):
    ok = FakeClient(
        evals=[{"status": "complete", "placed": 1}],
        jobs=[
            job_body("running", [alloc(0)], count=1, job_type="batch"),
            job_body("complete", [alloc(0, "complete")], count=1, job_type="batch"),
        ],
    )
    assert monitor(ok, "batch").run() == 0
    assert (
        "    Allocation alloc-0- (web.g[0]) on node node-123: complete\n" in capsys.readouterr().out
    )
    failed = dict(alloc(0, "failed"), tasks={"main": {"status": "failed", "exit_code": 3}})
    lines = "".join(f"line {i}\n" for i in range(1, 13)).encode()
    bad = FakeClient(
        evals=[{"status": "complete", "placed": 1}],
        jobs=[job_body("failed", [alloc(0, "failed")], count=1, job_type="batch")],
        allocs={failed["allocation_id"]: failed},
        stderr={(failed["allocation_id"], "main"): lines},
    )
    assert monitor(bad, "batch").run() == 1
    out = capsys.readouterr().out
    assert 'task "main": exit code 3' in out
    tail = out.split("stderr (last 10 lines; orch alloc logs --stderr alloc-0- main):\n")[1]
    assert tail.splitlines() == [f"      line {i}" for i in range(3, 13)]


def test_run_lists_at_most_ten_allocations(capsys):
    allocs = [alloc(i) for i in range(12)]
    client = FakeClient(
        evals=[{"status": "complete", "placed": 12}], jobs=[job_body("running", allocs, count=12)]
    )
    assert monitor(client).run() == 0
    out = capsys.readouterr().out
    assert out.count("    Allocation ") == 10
    assert "    ... and 2 more (orch job status web)" in out


def test_run_times_out_with_exit_1(capsys):
    client = FakeClient(
        evals=[{"status": "complete", "placed": 3}],
        jobs=[job_body("pending", [alloc(0, "pending")])],
    )
    assert monitor(client, timeout=1.0).run() == 1
    assert "Timed out after 1s" in capsys.readouterr().out


# ---- whole commands against the canned server ------------------------------


def test_job_status_table(canned, capsys):
    canned.add("GET", "/jobs", 200, {"jobs": [job_body(allocs=[alloc(0)])], "count": 1})
    assert entry.main(["job", "status", "--address", canned.url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ID", "Type", "Status", "Allocs", "Submitted"]
    assert lines[1].split() == ["web", "service", "running", "1/3", "-"]


def test_missing_job_exits_1_with_the_error(canned, capsys):
    canned.add("DELETE", "/jobs/nope", 404, {"error": "作业不存在"})
    assert entry.main(["job", "stop", "nope", "--address", canned.url]) == 1
    assert 'error: 作业不存在 (job "nope" not found)' in capsys.readouterr().err


@pytest.mark.parametrize(
    "method, path, argv, status, error, said",
    [
        (
            "POST",
            "/jobs/web/restart",
            ["job", "restart", "web"],
            409,
            "只能重启已停止的作业",
            "error: 只能重启已停止的作业 (only a stopped job can be restarted)",
        ),
        (
            "GET",
            "/nodes",
            ["node", "status"],
            500,
            "获取节点信息失败",
            "error: 获取节点信息失败 (could not read the nodes)",
        ),
        (
            "GET",
            "/jobs/web",
            ["job", "status", "web"],
            404,
            "作业不存在",
            'error: 作业不存在 (job "web" not found)',
        ),
        (
            "POST",
            "/jobs/web/delete",
            ["job", "delete", "web"],
            400,
            "something else",
            "error: something else",
        ),
    ],
)
def test_seed_messages_are_printed_with_english(
    canned, capsys, method, path, argv, status, error, said
):
    canned.add(method, path, status, {"error": error})
    assert entry.main([*argv, "--address", canned.url]) == 1
    assert capsys.readouterr().err.strip() == said


def test_every_seed_message_has_english():
    from orch.cli.messages import SEED_MESSAGES, in_english, with_english

    assert with_english("作业 web 已停止") == "作业 web 已停止 (job web stopped)"
    assert in_english("作业 a b 及其相关资源已删除") == "job a b and its resources deleted"
    assert in_english("作业评估已加入队列") == "job evaluation queued"
    assert in_english("作业不存在!") is None and with_english("hi") == "hi"
    assert len(SEED_MESSAGES) == 8  # every Chinese message of the seed API


def test_the_server_sends_no_chinese_message_without_english():
    """Every Chinese literal in the server's code is a seed message the CLI
    can put into English (an f-string's job id stands for {job_id})."""
    import ast
    import pathlib

    from orch.cli.messages import in_english

    han = re.compile(r"[\u4e00-\u9fff]")
    found = []
    for path in pathlib.Path(entry.__file__).parent.joinpath("server").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        parts = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
        for node in ast.walk(tree):
            if id(node) in parts:
                continue  # a piece of an f-string, read whole below
            if isinstance(node, ast.JoinedStr):
                text = "".join(
                    v.value if isinstance(v, ast.Constant) else "ID" for v in node.values
                )
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value
            else:
                continue
            if han.search(text):
                found.append(text)
    assert found and all(in_english(text) for text in found), found


def test_unreachable_server_exits_1(capsys):
    from orch.dev.launcher import free_port

    assert entry.main(["node", "status", "--address", f"http://127.0.0.1:{free_port()}"]) == 1
    assert "cannot reach orch server" in capsys.readouterr().err


VALID = {
    "task_groups": [
        {"name": "g", "count": 3, "tasks": [{"name": "t", "config": {"command": "true"}}]}
    ]
}


def test_job_run_detach_and_not_placed(canned, tmp_path, capsys):
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps(VALID))
    canned.add("GET", "/jobs/web", 200, job_body("pending", count=3))
    canned.add("POST", "/jobs", 200, {"job_id": "web", "evaluation_id": "eval-1"})
    assert entry.main(["job", "run", str(spec), "--detach", "--address", canned.url]) == 0
    assert 'Job "web" submitted; evaluation eval-1' in capsys.readouterr().out
    canned.add(
        "GET",
        "/evaluations/eval-1",
        200,
        {
            "status": "blocked",
            "placed": 0,
            "queued": 3,
            "failures": {"constraint region = eu": 2},
            "groups": {"g": {"wanted": 3, "placed": 0, "failed": 3}},
        },
    )
    assert entry.main(["job", "run", str(spec), "--address", canned.url]) == 2
    out = capsys.readouterr().out
    assert "3 of 3 not placed: 2 nodes filtered by constraint region = eu" in out
    assert "    g: 0 placed, 0 running, 0 failed of 3" in out


def test_bad_job_file_points_at_the_field_and_exits_1(tmp_path, capsys):
    spec = tmp_path / "job.json"
    bad = json.loads(json.dumps(VALID))
    bad["task_groups"][0]["tasks"].append(
        {"name": "u", "config": {"command": "true"}, "resources": {"memory": -1}}
    )
    spec.write_text(json.dumps(bad))
    # No server needed: the file is checked before any request.
    for verb in ("run", "plan"):
        assert entry.main(["job", verb, str(spec), "--address", "http://127.0.0.1:9"]) == 1
        assert capsys.readouterr().err == (
            "error: task_groups[0].tasks[1].resources.memory: must be a non-negative integer\n"
        )


def test_job_plan_and_inspect(canned, tmp_path, capsys):
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps(dict(VALID, job_id="web")))
    plan = {
        "job_id": "web",
        "exists": True,
        "version": 3,
        "current_version": 2,
        "diff": {"g": {"place": 1, "stop": 0, "keep": 2, "replace": 0, "scale": "+1"}},
        "failures": {},
    }
    canned.add("POST", "/jobs/plan", 200, plan)
    assert entry.main(["job", "plan", str(spec), "--address", canned.url]) == 0
    out = capsys.readouterr().out
    assert 'Job "web": update, version 2 -> 3' in out
    canned.add("POST", "/jobs/plan", 200, dict(plan, changed=False, version=2))
    assert entry.main(["job", "plan", str(spec), "--address", canned.url]) == 0
    assert 'Job "web": no change (version 2)' in capsys.readouterr().out
    canned.add("POST", "/jobs/plan", 200, plan)
    assert 'Group "g": 1 place, 0 replace (destructive), 0 stop, 2 keep, scale +1' in out
    assert "Nothing was changed" in out
    assert canned.requests[-1]["body"]["job_id"] == "web"
    canned.add(
        "POST",
        "/jobs/plan",
        200,
        dict(plan, failures={"g": {"wanted": 1, "failures": {"memory exhausted": 3}, "nodes": []}}),
    )
    assert entry.main(["job", "plan", str(spec), "--json", "--address", canned.url]) == 2
    assert json.loads(capsys.readouterr().out)["failures"]["g"]["wanted"] == 1
    canned.add("GET", "/jobs/web", 200, job_body(allocs=[alloc(0)]))
    assert entry.main(["job", "inspect", "web", "--address", canned.url]) == 0
    inspected = json.loads(capsys.readouterr().out)
    assert inspected["job_id"] == "web" and "allocations" not in inspected
    assert "status" not in inspected


def test_plan_text_says_what_cannot_be_placed():
    text = plan_text(
        {
            "job_id": "big",
            "exists": False,
            "version": 0,
            "diff": {"g": {"place": 1, "stop": 0, "keep": 0, "replace": 0, "scale": "+3"}},
            "failures": {
                "g": {"wanted": 2, "failures": {"constraint region = eu": 1}, "nodes": []}
            },
        },
        "big.json",
    )
    assert text.splitlines()[0] == 'Job "big": new'
    assert '==> Group "g": 2 would not be placed: 1 node filtered by constraint region = eu' in text
    assert text.splitlines()[-1] == "Nothing was changed. To submit: orch job run big.json"


def test_alloc_status_accepts_a_unique_prefix(canned, capsys):
    full = alloc(0)
    canned.add("GET", "/jobs", 200, {"jobs": [job_body(allocs=[full, alloc(1)])]})
    canned.add("GET", f"/allocations/{full['allocation_id']}", 200, dict(full, tasks={}))
    assert entry.main(["alloc", "status", "alloc-0", "--json", "--address", canned.url]) == 0
    assert json.loads(capsys.readouterr().out)["allocation_id"] == full["allocation_id"]
    assert entry.main(["alloc", "status", "alloc-", "--address", canned.url]) == 1
    assert "matches 2 allocations" in capsys.readouterr().err


def test_follow_logs_reads_until_terminal():
    chunks = [b"one\n", b"", b"two\n", b""]
    states = ["running", "complete"]
    offsets = []

    class Logs:
        def logs(self, alloc_id, task, stderr, offset):
            offsets.append(offset)
            return chunks.pop(0) if chunks else b""

        def get(self, alloc_id):
            return {"status": states.pop(0) if len(states) > 1 else states[0]}

    class C:
        allocs = Logs()

    import io

    out = io.BytesIO()
    clock = [0.0]
    follow_logs(
        C(),
        "a1",
        "main",
        False,
        out,
        now=lambda: clock[0],
        sleep=lambda s: clock.__setitem__(0, clock[0] + s),
    )
    assert out.getvalue() == b"one\ntwo\n"
    assert offsets[:3] == [0, 4, 4] and offsets[-1] == 8


def test_short_ids_tell_time_ordered_ids_apart():
    from orch.cli.format import matches_short, short

    v7 = ["01a21545-c0ca-7000-85bd-3332cf02f641", "01a21545-c0ca-7001-a1de-d77b139abf28"]
    assert [short(i) for i in v7] == ["cf02f641", "139abf28"]
    assert short("e8abc256-1111-4222-8333-444455556666") == "e8abc256"
    assert short(None) == "-" and short("web") == "web"
    assert matches_short(v7[0], "cf02f641") and matches_short(v7[0], "01a21545-c0ca-7000")
    assert not matches_short("e8abc256-1111-4222-8333-444455556666", "55556666")
    # What a table shows, or a prefix: not just any end of a time-ordered id.
    assert not matches_short(v7[0], "02f641") and not matches_short(v7[0], "3332cf02f641")


def test_a_shown_short_id_is_accepted_and_no_other_end(canned, capsys):
    v7 = ["01a21545-c0ca-7000-85bd-3332cf02f641", "01a21545-c0ca-7001-a1de-d77bcf02f641"]
    allocs = [dict(alloc(i), allocation_id=a) for i, a in enumerate(v7)]
    canned.add("GET", "/jobs", 200, {"jobs": [job_body(allocs=allocs)]})
    canned.add("GET", f"/allocations/{v7[0]}", 200, dict(allocs[0], tasks={}))
    canned.add("GET", "/jobs/web", 200, job_body(allocs=allocs[:1]))
    assert entry.main(["job", "status", "web", "--address", canned.url]) == 0
    shown = capsys.readouterr().out.split("Allocations\n")[1].splitlines()[1].split()[0]
    assert shown == "cf02f641"
    assert entry.main(["alloc", "status", shown, "--json", "--address", canned.url]) == 1
    assert "matches 2 allocations" in capsys.readouterr().err  # both end so: say so
    assert entry.main(["alloc", "status", "02f641", "--address", canned.url]) == 1
    assert 'allocation "02f641" not found' in capsys.readouterr().err
    assert (
        entry.main(["alloc", "status", "01a21545-c0ca-7000", "--json", "--address", canned.url])
        == 0
    )
    assert json.loads(capsys.readouterr().out)["allocation_id"] == v7[0]


def test_alloc_logs_without_a_task_reads_the_only_one(canned, capsysbinary):
    one = alloc(0)
    aid = one["allocation_id"]
    canned.add("GET", f"/allocations/{aid}", 200, dict(one, tasks={"main": {"status": "running"}}))
    canned.add("GET", f"/allocations/{aid}/logs/main", 200, b"hi\n", "text/plain")
    assert entry.main(["alloc", "logs", aid, "--address", canned.url]) == 0
    assert capsysbinary.readouterr().out == b"hi\n"
    # No task has reported yet: the group's spec names it.
    canned.add("GET", f"/allocations/{aid}", 200, dict(one, tasks={}, job_id="web"))
    body = job_body(allocs=[one])
    body["task_groups"][0]["tasks"] = [{"name": "main"}]
    canned.add("GET", "/jobs/web", 200, body)
    assert entry.main(["alloc", "logs", aid, "--address", canned.url]) == 0
    assert capsysbinary.readouterr().out == b"hi\n"


def test_alloc_logs_without_a_task_names_the_tasks_to_choose_from(canned, capsys):
    one = alloc(0)
    aid = one["allocation_id"]
    canned.add("GET", f"/allocations/{aid}", 200, dict(one, tasks={"web": {}, "sidecar": {}}))
    assert entry.main(["alloc", "logs", aid, "--address", canned.url]) == 1
    assert capsys.readouterr().err.strip() == (
        "error: allocation alloc-0- has tasks sidecar, web: name one "
        "(orch alloc logs alloc-0- TASK)"
    )


def test_run_system_waits_for_a_running_copy_on_every_placed_node(capsys):
    client = FakeClient(
        evals=[{"status": "complete", "placed": 3}],
        jobs=[
            job_body("running", [alloc(0), alloc(1, "pending"), alloc(2)], 1, "system"),
            job_body("running", [alloc(0), alloc(1), alloc(2)], 1, "system"),
        ],
    )
    assert monitor(client, "system").run() == 0
    assert "3 of 3 allocations running" in capsys.readouterr().out


def test_run_sysbatch_waits_for_complete(capsys):
    done = [alloc(0, "complete"), alloc(1, "complete")]
    client = FakeClient(
        evals=[{"status": "complete", "placed": 2}],
        jobs=[
            job_body("running", [alloc(0, "complete"), alloc(1)], 1, "sysbatch"),
            job_body("complete", done, 1, "sysbatch"),
        ],
    )
    assert monitor(client, "sysbatch").run() == 0
    assert 'Job "web" complete' in capsys.readouterr().out


def test_system_group_progress_counts_copies_not_count():
    job = job_body("running", [alloc(0), alloc(1, "pending"), alloc(2)], 1, "system")
    assert progress_line("g", group_progress(job)["g"], batch=False) == (
        "    g: 3 placed, 2 running, 0 failed of 3"
    )
