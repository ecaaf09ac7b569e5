"""Whole job commands against the canned server; seed messages in English."""

import json
import re

import pytest
from cli_helpers import alloc, job_body

from orch import __main__ as entry
from orch.cli.job import plan_text

pytestmark = pytest.mark.usefixtures("clean_env")


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


def test_a_404_that_is_not_the_job_missing_keeps_its_words(canned, capsys):
    """`job revert svc1 5` said the job was not found: it is there, its version is not."""
    canned.add("POST", "/jobs/svc1/revert", 404, {"error": "job svc1 has no version 5"})
    assert entry.main(["job", "revert", "svc1", "5", "--address", canned.url]) == 1
    assert capsys.readouterr().err == "error: job svc1 has no version 5\n"


@pytest.mark.parametrize(
    "content",
    [b'\xff\xfe{"task_groups": []}', "caf\u00e9".encode("latin-1"), bytes(range(256))],
    ids=["utf-16-bom", "latin-1", "binary"],
)
@pytest.mark.parametrize("name", ["job.json", "job.nomad", "job"])
def test_a_job_file_that_is_not_utf8_is_one_line(tmp_path, capsys, content, name):
    path = tmp_path / name
    path.write_bytes(content)
    assert entry.main(["job", "plan", str(path), "--address", "http://127.0.0.1:9"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: not UTF-8 text (byte 0x") and len(err.splitlines()) == 1


def test_a_job_file_nested_too_deeply_is_one_line(tmp_path, capsys):
    path = tmp_path / "deep.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    assert entry.main(["job", "run", str(path), "--address", "http://127.0.0.1:9"]) == 1
    assert capsys.readouterr().err == f"error: {path}: invalid JSON: nested too deeply\n"


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
