"""`orch job history` / `orch job revert` and the UI event stream on the real zipapp."""

from __future__ import annotations

import json

import pytest
import requests

from harness import orch_cli

pytestmark = pytest.mark.integration

TOKEN = "hist-token"


def orch(pyz, server, *args, timeout=60):
    return orch_cli(pyz, server, *args, timeout=timeout, env={"ORCH_TOKEN": TOKEN})


def write_job(tmp_path, count: int, command: str = "true"):
    path = tmp_path / f"web-{count}-{command}.json"
    task = {"name": "t", "driver": "exec", "config": {"command": command}}
    path.write_text(
        json.dumps(
            {"job_id": "web", "task_groups": [{"name": "g", "count": count, "tasks": [task]}]}
        )
    )
    return path


def test_history_and_revert_through_the_cli(pyz, server_factory, tmp_path):
    server = server_factory(token=TOKEN, extra=["--job-versions", "3"])
    for count in (1, 2, 3, 4):
        run = orch(pyz, server, "job", "run", "--detach", str(write_job(tmp_path, count)))
        assert run.returncode == 0, run.stdout + run.stderr

    history = orch(pyz, server, "job", "history", "web")
    assert history.returncode == 0, history.stderr
    assert "Version     = 3" in history.stdout
    assert "task_groups[0].count: 3 => 4" in history.stdout
    assert "Version     = 0" not in history.stdout  # only the last 3 are kept

    as_json = json.loads(orch(pyz, server, "job", "history", "web", "--json").stdout)
    assert [v["version"] for v in as_json["versions"]] == [3, 2, 1]

    revert = orch(pyz, server, "job", "revert", "web", "1")
    assert revert.returncode == 0, revert.stdout + revert.stderr
    assert "reverted to version 1: now version 4" in revert.stdout
    job = requests.get(
        f"{server.url}/jobs/web", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10
    ).json()
    assert (job["version"], job["task_groups"][0]["count"]) == (4, 2)

    missing = orch(pyz, server, "job", "revert", "web", "0")  # trimmed away
    assert missing.returncode != 0
    assert "no version 0" in missing.stderr
    unknown = orch(pyz, server, "job", "history", "nope")
    assert unknown.returncode != 0
    assert 'job "nope" not found' in unknown.stderr

    # The history is on disk: a restarted server shows it unchanged.
    server.restart()
    again = json.loads(orch(pyz, server, "job", "history", "web", "--json").stdout)
    assert [v["version"] for v in again["versions"]] == [4, 3, 2]


def test_event_stream_of_the_real_server(pyz, server_factory, tmp_path):
    server = server_factory(token=TOKEN)
    headers = {"Authorization": f"Bearer {TOKEN}"}
    assert requests.get(f"{server.url}/ui/events", timeout=10).status_code == 401
    with requests.get(f"{server.url}/ui/events", headers=headers, stream=True, timeout=10) as resp:
        assert resp.status_code == 200
        lines = resp.iter_lines(decode_unicode=True)
        assert next(lines) == "event: hello"
        assert next(lines).startswith('data: {"index":')
        assert next(lines) == ""
        run = orch(pyz, server, "job", "run", "--detach", str(write_job(tmp_path, 1)))
        assert run.returncode == 0, run.stderr
        assert next(lines) == "event: change"
