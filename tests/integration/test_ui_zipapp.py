"""The zipapp serves the web UI: shells, static files, guarded fragments, Origin check."""

import pytest
import requests

pytestmark = pytest.mark.integration

TOKEN = "ui-token"


def test_the_zipapp_serves_the_ui_under_its_prefix(server_factory):
    server = server_factory(token=TOKEN, extra=["--ui-prefix", "/orch"])
    base = f"{server.url}/orch/ui"
    shell = requests.get(f"{base}/jobs", timeout=5)
    assert shell.status_code == 200 and shell.headers["Content-Type"].startswith("text/html")
    assert 'href="/orch/ui/static/app.css"' in shell.text
    assert 'src="/orch/ui/static/app.js"' in shell.text
    for name, kind in (("app.css", "text/css"), ("app.js", "javascript")):
        asset = requests.get(f"{base}/static/{name}", timeout=5)
        assert asset.status_code == 200 and kind in asset.headers["Content-Type"], name
        assert len(asset.content) > 1000, name
    # The proxy may strip the prefix: the same page answers without it.
    assert requests.get(f"{server.url}/ui/nodes", timeout=5).status_code == 200

    denied = requests.get(f"{base}/jobs?fragment=1", timeout=5)
    assert denied.status_code == 401 and denied.json()["error"]
    auth = {"Authorization": f"Bearer {TOKEN}"}
    fragment = requests.get(f"{base}/jobs?fragment=1", headers=auth, timeout=5)
    assert fragment.status_code == 200 and 'id="jobs-table"' in fragment.text


def test_writes_from_a_foreign_origin_are_refused(server):
    job = {
        "job_id": "web",
        "type": "batch",
        "task_groups": [
            {
                "name": "g",
                "count": 1,
                "tasks": [{"name": "t", "config": {"command": "true"}, "resources": {}}],
            }
        ],
    }
    foreign = requests.post(
        f"{server.url}/jobs", json=job, headers={"Origin": "http://evil.example"}, timeout=5
    )
    assert foreign.status_code == 403 and "cross-origin" in foreign.json()["error"]
    assert requests.get(f"{server.url}/jobs", timeout=5).json()["count"] == 0
    same = requests.post(f"{server.url}/jobs", json=job, headers={"Origin": server.url}, timeout=5)
    assert same.status_code == 200, same.text
