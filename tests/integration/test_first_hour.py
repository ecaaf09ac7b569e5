"""A new user's first hour, on the real zipapp: the mistakes and the answers
a newcomer meets first."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

from orch.cli.format import short

from harness import clean_env, free_port, wait_until

CLI_TIMEOUT = 90


def orch(pyz, url, *args):
    return subprocess.run(
        [sys.executable, str(pyz), *args, "--address", url],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
        stdin=subprocess.DEVNULL,
        env=clean_env(),
    )


def test_dev_on_a_taken_port_fails_at_once_naming_it(pyz, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        dev = subprocess.run(
            [sys.executable, str(pyz), "dev", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
            env=clean_env(),
            cwd=tmp_path,
        )
    assert dev.returncode == 1, dev.stdout + dev.stderr
    assert dev.stderr.strip() == (
        f"orch dev: cannot listen on 127.0.0.1:{port}: address "
        "already in use; pick another --port (or 0 for a free one)"
    )
    assert "agent" not in dev.stdout and "server" not in dev.stdout  # nothing started
    print(f"failed after {time.monotonic() - started:.2f}s")


def test_cli_pointed_at_a_web_server_says_which_url_answered_what(pyz, tmp_path):
    port = free_port()
    web = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def answering():
            with socket.socket() as probe:
                return probe.connect_ex(("127.0.0.1", port)) == 0

        wait_until(answering, 20, what="python -m http.server")
        result = orch(pyz, url, "job", "status")
        assert result.returncode == 1
        assert result.stderr.strip() == (
            f"error: {url}/jobs: answered 404 text/html, not an orch server?"
        )
        (tmp_path / "nodes").write_text("a file, not JSON")
        result = orch(pyz, url, "node", "status")
        assert result.stderr.strip() == (
            f"error: {url}/nodes: answered 200 application/octet-stream, not an orch server?"
        )
    finally:
        web.kill()
        web.wait()


def write_job(path, **job):
    path.write_text(json.dumps(job))
    return str(path)


def test_job_run_names_its_allocations_and_shows_a_failures_stderr(pyz, dev_cluster, tmp_path):
    url = dev_cluster.url
    hello = write_job(
        tmp_path / "hello.json",
        job_id="hello",
        task_groups=[
            {
                "name": "g",
                "count": 2,
                "tasks": [{"name": "say", "config": {"command": "echo hello from $ORCH_ALLOC_ID"}}],
            }
        ],
    )
    ran = orch(pyz, url, "job", "run", hello)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    job = json.loads(orch(pyz, url, "job", "status", "hello", "--json").stdout)
    for alloc in job["allocations"]:
        shown = short(alloc["allocation_id"])
        assert (
            f"    Allocation {shown} ({alloc['name']}) on node "
            f"{short(alloc['node_id'])}: complete" in ran.stdout
        )
        # One task: no task name needed; the id as printed is accepted.
        logs = orch(pyz, url, "alloc", "logs", shown)
        assert logs.returncode == 0, logs.stderr
        assert logs.stdout.startswith("hello from ")

    noisy = write_job(
        tmp_path / "noisy.json",
        job_id="noisy",
        task_groups=[
            {
                "name": "g",
                "tasks": [
                    {
                        "name": "boom",
                        "config": {
                            "command": "for i in $(seq 1 15); do echo err $i >&2; done; exit 4"
                        },
                    }
                ],
            }
        ],
    )
    failed = orch(pyz, url, "job", "run", noisy)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    alloc_id = json.loads(orch(pyz, url, "job", "status", "noisy", "--json").stdout)["allocations"][
        0
    ]["allocation_id"]
    head = f"    stderr (last 10 lines; orch alloc logs --stderr {short(alloc_id)} boom):\n"
    assert 'task "boom": exit code 4' in failed.stdout
    assert head in failed.stdout, failed.stdout
    tail = failed.stdout.split(head)[1].splitlines()[:10]
    assert tail == [f"      err {i}" for i in range(6, 16)]


def test_seed_messages_come_with_english(pyz, dev_cluster, tmp_path):
    url = dev_cluster.url
    job = write_job(
        tmp_path / "svc.json",
        job_id="svc",
        type="service",
        task_groups=[{"name": "g", "tasks": [{"name": "t", "config": {"command": "sleep 60"}}]}],
    )
    assert orch(pyz, url, "job", "run", job).returncode == 0
    again = orch(pyz, url, "job", "restart", "svc")
    assert again.returncode == 1
    assert (
        again.stderr.strip() == "error: 只能重启已停止的作业 (only a stopped job can be restarted)"
    )
    missing = orch(pyz, url, "job", "stop", "nope")
    assert missing.stderr.strip() == 'error: 作业不存在 (job "nope" not found)'
    assert orch(pyz, url, "job", "stop", "svc").returncode == 0
