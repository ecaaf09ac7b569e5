"""The CLI against a real `orch dev` cluster: output and exit codes."""
from __future__ import annotations

import json
import subprocess
import sys

from helpers import ROOT, clean_env, nodes

EXAMPLES = ROOT / "examples"


def orch(pyz, url, *args, timeout=90):
    return subprocess.run([sys.executable, str(pyz), *args, "--address", url],
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, env=clean_env())


def test_job_run_exit_codes_and_reads(pyz, dev_cluster, tmp_path):
    url = dev_cluster.url
    assert sum(n["healthy"] for n in nodes(url)) == 3

    ok = orch(pyz, url, "job", "run", str(EXAMPLES / "hello-batch.json"))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert '==> Job "hello-batch" complete' in ok.stdout

    failed = orch(pyz, url, "job", "run", str(EXAMPLES / "failing.json"))
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert 'task "fail": exit code 3' in failed.stdout

    huge = tmp_path / "huge.json"
    huge.write_text(json.dumps({"job_id": "huge", "task_groups": [{
        "name": "g", "count": 2, "tasks": [{"name": "t", "config": {"command": "true"},
                                            "resources": {"cpu": 100, "memory": 10**8}}]}]}))
    blocked = orch(pyz, url, "job", "run", str(huge))
    assert blocked.returncode == 2, blocked.stdout + blocked.stderr
    assert "2 of 2 not placed: memory exhausted on 3 nodes" in blocked.stdout

    service = orch(pyz, url, "job", "run", str(EXAMPLES / "sleep-service.json"))
    assert service.returncode == 0, service.stdout + service.stderr
    assert "3 of 3 allocations running" in service.stdout

    table = orch(pyz, url, "job", "status").stdout.splitlines()
    assert table[0].split() == ["ID", "Type", "Status", "Allocs"]
    assert ["sleep-service", "service", "running", "3/3"] in [r.split() for r in table]
    assert len(orch(pyz, url, "node", "status").stdout.splitlines()) == 4

    detail = orch(pyz, url, "job", "status", "hello-batch").stdout.splitlines()
    short = detail[detail.index("Allocations") + 2].split()[0]
    logs = orch(pyz, url, "alloc", "logs", short, "echo")
    assert logs.returncode == 0 and logs.stdout.startswith("hello from orch"), logs.stderr
    status = orch(pyz, url, "alloc", "status", short)
    assert 'Task "echo" is "complete"' in status.stdout, status.stderr
    errlog = orch(pyz, url, "alloc", "logs", "-f", "--stderr",
                  json.loads(orch(pyz, url, "job", "status", "failing", "--json").stdout)
                  ["allocations"][0]["allocation_id"], "fail")
    assert (errlog.returncode, errlog.stdout) == (0, "about to fail\n")

    assert orch(pyz, url, "job", "stop", "sleep-service").returncode == 0
    missing = orch(pyz, url, "job", "status", "nope")
    assert missing.returncode == 1 and 'job "nope" not found' in missing.stderr


def test_server_and_agent_fixtures(server, agent_factory):
    eu = agent_factory(region="eu", meta={"rack": "r1"})
    plain = agent_factory()
    by_id = {n["node_id"]: n for n in nodes(server.url)}
    assert by_id[eu.node_id]["region"] == "eu"
    assert by_id[eu.node_id]["meta"] == {"rack": "r1"}
    assert by_id[plain.node_id]["endpoint"] == plain.url != eu.url
    assert plain.proc.stop() == 0
