"""The docker driver against a real engine: exits, env, logs, limits, ports, stop.

Runs in CI (`.ci/install-docker.sh` starts the engine); elsewhere it skips when
no engine answers. Every container made here carries this run's allocation
label and is removed at teardown.
"""

import os
import socket
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from orch.agent.drivers import (
    DOCKER_FALLBACK,
    DOCKER_NO_COMMAND,  # noqa: E402
    default_drivers,
    select_driver,
)
from orch.agent.drivers.base import TaskContext  # noqa: E402
from orch.agent.drivers.cgroups import cpu_shares  # noqa: E402
from orch.agent.drivers.docker import DockerDriver  # noqa: E402
from orch.agent.drivers.docker_config import (  # noqa: E402
    build_command,
    build_ports,
    container_name,
    create_options,
    publish_ip,
)
from orch.agent.drivers.exec import ExecDriver  # noqa: E402
from orch.errors import DriverError  # noqa: E402
from orch.structs import Resources, Task  # noqa: E402
from tests.docker_image import (
    TEST_IMAGE,
    remove_containers,
)

from waiting import wait_for  # noqa: E402

NO_ENGINE = {"DOCKER_HOST": "unix:///nonexistent.sock"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""


# -- pure parts: no engine needed ----------------------------------------------


def test_command_shapes():
    assert build_command({}) is None
    assert build_command({"command": "echo $A", "args": ["x y"]}) == [
        "/bin/sh",
        "-c",
        "echo $A 'x y'",
    ]
    assert build_command({"command": ["echo", "a"], "args": ["b"]}) == ["echo", "a", "b"]
    assert build_command({"args": ["-v"]}) == ["-v"]
    with pytest.raises(DriverError, match="config.command"):
        build_command({"command": 5})


def test_names_and_cpu_weight():
    assert container_name("a1b2", "web") == "orch-a1b2-web"
    assert container_name("a1", "we/b") == "orch-a1-we_b"
    assert cpu_shares(1000) == 1024 and cpu_shares(500) == 512 and cpu_shares(1) == 2


def test_ports_are_published_on_the_agents_address_unless_the_task_says():
    assert build_ports({}) is None
    assert build_ports({"port": 8080}) == {"8080/tcp": ("127.0.0.1", 8080)}
    assert build_ports({"port": 80, "container_port": 8080}, "10.0.0.5") == {
        "8080/tcp": ("10.0.0.5", 80)
    }
    assert build_ports({"port": 80, "host_ip": "0.0.0.0"}) == {"80/tcp": ("0.0.0.0", 80)}
    with pytest.raises(DriverError, match="config.host_ip"):
        build_ports({"port": 80, "host_ip": "everywhere"})
    assert publish_ip("0.0.0.0") == "0.0.0.0" and publish_ip("::1") == "::1"
    assert publish_ip("localhost") == "127.0.0.1"
    assert default_drivers(bind="192.0.2.7")["docker"]._host_ip == "192.0.2.7"
    assert default_drivers()["docker"]._host_ip == "127.0.0.1"


def test_no_engine_means_unavailable_and_fallback():
    docker_driver = DockerDriver(environment=NO_ENGINE)
    assert docker_driver.fingerprint() == {"driver.docker": False}
    assert "nonexistent.sock" in docker_driver.unavailable_reason()
    drivers = {"exec": ExecDriver(), "docker": docker_driver}
    with_command = Task("t", "docker", {"image": "x", "command": "true"}, Resources())
    driver, note = select_driver(with_command, drivers)
    assert driver is drivers["exec"] and note == DOCKER_FALLBACK
    without = Task("t", "docker", {"image": "x"}, Resources())
    with pytest.raises(DriverError) as err:
        select_driver(without, drivers)
    assert err.value.message.startswith(DOCKER_NO_COMMAND)
    assert "nonexistent.sock" in err.value.message


def test_refresh_drivers_reports_a_change():
    from orch.agent.fingerprint import Fingerprint, refresh_drivers

    class Flaky(ExecDriver):
        name, up = "docker", False

        def fingerprint(self):
            return {"driver.docker": self.up}

    flaky = Flaky()
    fp = Fingerprint(Resources(1000, 1024), {"os": "linux", "driver.docker": False})
    assert refresh_drivers(fp, {"docker": flaky}) is fp
    flaky.up = True
    fresh = refresh_drivers(fp, {"docker": flaky})
    assert fresh.attributes == {"os": "linux", "driver.docker": True}
    assert fresh.resources == fp.resources


# -- against the engine ------------------------------------------------------------


@pytest.fixture
def driver(engine):
    return DockerDriver()


@pytest.fixture
def make_ctx(tmp_path, engine):
    """Contexts under one fresh allocation id; its containers go at teardown."""
    alloc_id = f"test-{uuid.uuid4().hex[:12]}"

    def make(config, name="t", cpu=100, memory=64, attempt=0):
        config = {"image": TEST_IMAGE, **config}
        task_dir = tmp_path / name
        return TaskContext(
            alloc_id=alloc_id,
            job_id="j1",
            task_name=name,
            config=config,
            resources=Resources(cpu, memory),
            task_dir=str(task_dir),
            stdout_path=str(task_dir / "stdout.log"),
            stderr_path=str(task_dir / "stderr.log"),
            env={"ORCH_ALLOC_ID": alloc_id, "ORCH_TASK_DIR": str(task_dir)},
            attempt=attempt,
        )

    yield make
    remove_containers(engine, alloc_id)


@pytest.fixture
def run(driver, make_ctx):
    handles = []

    def start(config, **kw):
        ctx = make_ctx(config, **kw)
        handle = driver.start(ctx)
        handles.append(handle)
        return ctx, handle

    def run_to_end(config, timeout=30, **kw):
        ctx, handle = start(config, **kw)
        result = driver.wait(handle, timeout)
        assert result is not None, "container did not exit in time"
        return ctx, handle, result

    run_to_end.start = start
    yield run_to_end
    for handle in handles:
        driver.stop(handle, 1)


def test_fingerprint_true_with_engine(driver):
    assert driver.fingerprint() == {"driver.docker": True}
    assert driver.available() and driver.unavailable_reason() == ""
    task = Task("t", "docker", {"image": TEST_IMAGE, "command": "true"}, Resources())
    assert select_driver(task, {"exec": ExecDriver(), "docker": driver}) == (driver, None)


def test_exit_code_env_and_logs(driver, make_ctx, engine):
    ctx = make_ctx(
        {
            "command": "echo out $GREETING $ORCH_ALLOC_ID; "
            "echo err >&2; echo dir=$ORCH_TASK_DIR; cat /local/note; exit 3",
            "env": {"GREETING": "hello"},
        }
    )
    os.makedirs(ctx.task_dir, exist_ok=True)
    with open(os.path.join(ctx.task_dir, "note"), "w") as note:
        note.write("from the host\n")
    handle = driver.start(ctx)
    try:
        result = driver.wait(handle, 30)
    finally:
        driver.stop(handle, 1)
    assert result is not None and result.exit_code == 3
    assert not result.successful and not result.oom_killed
    # The host's task dir is mounted at /local (where a dispatch payload lands).
    assert read(ctx.stdout_path) == f"out hello {ctx.alloc_id}\ndir=/local\nfrom the host\n"
    assert read(ctx.stderr_path) == "err\n"
    # The container is gone once its exit is collected.
    assert (
        engine.containers.list(all=True, ignore_removed=True, filters={"id": handle.container_id})
        == []
    )


def test_list_command_and_success(run):
    ctx, _, result = run({"command": ["echo", "a b"], "args": ["c"]})
    assert result.exit_code == 0 and result.successful
    assert read(ctx.stdout_path) == "a b c\n"


def test_name_labels_and_limits(run, engine, driver):
    ctx, handle = run.start({"command": "sleep 30"}, cpu=500, memory=48)
    info = engine.api.inspect_container(handle.container_id)
    assert info["Name"] == f"/orch-{ctx.alloc_id}-t"
    assert info["Config"]["Labels"] == {
        "orch.job_id": "j1",
        "orch.alloc_id": ctx.alloc_id,
        "orch.task": "t",
        "orch.attempt": "0",
    }
    assert info["HostConfig"]["Memory"] == 48 * 1024 * 1024
    assert info["HostConfig"]["MemorySwap"] == 48 * 1024 * 1024
    assert info["HostConfig"]["CpuShares"] == 512
    assert driver.wait(handle, 0.2) is None


def test_stop_removes_the_container(run, engine, driver):
    _, handle = run.start({"command": "sleep 300"})
    started = time.monotonic()
    driver.stop(handle, 5)
    assert time.monotonic() - started < 4, "SIGTERM should end it (init forwards it)"
    assert (
        engine.containers.list(all=True, ignore_removed=True, filters={"id": handle.container_id})
        == []
    )
    result = driver.wait(handle, 5)
    assert result is not None and result.exit_code == 143


def test_port_published_answers_http(run, make_ctx, engine):
    port = free_port()
    _, handle = run.start(
        {
            "command": "echo hello-orch > /www/index.html && exec httpd -f -p 8080 -h /www",
            "port": port,
            "container_port": 8080,
        }
    )

    def answers():
        try:
            return requests.get(f"http://127.0.0.1:{port}/", timeout=1).text
        except requests.RequestException:
            return ""

    assert wait_for(lambda: answers() == "hello-orch\n", 10.0)
    # On the agent's (loopback) address only, not on every interface.
    bound = engine.api.inspect_container(handle.container_id)["HostConfig"]["PortBindings"]
    assert bound == {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]}


def test_oom_killed(run):
    _, _, result = run({"command": "x=$(head -c 100000000 /dev/zero | tr '\\0' a)"}, memory=16)
    assert result.oom_killed and result.exit_code == 137
    assert "OOM killed" in result.error


def test_missing_image_says_so(driver, make_ctx):
    # A loopback registry: the pull fails at once and nothing leaves the host.
    image = f"127.0.0.1:{free_port()}/orch-test/missing:1"
    with pytest.raises(DriverError) as err:
        driver.start(make_ctx({"image": image, "command": "true"}))
    assert err.value.message.startswith(f"image {image} not found locally and pull failed: ")


def test_port_conflict_fails_and_leaves_nothing(run, make_ctx, driver, engine):
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        ctx = make_ctx({"command": "sleep 30", "port": busy.getsockname()[1]})
        with pytest.raises(DriverError, match="failed to start container"):
            driver.start(ctx)
    assert (
        engine.containers.list(
            all=True, ignore_removed=True, filters={"label": f"orch.alloc_id={ctx.alloc_id}"}
        )
        == []
    )


def test_recover_finds_the_container(run, driver):
    ctx, handle = run.start({"command": "echo before; sleep 1; echo after; exit 4"})
    assert wait_for(lambda: "before" in read(ctx.stdout_path), 10.0)
    for stream in handle.streams:  # the first agent dies: its log copies end
        stream.close()
    fresh = DockerDriver()  # the next agent's driver
    recovered = fresh.recover(driver.handle_to_json(handle))
    assert recovered is not None and recovered.container_id == handle.container_id
    result = fresh.wait(recovered, 30)
    assert result.exit_code == 4
    assert read(ctx.stdout_path).count("after") == 1
    assert fresh.recover({"driver": "docker", "container_id": "0" * 64}) is None
    assert fresh.recover({"pid": 1}) is None


def test_restart_reuses_the_name(run):
    ctx, _, first = run({"command": "exit 1"})
    _, _, second = run({"command": "echo again"})
    assert first.exit_code == 1 and second.exit_code == 0
    assert read(ctx.stdout_path) == "again\n"


def test_starting_the_same_start_again_takes_over_its_container(run, driver, make_ctx):
    """An agent killed after starting a container, before saving its handle."""
    ctx, handle = run.start({"command": "echo up; sleep 300"})
    fresh = DockerDriver()  # the next agent's driver, asked again
    again = fresh.start(ctx)
    assert again.container_id == handle.container_id
    found = fresh.find(ctx)
    assert found is not None and found.container_id == handle.container_id
    assert fresh.find(make_ctx(ctx.config, attempt=1)) is None
    fresh.stop(again, 1)


def test_find_starts_a_container_created_but_never_started(driver, make_ctx, engine):
    ctx = make_ctx({"command": "echo ran; exit 6"})
    options = create_options(ctx)
    engine.containers.create(**options)  # the agent died right after create
    handle = DockerDriver().find(ctx)
    assert handle is not None
    result = driver.wait(handle, 30)
    assert result.exit_code == 6
    assert wait_for(lambda: read(ctx.stdout_path) == "ran\n", 10.0)


def test_leftover_of_another_start_is_replaced(run, driver, engine):
    ctx, first = run.start({"command": "sleep 300"})
    _, second = run.start({"command": "sleep 300"}, attempt=1)
    assert second.container_id != first.container_id
    assert [
        c.id
        for c in engine.containers.list(
            all=True, ignore_removed=True, filters={"label": f"orch.alloc_id={ctx.alloc_id}"}
        )
    ] == [second.container_id]
