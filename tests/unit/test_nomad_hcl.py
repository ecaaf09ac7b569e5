"""orch.nomad.hcl: Nomad HCL job files into Nomad's Job JSON; refusals name their line."""

from __future__ import annotations

import json
import textwrap
from argparse import Namespace
from pathlib import Path

import pytest

from orch.cli.commands import load_job_file
from orch.cli.job import job_convert
from orch.errors import ValidationError
from orch.jobspec import parse_job
from orch.nomad.hcl import job_from_hcl, parse_hcl

S = 1_000_000_000
CORPUS = Path(__file__).resolve().parents[1] / "nomad_jobs"

FULL = """\
job "web" {
  datacenters = ["dc1", "dc2"]
  type        = "service"
  region      = "global"

  meta {
    owner = "core"
  }

  constraint {
    attribute = "${attr.kernel.name}"
    value     = "linux"
  }

  constraint {
    attribute = "${meta.rack}"
    operator  = "regexp"
    value     = "r[12]"
  }

  update {
    max_parallel      = 2
    min_healthy_time  = "5s"
    healthy_deadline  = "2m"
    progress_deadline = "10m"
    auto_revert       = true
    canary            = 1
  }

  group "api" {
    count          = 3
    shutdown_delay = "1500ms"

    network {
      port "http" {
        to = 8080
      }
      port "admin" {
        static = 9901
      }
    }

    service {
      name = "api"
      port = "http"
      tags = ["v1"]

      check {
        type     = "http"
        path     = "/health"
        interval = "10s"
        timeout  = "2s"

        check_restart {
          limit = 3
          grace = "30s"
        }
      }
    }

    migrate {
      max_parallel = 2
    }

    update {
      canary = 2
    }

    meta {
      tier = "front"
    }

    task "server" {
      driver       = "exec"
      kill_timeout = "20s"
      kill_signal  = "SIGINT"

      config {
        command = "/usr/bin/api"
        args    = ["--port", "${NOMAD_PORT_http}"]
      }

      env = {
        MODE = "prod"
      }

      resources {
        cpu    = 500
        memory = 256
      }
    }
  }
}
"""


def test_the_blocks_become_nomads_job_json():
    job = parse_hcl(FULL)
    assert {k: job[k] for k in ("ID", "Name", "Type", "Region", "Datacenters", "Meta")} == {
        "ID": "web",
        "Name": "web",
        "Type": "service",
        "Region": "global",
        "Datacenters": ["dc1", "dc2"],
        "Meta": {"owner": "core"},
    }
    assert job["Constraints"] == [
        {"LTarget": "${attr.kernel.name}", "RTarget": "linux"},
        {"LTarget": "${meta.rack}", "Operand": "regexp", "RTarget": "r[12]"},
    ]
    assert job["Update"] == {
        "MaxParallel": 2,
        "MinHealthyTime": 5 * S,
        "HealthyDeadline": 120 * S,
        "ProgressDeadline": 600 * S,
        "AutoRevert": True,
        "Canary": 1,
    }
    [group] = job["TaskGroups"]
    assert group["Name"] == "api" and group["Count"] == 3
    assert group["ShutdownDelay"] == 1_500_000_000
    assert group["Networks"] == [
        {
            "DynamicPorts": [{"Label": "http", "To": 8080}],
            "ReservedPorts": [{"Label": "admin", "Value": 9901}],
        }
    ]
    assert group["Services"] == [
        {
            "Name": "api",
            "PortLabel": "http",
            "Tags": ["v1"],
            "Checks": [
                {
                    "Type": "http",
                    "Path": "/health",
                    "Interval": 10 * S,
                    "Timeout": 2 * S,
                    "CheckRestart": {"Limit": 3, "Grace": 30 * S},
                }
            ],
        }
    ]
    assert group["Migrate"] == {"MaxParallel": 2} and group["Update"] == {"Canary": 2}
    assert group["Meta"] == {"tier": "front"}
    assert group["Tasks"] == [
        {
            "Name": "server",
            "Driver": "exec",
            "KillTimeout": 20 * S,
            "KillSignal": "SIGINT",
            "Config": {"command": "/usr/bin/api", "args": ["--port", "${NOMAD_PORT_http}"]},
            "Env": {"MODE": "prod"},
            "Resources": {"CPU": 500, "MemoryMB": 256},
        }
    ]


def test_the_full_file_translates_into_a_valid_orch_job():
    body = job_from_hcl(FULL)
    job = parse_job(body)
    assert job.job_id == "web" and job.type.value == "service"
    group = job.task_groups[0]
    assert group.count == 3 and group.shutdown_delay == 1.5 and group.migrate_max_parallel == 2
    assert group.update.canary == 2 and group.update.max_parallel == 2  # group over job
    assert [(p.label, p.static, p.to) for p in group.ports] == [
        ("http", None, 8080),
        ("admin", 9901, None),
    ]
    assert group.services[0]["checks"][0]["check_restart"] == {"limit": 3, "grace": 30.0}
    task = group.tasks[0]
    assert task.config == {
        "command": ["/usr/bin/api"],
        "args": ["--port", "${NOMAD_PORT_http}"],
        "env": {"MODE": "prod"},
    }
    assert task.kill_timeout == 20.0 and task.kill_signal == "SIGINT"
    assert (task.resources.cpu, task.resources.memory) == (500, 256)


def hcl(body: str) -> str:
    return textwrap.dedent(body)


def test_a_task_directly_under_the_job_is_wrapped_in_a_group_of_its_name():
    job = parse_hcl(
        hcl(
            """\
            job "j" {
              task "solo" {
                driver = "exec"
                config { command = "/bin/true" }
              }
            }
            """
        )
    )
    assert job["TaskGroups"] == [
        {
            "Name": "solo",
            "Count": 1,
            "Tasks": [{"Name": "solo", "Driver": "exec", "Config": {"command": "/bin/true"}}],
        }
    ]


def test_heredocs_escapes_and_interpolations():
    job = parse_hcl(
        hcl(
            """\
            job "j" {
              group "g" {
                task "t" {
                  driver = "exec"
                  env {
                    URL = "http://${NOMAD_ADDR_http}/"
                  }
                  config {
                    command = "/bin/sh"
                    args = ["-c", <<-EOT
                      echo "$${HOME} ${NOMAD_ALLOC_ID}"
                        indented
                      EOT
                    ]
                  }
                }
              }
            }
            """
        )
    )
    task = job["TaskGroups"][0]["Tasks"][0]
    # <<- strips the common indent; $${ is HCL's escape of a literal ${.
    assert task["Config"]["args"][1] == 'echo "${HOME} ${NOMAD_ALLOC_ID}"\n  indented'
    assert task["Env"] == {"URL": "http://${NOMAD_ADDR_http}/"}


def test_repeated_blocks_and_periodic_and_parameterized():
    job = parse_hcl(
        hcl(
            """\
            job "j" {
              periodic {
                cron             = "@daily"
                prohibit_overlap = true
                time_zone        = "Europe/Paris"
              }
              group "a" {
                task "t" {
                  driver = "exec"
                  config { command = "x" }
                  dispatch_payload { file = "in.json" }
                }
              }
              group "b" {
                task "t" {
                  driver = "exec"
                  config { command = "x" }
                }
              }
            }
            """
        )
    )
    assert [g["Name"] for g in job["TaskGroups"]] == ["a", "b"]
    assert job["Periodic"] == {
        "Spec": "@daily",
        "SpecType": "cron",
        "ProhibitOverlap": True,
        "TimeZone": "Europe/Paris",
    }
    assert job["TaskGroups"][0]["Tasks"][0]["DispatchPayload"] == {"File": "in.json"}
    job = parse_hcl(
        'job "p" {\n parameterized {\n  payload = "required"\n  meta_required = ["a"]\n'
        '  meta_optional = ["b"]\n }\n}\n'
    )
    assert job["ParameterizedJob"] == {
        "Payload": "required",
        "MetaRequired": ["a"],
        "MetaOptional": ["b"],
    }


def in_task(block: str) -> str:
    """A job whose task (lines 3-8) holds ``block`` at line 6."""
    return (
        'job "j" {\n'
        '  group "g" {\n'
        '    task "t" {\n'
        '      driver = "docker"\n'
        '      config { image = "busybox" }\n'
        f"      {block}\n"
        "    }\n"
        "  }\n"
        "}\n"
    )


@pytest.mark.parametrize(
    "block",
    [
        'template {\n data = "x"\n }',
        'artifact {\n source = "https://example.com/x"\n }',
        'vault {\n policies = ["a"]\n }',
        'volume_mount {\n volume = "v"\n destination = "/d"\n }',
        'lifecycle {\n hook = "prestart"\n }',
        "identity {\n env = true\n }",
        "scaling {\n min = 1\n }",
        "logs {\n max_files = 3\n }",
        'csi_plugin {\n id = "x"\n }',
        'consul {\n namespace = "x"\n }',
    ],
)
def test_unsupported_blocks_are_refused_with_their_line(block):
    name = block.split()[0]
    with pytest.raises(ValidationError) as err:
        parse_hcl(in_task(block))
    assert err.value.message == f'block "{name}" (line 6) is not supported by orch'


@pytest.mark.parametrize(
    "text, message",
    [
        (
            'job "j" {\n  group "g" {\n    volume "data" {\n      type = "host"\n    }\n  }\n}\n',
            'block "volume" (line 3) is not supported by orch',
        ),
        (
            'job "j" {\n  group "g" {\n    ephemeral_disk {\n      size = 10\n    }\n  }\n}\n',
            'block "ephemeral_disk" (line 3) is not supported by orch',
        ),
        (in_task('user = "nobody"'), 'attribute "user" of block "task" (line 3) is not supported'),
        (
            'job "j" {\n  update {\n    max_parallel = 1\n  }\n'
            "  update {\n    canary = 1\n  }\n}\n",
            'block "update" (line 5) is given more than once',
        ),
        ('job "j" {\n  group "g" {\n    count = \n  }\n}\n', "line 3: syntax error"),
        ('variable "n" {\n  default = 1\n}\njob "j" {}\n', 'block "variable" (line 1)'),
        ('job "j" {\n  group "g" {\n    count = var.n\n  }\n}\n', "var.* variables"),
        ('job "a" {}\njob "b" {}\n', "exactly one job block (found 2)"),
        ("job {\n}\n", 'block "job" (line 1) needs one label'),
        (
            in_task("config {\n entrypoint = []\n }").replace(
                '      config { image = "busybox" }\n', ""
            ),
            '"entrypoint" in block "config" (line 5) is not supported by orch for the docker',
        ),
        (
            'job "j" {\n group "g" {\n  network {\n   port "p" {\n    host_network = "x"\n'
            "   }\n  }\n }\n}\n",
            'attribute "host_network" of block "port" (line 4)',
        ),
        (in_task('kill_timeout = "soon"'), 'block "task" (line 3): kill_timeout: must be'),
    ],
)
def test_refusals_name_the_line(text, message):
    with pytest.raises(ValidationError, match=None) as err:
        parse_hcl(text)
    assert message in err.value.message


@pytest.mark.parametrize(
    "text",
    [
        "job = 5",
        "job = true",
        "job = {a = 1}",
        'job "a" {\n task = 5\n}',
        'job "a" {\n task = true\n}',
    ],
)
def test_a_job_or_task_that_is_not_a_block_is_refused(text):
    """Each was a 500 (a TypeError or KeyError deep in the conversion)."""
    with pytest.raises(ValidationError, match="must be a block"):
        parse_hcl(text)


def test_a_file_with_a_byte_order_mark_and_crlf_lines_reads_as_nomad_reads_it():
    text = (
        'job "w" {\n  group "g" {\n    task "t" {\n      driver = "exec"\n'
        "      config {\n        command = <<EOT\necho hi\nEOT\n      }\n    }\n  }\n}\n"
    )
    assert parse_hcl("\ufeff" + text.replace("\n", "\r\n")) == parse_hcl(text)


@pytest.mark.parametrize(
    "old, new, message",
    [
        ('driver = "docker"', 'driver = "java"', "line 3: Job.TaskGroups[0].Tasks[0].Driver"),
        (
            "      driver",
            '      constraint {\n attribute = "${attr.kernel.name}"\n operator = "version"\n'
            ' value = ">= 1"\n }\n      driver',
            "line 4: Job.TaskGroups[0].Tasks[0].Constraints[0].Operand: operator 'version'",
        ),
        ('image = "busybox"', 'image = ""', "line 3: task_groups[0].tasks[0].config.image"),
    ],
)
def test_translation_errors_get_the_line_of_their_block(old, new, message):
    with pytest.raises(ValidationError) as err:
        job_from_hcl(in_task("").replace(old, new, 1))
    assert err.value.message.startswith(message), err.value.message


def test_a_bad_count_points_at_its_group():
    text = 'job "j" {\n  group "g" {\n    count = 0\n    task "t" {\n      driver = "exec"\n'
    text += '      config { command = "x" }\n    }\n  }\n}\n'
    with pytest.raises(ValidationError, match=r"^line 2: task_groups\[0\].count"):
        job_from_hcl(text)


@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.nomad.hcl")), ids=lambda p: p.name)
def test_every_corpus_file_translates_into_a_valid_orch_job(path):
    body = job_from_hcl(path.read_text())
    assert parse_job(body).job_id == body["job_id"]


def test_maps_as_attributes_and_nomads_default_type():
    text = 'job "j" {\n  meta = {\n    team = "core"\n  }\n  group "g" {\n'
    text += '    meta = { tier = "one" }\n    task "t" {\n      driver = "exec"\n'
    text += '      config = { command = "/bin/true" }\n    }\n  }\n}\n'
    job = parse_hcl(text)
    assert job["Meta"] == {"team": "core"} and job["TaskGroups"][0]["Meta"] == {"tier": "one"}
    body = job_from_hcl(text)
    # Without `type` a Nomad job is a service (orch's own default is batch).
    assert body["type"] == "service" and body["meta"] == {"team": "core"}
    assert body["task_groups"][0]["tasks"][0]["config"] == {"command": ["/bin/true"]}


def test_restart_blocks_of_group_and_task():
    text = (
        in_task('restart {\n attempts = 1\n delay = "2s"\n }')
        .replace('driver = "docker"', 'driver = "exec"')
        .replace('image = "busybox"', 'command = "x"')
    )
    text = text.replace(
        '  group "g" {\n',
        '  group "g" {\n    restart {\n      attempts = 1\n      delay = "2s"\n'
        '      mode = "delay"\n    }\n',
        1,
    )
    group = parse_hcl(text)["TaskGroups"][0]
    policy = {"Attempts": 1, "Delay": 2 * S, "Mode": "delay"}
    assert group["RestartPolicy"] == policy
    assert group["Tasks"][0]["RestartPolicy"] == {"Attempts": 1, "Delay": 2 * S}
    # The task's block differs from its group's (mode): orch has one per group.
    with pytest.raises(
        ValidationError, match=r"^line 11: Job.TaskGroups\[0\].Tasks\[0\].RestartPolicy: differs"
    ):
        job_from_hcl(text)
    body = job_from_hcl(text.replace('      mode = "delay"\n', ""))
    assert body["task_groups"][0]["restart"] == {"attempts": 1, "delay": 2}
    assert parse_job(body).task_groups[0].restart == {  # a service: Nomad's service defaults
        "attempts": 1,
        "interval": 1800.0,
        "delay": 2.0,
        "mode": "fail",
    }


def test_the_cli_reads_hcl_by_extension_or_content_and_nomad_json(tmp_path, capsys):
    text = in_task("").replace('driver = "docker"', 'driver = "raw_exec"')
    text = text.replace('image = "busybox"', 'command = "/bin/true"')
    for name in ("web.nomad.hcl", "web.nomad", "web.job"):  # the last one: by content
        (tmp_path / name).write_text(text)
        assert load_job_file(str(tmp_path / name)) == job_from_hcl(text)
    (tmp_path / "web.json").write_text(json.dumps({"Job": parse_hcl(text)}))
    assert load_job_file(str(tmp_path / "web.json")) == job_from_hcl(text)
    assert job_convert(Namespace(file=str(tmp_path / "web.job"))) == 0
    assert json.loads(capsys.readouterr().out) == job_from_hcl(text)
    (tmp_path / "bad.hcl").write_text(in_task('template {\n data = "x"\n }'))
    assert job_convert(Namespace(file=str(tmp_path / "bad.hcl"))) == 1
    err = capsys.readouterr().err
    assert err == f'error: {tmp_path}/bad.hcl: block "template" (line 6) is not supported by orch\n'


def test_a_driver_of_the_wrong_type_is_a_validation_error():
    text = in_task("").replace('driver = "docker"', 'driver = ["docker"]')
    with pytest.raises(ValidationError, match=r"^line 3: Job.TaskGroups\[0\].Tasks\[0\].Driver"):
        job_from_hcl(text)


README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readmes_side_by_side_is_what_convert_prints():
    section = README.read_text().split("One job file side by side", 1)[1]
    hcl = section.split("```hcl\n", 1)[1].split("```", 1)[0]
    shown = section.split("```json\n", 1)[1].split("```", 1)[0]
    assert job_from_hcl(hcl) == json.loads(shown)


EXPRESSION_JOB = """\
job "a" {
  group "g" {
    count = %s
    task "t" {
      driver = "exec"
      config {
        command = "/bin/echo"
        args    = ["${NOMAD_PORT_http}", "${attr.kernel.name}-x", "$${HOME}"]
      }
    }
  }
}
"""


@pytest.mark.parametrize("value", ["1 + 2", "1e400", 'upper("x")', '"%{ if true }x%{ endif }"'])
def test_expressions_hcl_would_evaluate_are_refused_with_their_line(value):
    with pytest.raises(ValidationError, match=r"line \d+: HCL expressions are not supported"):
        parse_hcl(EXPRESSION_JOB % value)


def test_runtime_references_and_escapes_are_kept():
    args = parse_hcl(EXPRESSION_JOB % "2")["TaskGroups"][0]["Tasks"][0]["Config"]["args"]
    assert args == ["${NOMAD_PORT_http}", "${attr.kernel.name}-x", "${HOME}"]


def test_a_parser_error_without_a_message_is_still_a_validation_error(monkeypatch):
    import hcl2

    def fail(*args, **kwargs):
        raise Exception()  # as python-hcl2 can, with nothing to say

    monkeypatch.setattr(hcl2, "loads", fail)
    with pytest.raises(ValidationError, match="syntax error: Exception"):
        parse_hcl('job "a" {}\n')
