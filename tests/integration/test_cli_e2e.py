"""The CLI against a real `orch dev` cluster: output and exit codes."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from orch.cli.format import short

from harness import ROOT, clean_env, http_get, nodes, wait_until

EXAMPLES = ROOT / "examples"


def orch(pyz, url, *args, timeout=90):
    return subprocess.run(
        [sys.executable, str(pyz), *args, "--address", url],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env=clean_env(),
    )


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
    huge.write_text(
        json.dumps(
            {
                "job_id": "huge",
                "task_groups": [
                    {
                        "name": "g",
                        "count": 2,
                        "tasks": [
                            {
                                "name": "t",
                                "config": {"command": "true"},
                                "resources": {"cpu": 100, "memory": 10**8},
                            }
                        ],
                    }
                ],
            }
        )
    )
    blocked = orch(pyz, url, "job", "run", str(huge))
    assert blocked.returncode == 2, blocked.stdout + blocked.stderr
    assert "2 of 2 not placed: memory exhausted on 3 nodes" in blocked.stdout

    service = orch(pyz, url, "job", "run", str(EXAMPLES / "sleep-service.json"))
    assert service.returncode == 0, service.stdout + service.stderr
    assert "3 of 3 allocations running" in service.stdout

    table = orch(pyz, url, "job", "status").stdout.splitlines()
    assert table[0].split() == ["ID", "Type", "Status", "Allocs", "Submitted"]
    assert ["sleep-service", "service", "running", "3/3"] in [r.split()[:4] for r in table]
    assert len(orch(pyz, url, "node", "status").stdout.splitlines()) == 4

    detail = orch(pyz, url, "job", "status", "hello-batch").stdout.splitlines()
    short = detail[detail.index("Allocations") + 2].split()[0]
    logs = orch(pyz, url, "alloc", "logs", short, "echo")
    assert logs.returncode == 0 and logs.stdout.startswith("hello from orch"), logs.stderr
    status = orch(pyz, url, "alloc", "status", short)
    assert 'Task "echo" is "complete"' in status.stdout, status.stderr
    errlog = orch(
        pyz,
        url,
        "alloc",
        "logs",
        "-f",
        "--stderr",
        json.loads(orch(pyz, url, "job", "status", "failing", "--json").stdout)["allocations"][0][
            "allocation_id"
        ],
        "fail",
    )
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


def write_job(path, **job):
    path.write_text(json.dumps(job))
    return str(path)


def state_counts(url):
    health = http_get(url + "/health").json()
    return {k: health[k] for k in ("jobs", "allocations", "evaluations") if k in health}


def test_plan_json_reads_and_placement_wording(pyz, dev_cluster, tmp_path):
    url = dev_cluster.url
    service = str(EXAMPLES / "sleep-service.json")
    new = orch(pyz, url, "job", "plan", service, "--json")
    assert new.returncode == 0, new.stderr
    assert json.loads(new.stdout)["diff"]["sleepers"]["place"] == 3
    assert orch(pyz, url, "job", "status", "sleep-service").returncode == 1  # not submitted

    assert orch(pyz, url, "job", "run", service).returncode == 0
    before = (orch(pyz, url, "job", "inspect", "sleep-service").stdout, state_counts(url))
    spec = json.loads((EXAMPLES / "sleep-service.json").read_text())
    spec["task_groups"][0]["count"] = 5
    bigger = write_job(tmp_path / "bigger.json", **spec)
    text = orch(pyz, url, "job", "plan", bigger)
    assert text.returncode == 0, text.stdout + text.stderr
    assert (
        'Group "sleepers": 2 place, 0 replace (destructive), 0 stop, 3 keep, scale +2'
        in text.stdout
    )
    plan = json.loads(orch(pyz, url, "job", "plan", bigger, "--json").stdout)
    assert (plan["version"], plan["current_version"]) == (1, 0)
    assert plan["diff"]["sleepers"] == {
        "place": 2,
        "stop": 0,
        "keep": 3,
        "replace": 0,
        "scale": "+2",
    }
    # The dry run changed nothing: same stored job (and version), same counts.
    assert (orch(pyz, url, "job", "inspect", "sleep-service").stdout, state_counts(url)) == before
    assert json.loads(before[0])["version"] == 0
    # Submitted again unchanged: nothing changes (still version 0, as Nomad),
    # and `job run` follows the job's latest evaluation to its running allocations.
    again = orch(pyz, url, "job", "run", service, "--timeout", "20")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "3 of 3 allocations running" in again.stdout
    assert json.loads(orch(pyz, url, "job", "inspect", "sleep-service").stdout)["version"] == 0
    same = orch(pyz, url, "job", "plan", service)
    assert 'Job "sleep-service": no change (version 0)' in same.stdout, same.stdout

    # --json of every read command parses.
    job = json.loads(orch(pyz, url, "job", "status", "sleep-service", "--json").stdout)
    assert len(job["allocations"]) == 3
    listed = json.loads(orch(pyz, url, "job", "status", "--json").stdout)
    assert "sleep-service" in [j["job_id"] for j in listed]
    node_list = json.loads(orch(pyz, url, "node", "status", "--json").stdout)
    assert len(node_list) == 3
    first = job["allocations"][0]["allocation_id"]
    assert (
        json.loads(orch(pyz, url, "alloc", "status", first, "--json").stdout)["allocation_id"]
        == first
    )

    # Per-node detail: more memory than node 0 has, and the others filtered.
    node0 = next(n for n in node_list if n["meta"].get("dev_index") == "0")
    too_big = write_job(
        tmp_path / "too-big.json",
        job_id="too-big",
        type="service",
        constraints=[{"attribute": "meta.dev_index", "operator": "=", "value": "0"}],
        task_groups=[
            {
                "name": "g",
                "count": 2,
                "tasks": [
                    {
                        "name": "t",
                        "config": {"command": "sleep 60"},
                        "resources": {"memory": node0["resources"]["memory"] + 1},
                    }
                ],
            }
        ],
    )
    wording = re.compile(
        r"2 of 2 not placed: memory exhausted on node (\w{8}) "
        r"\(needs (\d+) MB, (\d+) free\); "
        r"2 nodes filtered by constraint meta\.dev_index = 0"
    )
    planned = orch(pyz, url, "job", "plan", too_big)
    assert planned.returncode == 2, planned.stdout + planned.stderr
    blocked = orch(pyz, url, "job", "run", too_big)
    assert blocked.returncode == 2, blocked.stdout + blocked.stderr
    found = wording.search(blocked.stdout)
    assert found, blocked.stdout
    assert found.group(1) == short(node0["node_id"])
    assert int(found.group(2)) == node0["resources"]["memory"] + 1


def test_bad_job_file_and_logs_follow(pyz, dev_cluster, tmp_path):
    url = dev_cluster.url
    bad = write_job(
        tmp_path / "bad.json",
        task_groups=[
            {
                "name": "g",
                "tasks": [
                    {"name": "a", "config": {"command": "true"}},
                    {"name": "b", "config": {"command": "true"}, "resources": {"memory": "lots"}},
                ],
            }
        ],
    )
    result = orch(pyz, url, "job", "run", bad)
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        == "error: task_groups[0].tasks[1].resources.memory: must be a non-negative integer"
    )

    # The task prints line 2 only once the test, having read line 1, says go.
    go = tmp_path / "go"
    slow = write_job(
        tmp_path / "slow.json",
        job_id="slow",
        task_groups=[
            {
                "name": "g",
                "tasks": [
                    {
                        "name": "t",
                        "config": {
                            "command": f"echo line 1; i=0; while [ ! -e {go} ] && [ $i -lt 600 ]; "
                            f"do sleep 0.1; i=$((i+1)); done; echo line 2; echo line 3"
                        },
                    }
                ],
            }
        ],
    )
    detached = orch(pyz, url, "job", "run", slow, "--detach")
    assert detached.returncode == 0 and 'Job "slow" submitted' in detached.stdout

    def allocated():
        allocs = json.loads(orch(pyz, url, "job", "status", "slow", "--json").stdout)["allocations"]
        return allocs[0]["allocation_id"] if allocs else None

    alloc_id = wait_until(allocated, 20, what="an allocation of slow")
    follow = subprocess.Popen(
        [sys.executable, str(pyz), "alloc", "logs", "-f", short(alloc_id), "t", "--address", url],
        stdout=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
        env=clean_env(),
    )
    try:
        assert follow.stdout.readline() == "line 1\n"
        go.touch()
        rest = follow.stdout.read()
        assert follow.wait(30) == 0
    finally:
        follow.kill()
        follow.wait()
    assert rest == "line 2\nline 3\n"
