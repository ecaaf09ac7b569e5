"""orch.nomad.translate: Nomad's job JSON into orch job bodies; what orch lacks is refused."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from orch.errors import ValidationError
from orch.jobspec import parse_job
from orch.nomad.mapping import FIELDS
from orch.nomad.translate import datacenter_constraints, is_nomad_job, job_from_nomad

S = 1_000_000_000


def nomad_job(**extra) -> dict:
    """A Nomad API Job as the API canonicalises it (defaults filled in)."""
    job = {
        "ID": "web",
        "Name": "web",
        "Type": "service",
        "Region": "global",
        "Namespace": "default",
        "Priority": 50,
        "AllAtOnce": False,
        "Datacenters": ["*"],
        "Status": "running",
        "Version": 3,
        "CreateIndex": 10,
        "ModifyIndex": 12,
        "Update": {"Stagger": 30 * S, "MaxParallel": 1, "MinHealthyTime": 10 * S},
        "TaskGroups": [
            {
                "Name": "g",
                "Count": 2,
                "EphemeralDisk": {"SizeMB": 300, "Sticky": False, "Migrate": False},
                "Networks": [
                    {
                        "Mode": "host",
                        "DynamicPorts": [{"Label": "http", "Value": 0, "To": 8080}],
                        "ReservedPorts": [{"Label": "dns", "Value": 5353, "To": 0}],
                    }
                ],
                "Tasks": [
                    {
                        "Name": "t",
                        "Driver": "raw_exec",
                        "Config": {"command": "/bin/sleep", "args": ["60"]},
                        "Env": {"A": "${NOMAD_PORT_http}"},
                        "Resources": {"CPU": 200, "MemoryMB": 128, "DiskMB": 0},
                        "KillTimeout": 5 * S,
                        "LogConfig": {"MaxFiles": 10, "MaxFileSizeMB": 10},
                        "Templates": [],
                        "Vault": None,
                    }
                ],
            }
        ],
    }
    job.update(extra)
    return job


def test_a_canonical_job_translates_with_its_defaults_accepted():
    body = job_from_nomad(nomad_job())
    assert body == {
        "job_id": "web",
        "type": "service",
        "update": {"max_parallel": 1, "min_healthy_time": 10},
        "task_groups": [
            {
                "name": "g",
                "count": 2,
                "network": {
                    "ports": [{"label": "http", "to": 8080}, {"label": "dns", "static": 5353}]
                },
                "tasks": [
                    {
                        "name": "t",
                        "driver": "exec",
                        "config": {
                            "command": ["/bin/sleep"],
                            "args": ["60"],
                            "env": {"A": "${NOMAD_PORT_http}"},
                        },
                        "resources": {"cpu": 200, "memory": 128},
                        "kill_timeout": 5,
                    }
                ],
            }
        ],
    }
    parse_job(body)
    assert job_from_nomad({"Job": nomad_job()}) == body  # the register body's wrapper


def test_is_nomad_job_tells_the_shapes_apart():
    assert is_nomad_job({"Job": {}}) and is_nomad_job({"ID": "x", "TaskGroups": []})
    assert not is_nomad_job({"job_id": "x", "task_groups": []})


@pytest.mark.parametrize(
    "path, value, message",
    [
        (("Priority",), 70, "Job.Priority: is not supported by orch"),
        (("Region",), "eu", "Job.Region: is not supported by orch"),
        (("Name",), "other", "Job.Name: must equal Job.ID"),
        (("Spreads",), [{"Attribute": "x"}], "Job.Spreads: is not supported"),
        (("TaskGroups", 0, "EphemeralDisk"), {"SizeMB": 500}, "TaskGroups[0].EphemeralDisk"),
        (
            ("TaskGroups", 0, "RestartPolicy"),
            {"Attempts": 2, "RenderTemplates": True},
            "TaskGroups[0].RestartPolicy.RenderTemplates",
        ),
        (("TaskGroups", 0, "Volumes"), {"v": {"Type": "host"}}, "TaskGroups[0].Volumes"),
        (("TaskGroups", 0, "Tasks", 0, "Templates"), [{"EmbeddedTmpl": "x"}], "Tasks[0].Templates"),
        (("TaskGroups", 0, "Tasks", 0, "Artifacts"), [{"GetterSource": "x"}], "Tasks[0].Artifacts"),
        (("TaskGroups", 0, "Tasks", 0, "Vault"), {"Policies": ["p"]}, "Tasks[0].Vault"),
        (("TaskGroups", 0, "Tasks", 0, "Lifecycle"), {"Hook": "prestart"}, "Tasks[0].Lifecycle"),
        (("TaskGroups", 0, "Tasks", 0, "User"), "nobody", "Tasks[0].User"),
        (("TaskGroups", 0, "Tasks", 0, "LogConfig"), {"MaxFiles": 3}, "Tasks[0].LogConfig:"),
        (("TaskGroups", 0, "Tasks", 0, "Resources", "Cores"), 2, "Resources.Cores"),
        (("TaskGroups", 0, "Tasks", 0, "Driver"), "java", "driver 'java' is not supported"),
        (("TaskGroups", 0, "Tasks", 0, "Config", "privileged"), True, "Config.privileged"),
        (("TaskGroups", 0, "Networks", 0, "Mode"), "bridge", "Networks[0].Mode"),
        (("TaskGroups", 0, "KillTimeout"), -1, "TaskGroups[0].KillTimeout"),
        (("Update", "MinHealthyTime"), -5, "must be a non-negative integer of nanoseconds"),
    ],
)
def test_what_orch_lacks_is_refused_by_its_path(path, value, message):
    job = nomad_job()
    target = job
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(ValidationError) as err:
        job_from_nomad(job)
    assert message in err.value.message


@pytest.mark.parametrize(
    "target, attribute",
    [
        ("${attr.kernel.name}", "os"),
        ("${attr.cpu.arch}", "arch"),
        ("${node.unique.name}", "hostname"),
        ("${attr.unique.hostname}", "hostname"),
        ("${node.unique.id}", "node_id"),
        ("${node.datacenter}", "datacenter"),
        ("${node.region}", "region"),
        ("${attr.driver.docker}", "driver.docker"),
        ("${attr.driver.raw_exec}", "driver.exec"),
        ("${attr.cpu.numcores}", "cpu.cores"),
        ("${meta.rack}", "meta.rack"),
    ],
)
def test_constraint_targets_map_to_orch_attributes(target, attribute):
    body = job_from_nomad(
        nomad_job(Constraints=[{"LTarget": target, "RTarget": "x", "Operand": "!="}])
    )
    assert body["constraints"] == [{"attribute": attribute, "operator": "!=", "value": "x"}]


def test_operators_arch_names_and_refusals():
    def one(**c) -> dict:
        return job_from_nomad(nomad_job(Constraints=[c]))["constraints"][0]

    assert one(LTarget="${attr.cpu.arch}", RTarget="amd64")["value"] == "x86_64"
    assert one(LTarget="${attr.cpu.arch}", RTarget="arm64", Operand="==")["value"] == "aarch64"
    assert one(LTarget="${meta.k}", RTarget="^a", Operand="regexp")["operator"] == "regex"
    assert one(LTarget="${meta.k}", RTarget="3", Operand=">=")["operator"] == ">="
    for bad, message in [
        ({"LTarget": "${attr.os.name}", "RTarget": "x"}, "attribute '${attr.os.name}'"),
        ({"Operand": "distinct_hosts", "RTarget": "true"}, "operator 'distinct_hosts'"),
        ({"LTarget": "${meta.a}", "RTarget": "${meta.b}"}, "interpolation"),
        ({"LTarget": "${meta.a}", "RTarget": "x", "Weight": 50}, "Constraints[0].Weight"),
    ]:
        with pytest.raises(ValidationError, match=re.escape(message)):
            one(**bad)


@pytest.mark.parametrize(
    "datacenters, matches, misses",
    [
        (["dc1"], ["dc1"], ["dc2", "dc10"]),
        (["dc1", "eu-west"], ["dc1", "eu-west"], ["dc2", "eu-wes"]),
        (["eu-*"], ["eu-west", "eu-"], ["us-east", "xeu-west"]),
        (["dc?"], ["dc1", "dcx"], ["dc", "dc12"]),
    ],
)
def test_datacenters_are_the_nodes_datacenter(datacenters, matches, misses):
    [c] = datacenter_constraints(datacenters, "Job.Datacenters")
    assert c["attribute"] == "datacenter"
    if c["operator"] == "=":
        pattern = re.escape(c["value"])
    else:
        assert c["operator"] == "regex"
        pattern = c["value"]
    assert all(re.fullmatch(pattern, m) for m in matches)
    assert not any(re.fullmatch(pattern, m) for m in misses)


def test_any_datacenter_means_no_constraint():
    assert datacenter_constraints(["*"], "p") == datacenter_constraints([], "p") == []
    body = job_from_nomad(nomad_job(Datacenters=["dc1"]))
    assert body["constraints"] == [{"attribute": "datacenter", "operator": "=", "value": "dc1"}]


def test_task_level_fields_are_lifted_into_the_group():
    job = nomad_job()
    group = job["TaskGroups"][0]
    group["Services"] = [{"PortLabel": "http"}]
    group["Tasks"][0].update(
        Constraints=[{"LTarget": "${meta.zone}", "RTarget": "a"}],
        Services=[
            {
                "PortLabel": "dns",
                "Checks": [
                    {"Type": "script", "Command": "/bin/check", "Args": ["-q"], "Interval": S}
                ],
            },
            {"Name": "${TASK}-admin", "PortLabel": "http"},
        ],
        ShutdownDelay=2 * S,
        Meta={"owner": "me"},
    )
    body = job_from_nomad(job)
    out = body["task_groups"][0]
    assert out["constraints"] == [{"attribute": "meta.zone", "operator": "=", "value": "a"}]
    assert [s["name"] for s in out["services"]] == ["web-g", "web-g-t", "t-admin"]
    assert out["services"][1]["checks"] == [
        {"type": "script", "command": ["/bin/check", "-q"], "interval": 1}
    ]
    assert out["shutdown_delay"] == 2 and out["meta"] == {"owner": "me"}
    parsed = parse_job(body).task_groups[0]
    assert parsed.shutdown_delay == 2.0 and parsed.meta == {"owner": "me"}
    # With two tasks a task's meta would leak to its sibling: refused.
    second = copy.deepcopy(group["Tasks"][0])
    second["Name"] = "u"
    group["Tasks"].append(second)
    with pytest.raises(ValidationError, match=r"Tasks\[0\].Meta: .*several tasks"):
        job_from_nomad(job)


def test_docker_ports_must_name_group_ports():
    job = nomad_job()
    task = job["TaskGroups"][0]["Tasks"][0]
    task.update(Driver="docker", Config={"image": "busybox", "ports": ["http"]})
    body = job_from_nomad(job)
    assert body["task_groups"][0]["tasks"][0]["config"] == {
        "image": "busybox",
        "env": {"A": "${NOMAD_PORT_http}"},
    }
    task["Config"]["ports"] = ["nope"]
    with pytest.raises(ValidationError, match="Config.ports: port 'nope' is not in the group"):
        job_from_nomad(job)


def test_periodic_parameterized_and_durations():
    periodic = {"Enabled": True, "Spec": "*/5 * * * *", "SpecType": "cron", "TimeZone": "UTC"}
    body = job_from_nomad(nomad_job(Type="batch", Periodic=periodic, Update=None))
    assert body["periodic"] == {"crons": ["*/5 * * * *"], "enabled": True, "time_zone": "UTC"}
    parse_job(body)
    periodic = {"Specs": ["@daily", "@hourly"], "ProhibitOverlap": True}
    assert job_from_nomad(nomad_job(Type="batch", Periodic=periodic))["periodic"]["crons"] == [
        "@daily",
        "@hourly",
    ]
    params = {"Payload": "forbidden", "MetaRequired": ["a"], "MetaOptional": None}
    body = job_from_nomad(nomad_job(Type="batch", ParameterizedJob=params))
    assert body["parameterized"] == {"payload": "forbidden", "meta_required": ["a"]}
    job = nomad_job()
    job["TaskGroups"][0]["Tasks"][0]["KillTimeout"] = 1_500_000_000
    job["Update"] = {"HealthyDeadline": "90s"}  # a duration string, as an HCL mind writes it
    body = job_from_nomad(job)
    assert body["task_groups"][0]["tasks"][0]["kill_timeout"] == 1.5
    assert body["update"] == {"healthy_deadline": 90.0}


def test_the_table_names_every_orch_field_once_per_block():
    for block, fields in FIELDS.items():
        names = [f.nomad for f in fields]
        assert len(names) == len(set(names)), block
        assert all(f.orch and f.kind for f in fields), block


def test_restart_policies_canonical_copies_on_tasks_are_accepted():
    job = nomad_job()
    policy = {"Attempts": 2, "Interval": 1800 * S, "Delay": 15 * S, "Mode": "fail"}
    job["TaskGroups"][0]["RestartPolicy"] = policy
    job["TaskGroups"][0]["Tasks"][0]["RestartPolicy"] = dict(policy, RenderTemplates=False)
    body = job_from_nomad(job)
    expected = {"attempts": 2, "interval": 1800, "delay": 15, "mode": "fail"}
    assert body["task_groups"][0]["restart"] == expected
    assert parse_job(body).task_groups[0].restart == {
        "attempts": 2,
        "interval": 1800.0,
        "delay": 15.0,
        "mode": "fail",
    }
    job["TaskGroups"][0]["Tasks"][0]["RestartPolicy"]["Attempts"] = 9
    with pytest.raises(ValidationError, match=r"Tasks\[0\].RestartPolicy: differs"):
        job_from_nomad(job)


@pytest.mark.parametrize(
    "path, value",
    [
        (("TaskGroups", 0, "Tasks", 0, "Driver"), {"a": 1}),
        (("TaskGroups", 0, "Tasks", 0, "Config", "ports"), 5),
        (("TaskGroups", 0, "Tasks", 0, "Services"), [{"Name": 1.5}]),
        (("TaskGroups", 0, "Services"), [{"Name": True}]),
        (("TaskGroups", 0, "Networks", 0, "DynamicPorts"), [{"Label": ["x"]}]),
        (("TaskGroups", 0, "Tasks"), [None]),
        (("Constraints",), [{"LTarget": 5}]),
        (("Datacenters",), "dc1"),
        (("Meta",), ["a"]),
    ],
)
def test_values_of_the_wrong_json_type_are_validation_errors(path, value):
    job = nomad_job()
    job["TaskGroups"][0]["Tasks"][0]["Driver"] = "docker"
    job["TaskGroups"][0]["Tasks"][0]["Config"] = {"image": "busybox", "ports": ["http"]}
    target = job
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(ValidationError):
        parse_job(job_from_nomad(job))


@pytest.mark.parametrize("meta", ["x", 1, True, 1.5, [None]])
def test_a_group_meta_that_is_not_an_object_beside_a_tasks_meta_is_refused(meta):
    """The task's Meta is lifted into the group's: merged into a string, it
    was a TypeError (a 500)."""
    job = nomad_job()
    job["TaskGroups"][0]["Meta"] = meta
    job["TaskGroups"][0]["Tasks"][0]["Meta"] = {"a": "b"}
    with pytest.raises(ValidationError) as err:
        job_from_nomad(job)
    assert err.value.message == "Job.TaskGroups[0].Meta: must be a JSON object"


@pytest.mark.parametrize(
    "where",
    [
        ("TaskGroups", 0, "Tasks", 0, "KillTimeout"),
        ("TaskGroups", 0, "ShutdownDelay"),
        ("Update", "MinHealthyTime"),
    ],
)
def test_nanoseconds_past_what_a_float_holds_are_refused(where):
    """10**400 + 1 ns divided by 10**9 overflowed a float: a 500."""
    job = nomad_job()
    target = job
    for key in where[:-1]:
        target = target[key]
    target[where[-1]] = 10**400 + 1
    with pytest.raises(ValidationError, match="must be a finite number"):
        job_from_nomad(job)


INSPECTED = Path(__file__).resolve().parents[1] / "nomad_jobs" / "inspected"
# Values of every JSON type, and the edges: each must be accepted or refused
# as a ValidationError, never a TypeError from deep inside the translation.
HOSTILE = [None, 1, -1, 1.5, 10**30, True, "", "x", [], [None], ["x"], {}, {"a": None}, {"a": 1}]


def _inspected(name: str) -> dict:
    return json.loads((INSPECTED / name).read_text())


@pytest.mark.parametrize("name", sorted(p.name for p in INSPECTED.glob("*.json")))
def test_a_job_as_nomad_job_inspect_prints_it_registers(name):
    # Written in the shape Nomad 1.8's `nomad job inspect` prints: every
    # field present, unset ones as null, "", 0 or Nomad's defaults.
    body = job_from_nomad(_inspected(name))
    job = parse_job(body)
    task = body["task_groups"][0]["tasks"][0]
    assert "kill_signal" not in task  # "KillSignal": "" is unset
    assert job.task_groups[0].tasks[0].kill_timeout == 5


def test_the_inspected_service_keeps_what_it_says():
    body = job_from_nomad(_inspected("web.inspect.json"))
    group = body["task_groups"][0]
    assert group["update"]["healthy_deadline"] == 300 and group["migrate"] == {"max_parallel": 1}
    assert "healthy_deadline" not in body["update"]  # the job-level template's 0: unset
    assert group["services"][0]["checks"][0] == {
        "name": "alive",
        "type": "http",
        "path": "/",
        "interval": 10,
        "timeout": 2,
    }


def test_an_all_zero_update_is_no_update_block_but_an_empty_one_rolls():
    # MaxParallel 0 is Nomad's "no rolling updates"; `update {}` is its defaults.
    body = job_from_nomad(_inspected("report.inspect.json"))
    assert "update" not in body and body["periodic"]["crons"] == ["*/15 * * * *"]
    assert job_from_nomad(nomad_job(Update={}))["update"] == {}


def test_a_service_without_update_block_gets_nomads_default_rolling_update():
    # Nomad applies its default strategy when the block is omitted.
    assert job_from_nomad(nomad_job(Type="service", Update=None))["update"] == {}
    assert "update" not in job_from_nomad(nomad_job(Type="batch", Update=None))
    no_rolling = nomad_job(Type="service", Update={"MaxParallel": 0})
    assert "update" not in job_from_nomad(no_rolling)
    grouped = nomad_job(Type="service", Update=None)
    grouped["TaskGroups"][0]["Update"] = {"MaxParallel": 2}
    body = job_from_nomad(grouped)
    assert "update" not in body and body["task_groups"][0]["update"]["max_parallel"] == 2


def test_a_kill_signal_that_is_set_is_kept():
    job = _inspected("web.inspect.json")
    job["Job"]["TaskGroups"][0]["Tasks"][0]["KillSignal"] = "SIGINT"
    assert job_from_nomad(job)["task_groups"][0]["tasks"][0]["kill_signal"] == "SIGINT"


def test_a_reschedule_policy_other_than_the_job_types_default_is_refused():
    job = _inspected("web.inspect.json")
    job["Job"]["TaskGroups"][0]["ReschedulePolicy"]["Attempts"] = 3
    with pytest.raises(ValidationError, match=r"TaskGroups\[0\].ReschedulePolicy: is not"):
        job_from_nomad(job)
    batch = _inspected("web.inspect.json")
    batch["Job"]["Type"] = "batch"  # a service's default is not a batch job's
    with pytest.raises(ValidationError, match=r"ReschedulePolicy"):
        job_from_nomad(batch)


def _paths(value, path=()):
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _paths(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _paths(item, (*path, i))


@pytest.mark.parametrize("name", sorted(p.name for p in INSPECTED.glob("*.json")))
def test_any_value_anywhere_in_an_inspected_job_is_accepted_or_a_validation_error(name):
    base = _inspected(name)
    refused = 0
    for path in list(_paths(base))[1:]:
        for value in HOSTILE:
            job = copy.deepcopy(base)
            target = job
            for key in path[:-1]:
                target = target[key]
            target[path[-1]] = value
            try:
                parse_job(job_from_nomad(job))
            except ValidationError:
                refused += 1
    assert refused > 100  # the mutations do reach the checks
