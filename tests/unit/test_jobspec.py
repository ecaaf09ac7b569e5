import copy

import pytest

from orch.errors import ValidationError
from orch.jobspec import parse_job
from orch.structs import Constraint, JobType, Resources

BASE = {
    "task_groups": [
        {
            "name": "web",
            "count": 2,
            "tasks": [
                {
                    "name": "app",
                    "driver": "exec",
                    "config": {"command": "sleep 1"},
                    "resources": {"cpu": 200, "memory": 128},
                },
                {"name": "db", "config": {"image": "redis:7", "port": 6379}},
            ],
            "constraints": [{"attribute": "region", "operator": "=", "value": "eu"}],
        }
    ],
}


def body(**changes):
    """A deep copy of BASE with dotted-path changes applied (None deletes)."""
    data = copy.deepcopy(BASE)
    for path, value in changes.items():
        target = data
        keys = [int(k) if k.isdigit() else k for k in path.split("__")]
        for key in keys[:-1]:
            target = target[key]
        if value is None:
            del target[keys[-1]]
        else:
            target[keys[-1]] = value
    return data


def rejects(data, path, **kwargs):
    with pytest.raises(ValidationError) as info:
        parse_job(data, **kwargs)
    assert info.value.message.startswith(f"{path}: "), info.value.message
    return info.value.message


def test_valid_job_parses_with_defaults_and_inference():
    job = parse_job(BASE, "j1")
    assert job.job_id == "j1"
    assert job.type == JobType.BATCH
    group = job.task_groups[0]
    assert (group.name, group.count) == ("web", 2)
    app, db = group.tasks
    assert app.driver == "exec" and app.resources == Resources(200, 128)
    assert db.driver == "docker" and db.resources == Resources(100, 64)
    assert group.constraints == (Constraint("region", "=", "eu"),)
    assert job.constraints == ()


def test_command_implies_exec_and_explicit_driver_wins():
    job = parse_job(body(task_groups__0__tasks__0__driver=None), "j")
    assert job.task_groups[0].tasks[0].driver == "exec"
    data = body(
        task_groups__0__tasks__1__driver="docker",
        task_groups__0__tasks__1__config={"image": "x", "command": "y"},
    )
    assert parse_job(data, "j").task_groups[0].tasks[1].driver == "docker"


def test_count_defaults_to_one():
    job = parse_job(body(task_groups__0__count=None), "j")
    assert job.task_groups[0].count == 1


def test_partial_resources_default_the_missing_one():
    data = body(task_groups__0__tasks__0__resources={"memory": 10})
    assert parse_job(data, "j").task_groups[0].tasks[0].resources == Resources(100, 10)


def test_job_id_parameter_wins_then_body_then_new():
    assert parse_job(body(job_id="from-body"), "from-url").job_id == "from-url"
    assert parse_job(body(job_id="from-body")).job_id == "from-body"
    assert len(parse_job(BASE).job_id) == 36


def test_service_type_and_job_constraints():
    data = body(
        type="service", constraints=[{"attribute": "cpu.cores", "operator": ">=", "value": 4}]
    )
    job = parse_job(data, "j")
    assert job.type == JobType.SERVICE
    assert job.constraints == (Constraint("cpu.cores", ">=", "4"),)


def test_env_numbers_are_stringified_and_extra_fields_ignored():
    data = body(
        task_groups__0__tasks__0__config={
            "command": ["sleep", "1"],
            "args": ["a"],
            "env": {"N": 3, "S": "x"},
            "cwd": "/tmp",
            "whatever": 1,
        },
        status="running",
        allocations=[],
    )
    task = parse_job(data, "j").task_groups[0].tasks[0]
    assert task.config["env"] == {"N": "3", "S": "x"}
    assert task.config["whatever"] == 1


@pytest.mark.parametrize("data", [[], "x", 3, None])
def test_body_must_be_object(data):
    assert rejects(data, "body") == "body: must be a JSON object"


@pytest.mark.parametrize("groups", [None, [], {}, "web"])
def test_task_groups_must_be_non_empty_list(groups):
    rejects(body(task_groups=groups), "task_groups")


@pytest.mark.parametrize("count", [0, -1, True, 1.5, "2"])
def test_count_must_be_positive_integer(count):
    rejects(body(task_groups__0__count=count), "task_groups[0].count")


def test_count_above_max():
    msg = rejects(body(task_groups__0__count=11), "task_groups[0].count", max_count=10)
    assert "at most 10" in msg


@pytest.mark.parametrize("name", [None, "", "a/b", "..", ".", "a..b", "-x", "x" * 64, "ok\n", 7])
def test_group_name_rejected(name):
    rejects(body(task_groups__0__name=name), "task_groups[0].name")


@pytest.mark.parametrize("name", [None, "", "../etc", "a b"])
def test_task_name_rejected(name):
    rejects(body(task_groups__0__tasks__1__name=name), "task_groups[0].tasks[1].name")


@pytest.mark.parametrize("job_id", ["a/b", "..", "x" * 129, "", 5])
def test_bad_job_id_rejected(job_id):
    rejects(body(job_id=job_id), "job_id")
    if isinstance(job_id, str) and job_id:
        rejects(BASE, "job_id", job_id=job_id)


def test_long_job_id_accepted():
    assert parse_job(BASE, "x" * 128).job_id == "x" * 128


def test_duplicate_group_names():
    data = body()
    data["task_groups"].append(copy.deepcopy(data["task_groups"][0]))
    assert "duplicate" in rejects(data, "task_groups[1].name")


def test_duplicate_task_names():
    msg = rejects(body(task_groups__0__tasks__1__name="app"), "task_groups[0].tasks[1].name")
    assert "duplicate" in msg


@pytest.mark.parametrize("value", [-1, True, 1.5, "100"])
def test_resources_must_be_non_negative_integers(value):
    rejects(
        body(task_groups__0__tasks__1__resources={"memory": value}),
        "task_groups[0].tasks[1].resources.memory",
    )
    rejects(
        body(task_groups__0__tasks__0__resources={"cpu": value}),
        "task_groups[0].tasks[0].resources.cpu",
    )


def test_resources_must_be_object():
    rejects(body(task_groups__0__tasks__0__resources=[1]), "task_groups[0].tasks[0].resources")


@pytest.mark.parametrize(
    "field,value",
    [
        ("operator", "~"),
        ("operator", None),
        ("attribute", ""),
        ("attribute", None),
        ("value", None),
        ("value", [1]),
    ],
)
def test_bad_group_constraint(field, value):
    rejects(
        body(**{f"task_groups__0__constraints__0__{field}": value}),
        f"task_groups[0].constraints[0].{field}",
    )


def test_invalid_regex():
    msg = rejects(
        body(
            task_groups__0__constraints__0__operator="regex",
            task_groups__0__constraints__0__value="([",
        ),
        "task_groups[0].constraints[0].value",
    )
    assert "regex" in msg


def test_bad_job_constraint():
    rejects(
        body(constraints=[{"attribute": "os", "operator": "like", "value": "x"}]),
        "constraints[0].operator",
    )
    rejects(body(constraints="os=linux"), "constraints")
    rejects(body(constraints=["os"]), "constraints[0]")


def test_unknown_driver():
    rejects(body(task_groups__0__tasks__0__driver="qemu"), "task_groups[0].tasks[0].driver")


def test_task_without_driver_or_command_or_image():
    rejects(body(task_groups__0__tasks__1__config={"port": 80}), "task_groups[0].tasks[1].driver")
    rejects(body(task_groups__0__tasks__1__config=None), "task_groups[0].tasks[1].driver")


def test_driver_requirements():
    rejects(
        body(task_groups__0__tasks__0__config={"image": "x"}),
        "task_groups[0].tasks[0].config.command",
    )
    rejects(
        body(
            task_groups__0__tasks__1__driver="docker",
            task_groups__0__tasks__1__config={"command": "x"},
        ),
        "task_groups[0].tasks[1].config.image",
    )


def test_config_must_be_object():
    rejects(body(task_groups__0__tasks__0__config="sleep 1"), "task_groups[0].tasks[0].config")


@pytest.mark.parametrize("command", ["", "  ", [], [""], [1], {"a": 1}, 5, ["a", None]])
def test_bad_command(command):
    rejects(
        body(task_groups__0__tasks__0__config={"command": command}),
        "task_groups[0].tasks[0].config.command",
    )


@pytest.mark.parametrize("args", ["a b", [1], [None], {"a": "b"}])
def test_bad_args(args):
    rejects(
        body(task_groups__0__tasks__0__config={"command": "x", "args": args}),
        "task_groups[0].tasks[0].config.args",
    )


@pytest.mark.parametrize(
    "env,path",
    [
        (["A=1"], "env"),
        ({"A": None}, "env.A"),
        ({"A": True}, "env.A"),
        ({"A": [1]}, "env.A"),
        ({"": "x"}, "env"),
        ({"A=B": "x"}, "env"),
    ],
)
def test_bad_env(env, path):
    rejects(
        body(task_groups__0__tasks__0__config={"command": "x", "env": env}),
        f"task_groups[0].tasks[0].config.{path}",
    )


@pytest.mark.parametrize("key", ["port", "container_port"])
@pytest.mark.parametrize("port", [0, 65536, -1, "80", True, 80.0])
def test_bad_ports(key, port):
    rejects(
        body(**{f"task_groups__0__tasks__1__config__{key}": port}),
        f"task_groups[0].tasks[1].config.{key}",
    )


@pytest.mark.parametrize("job_type", ["periodic", 1, ""])
def test_unknown_type(job_type):
    rejects(body(type=job_type), "type")


def test_tasks_must_be_non_empty_list():
    rejects(body(task_groups__0__tasks=[]), "task_groups[0].tasks")
    rejects(body(task_groups__0__tasks=None), "task_groups[0].tasks")
    rejects(body(task_groups__0__tasks=["app"]), "task_groups[0].tasks[0]")
    rejects(body(task_groups__0=["web"]), "task_groups[0]")


@pytest.mark.parametrize(
    "raw, seconds",
    [("30s", 30.0), ("500ms", 0.5), ("1m", 60.0), ("1.5h", 5400.0), (10, 10.0), (2.5, 2.5)],
)
def test_disconnect_stop_after_durations(raw, seconds):
    from orch.codec import job_from

    job = parse_job(body(task_groups__0__disconnect={"stop_after": raw}))
    group = job.task_groups[0]
    assert group.stop_after == seconds
    assert group.to_dict()["disconnect"] == {"stop_after": seconds}
    assert job_from(job.to_dict()).task_groups[0].stop_after == seconds
    # A change of stop_after replaces allocations (agents learn it from them).
    assert group.spec_hash() != parse_job(body()).task_groups[0].spec_hash()


def test_no_disconnect_leaves_the_group_as_it_was():
    group = parse_job(body()).task_groups[0]
    assert group.stop_after is None and "disconnect" not in group.to_dict()


@pytest.mark.parametrize(
    "raw, message",
    [
        ("soon", "task_groups[0].disconnect.stop_after: must be a number of seconds"),
        ("10", "task_groups[0].disconnect.stop_after: must be a number of seconds"),
        ("-1s", "task_groups[0].disconnect.stop_after: must be a number of seconds"),
        (True, "task_groups[0].disconnect.stop_after: must be a number of seconds"),
        (0, "task_groups[0].disconnect.stop_after: must be more than 0"),
        ("9000h", "task_groups[0].disconnect.stop_after: must be more than 0"),
    ],
)
def test_bad_disconnect_stop_after_names_the_field(raw, message):
    with pytest.raises(ValidationError) as err:
        parse_job(body(task_groups__0__disconnect={"stop_after": raw}))
    assert err.value.message.startswith(message)


def test_disconnect_must_be_an_object_of_known_fields():
    with pytest.raises(ValidationError, match=r"task_groups\[0\]\.disconnect: must be"):
        parse_job(body(task_groups__0__disconnect="30s"))
    with pytest.raises(ValidationError, match=r"task_groups\[0\]\.disconnect\.after: unknown"):
        parse_job(body(task_groups__0__disconnect={"after": "30s"}))


def test_spec_and_class_hashes_stay_those_already_stored():
    # Allocations in a state store carry the hash they were placed for, and
    # nodes their class: an encoder change that moved either would replace
    # every running copy on the next evaluation. (Values from main at fb5fc93.)
    from orch.structs import Node

    job = parse_job(
        {
            "job_id": "j",
            "type": "service",
            "task_groups": [
                {
                    "name": "web",
                    "count": 2,
                    "meta": {"k": "v"},
                    "tasks": [
                        {
                            "name": "t",
                            "driver": "exec",
                            "config": {"command": "/bin/echo", "args": ["é", "x"]},
                            "resources": {"cpu": 10, "memory": 8},
                            "env": {"B": "1", "A": "2"},
                        }
                    ],
                    "constraints": [
                        {"attribute": "${attr.kernel.name}", "operator": "=", "value": "linux"}
                    ],
                }
            ],
        }
    )
    assert job.task_groups[0].spec_hash() == "9700c83017c20249"
    node = Node(
        "n1",
        attributes={"kernel.name": "linux", "hostname": "h", "unique.x": "1", "cpu.arch": "amd64"},
        meta={"rack": "r1"},
    )
    assert node.computed_class() == "7012f8500d2dcc98"
