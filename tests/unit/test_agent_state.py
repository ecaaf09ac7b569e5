"""Agent-side persistence, fingerprinting, restart, and the `run` entry point."""

import fcntl
import json
import os
import platform
import signal
import struct
import subprocess
import sys
import textwrap

import psutil
import pytest
import requests

from orch.agent import fingerprint as fp
from orch.agent.agent import Agent
from orch.agent.drivers.exec import ExecDriver
from orch.agent.spec import parse_alloc
from orch.agent.state import FS_IOC_GETFLAGS, FS_TOPDIR_FL, AgentStore, make_dir, spread_subdirs
from orch.agent.taskrunner import LOST_ON_RESTART
from orch.config import AgentConfig
from orch.structs import AllocStatus

from helpers import store_task_context
from waiting import live, reported, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def alloc(alloc_id, command):
    return parse_alloc(
        {
            "allocation_id": alloc_id,
            "job_id": "j1",
            "task_group": {"name": "g", "tasks": [{"name": "t", "config": {"command": command}}]},
        }
    )


def test_node_id_persists_and_can_be_overridden(tmp_path):
    first = AgentStore(str(tmp_path)).node_id()
    assert first and AgentStore(str(tmp_path)).node_id() == first
    assert AgentStore(str(tmp_path)).node_id("fixed") == "fixed"
    assert AgentStore(str(tmp_path)).node_id() == "fixed"


def test_save_load_remove(tmp_path):
    store = AgentStore(str(tmp_path))
    store.save_alloc("a1", {"x": 1})
    store.save_alloc("a2", {"x": 2})
    assert store.load_allocs() == [{"x": 1}, {"x": 2}]
    store.remove_alloc("a1")
    store.save_alloc("a1", {"x": 3})  # a late write after removal is dropped
    assert store.load_allocs() == [{"x": 2}]
    with open(os.path.join(store.alloc_dir("a2"), "alloc.json"), "w") as f:
        f.write("{broken")
    assert store.load_allocs() == []


def test_an_allocations_first_write_is_in_place_later_ones_renamed(tmp_path, monkeypatch):
    store = AgentStore(str(tmp_path))
    renames = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (renames.append(b), real_replace(a, b)))
    store.save_alloc("a1", {"x": 1})
    assert renames == []  # created and written, no temporary file
    assert sorted(os.listdir(store.alloc_dir("a1"))) == ["alloc.json"]
    store.save_alloc("a1", {"x": 2})
    assert len(renames) == 1  # a later version replaces the file whole
    assert store.load_allocs() == [{"x": 2}]
    # A restarted agent's store finds the file: it replaces it, never appends.
    again = AgentStore(str(tmp_path))
    again.save_alloc("a1", {"x": 3})
    assert len(renames) == 2 and again.load_allocs() == [{"x": 3}]


def test_an_alloc_file_created_but_never_written_is_skipped(tmp_path, caplog):
    store = AgentStore(str(tmp_path))
    os.makedirs(store.alloc_dir("a1"))
    open(os.path.join(store.alloc_dir("a1"), "alloc.json"), "w").close()
    store.save_alloc("a2", {"x": 2})
    assert store.load_allocs() == [{"x": 2}]
    assert "unreadable" not in caplog.text


def test_fingerprint_measures_the_node():
    result = fp.fingerprint({"exec": ExecDriver()})
    assert result.resources.cpu > 0 and result.resources.memory > 0
    attrs = result.attributes
    assert attrs["driver.exec"] is True and attrs["driver.docker"] is False
    assert attrs["cpu.cores"] == psutil.cpu_count()
    assert attrs["os"] == platform.system().lower()
    assert attrs["hostname"] and attrs["arch"] and attrs["kernel.version"]


def test_cpu_mhz_sources(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\ncpu MHz\t\t: 2400.5\nprocessor\t: 1\ncpu MHz\t\t: 3000.0\n")
    assert fp.cpu_mhz(str(info)) == 3000.0
    monkeypatch.setattr(fp.psutil, "cpu_freq", lambda: None)
    assert fp.cpu_mhz(str(tmp_path / "missing")) == fp.FALLBACK_MHZ
    info.write_text("cpu MHz : 0\n")
    assert fp.cpu_mhz(str(info)) == fp.FALLBACK_MHZ


def test_restarted_agent_reports_and_reattaches(tmp_path):
    config = AgentConfig(server="http://127.0.0.1:9", data_dir=str(tmp_path), kill_timeout=1.0)
    first = Agent(config)
    first.submit(alloc("live", "sleep 300"))
    first.submit(alloc("done", "exit 5"))
    assert first.get("done").wait(5)
    assert wait_for(lambda: first.get("live").tasks["t"].handle_json is not None)
    pid = first.get("live").tasks["t"].handle_json["pid"]
    # An allocation whose process died with the agent (state says running).
    lost = alloc("lost", "sleep 300")
    gone = subprocess.Popen(["true"])
    gone.wait()
    first.store.save_alloc(
        "lost",
        {
            "spec": lost.to_dict(),
            "stopped": False,
            "start_time": 1.0,
            "end_time": None,
            "tasks": {"t": {"status": "running", "start_time": 1.0}},
            "handles": {"t": {"pid": gone.pid, "pgid": gone.pid, "create_time": 1.0}},
        },
    )

    second = Agent(config)  # the first "died" without stopping anything
    try:
        assert second.node_id == first.node_id
        assert second.restore() == 3
        beat = reported(second)
        assert beat["live"]["status"] == "running"
        assert beat["done"]["status"] == "failed"
        assert beat["done"]["tasks"]["t"]["exit_code"] == 5
        assert wait_for(lambda: second.get("lost").status() == AllocStatus.FAILED)
        assert second.get("lost").tasks["t"].state.error == LOST_ON_RESTART
        second.stop_alloc("live")
        assert not live(pid)
    finally:
        second.shutdown(stop_tasks=True)
        first.shutdown(stop_tasks=True)


def test_shutdown_stop_tasks(tmp_path):
    agent = Agent(AgentConfig(data_dir=str(tmp_path), kill_timeout=1.0))
    agent.submit(alloc("a1", "sleep 300"))
    assert wait_for(lambda: agent.get("a1").tasks["t"].handle_json is not None)
    pid = agent.get("a1").tasks["t"].handle_json["pid"]
    agent.shutdown(stop_tasks=True)
    assert not live(pid)
    state = agent.get("a1").tasks["t"].state
    assert state.status == "failed" and state.error == "agent shutting down"


AGENT_SCRIPT = textwrap.dedent("""
    import logging, sys
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
    from orch.agent.main import run
    from orch.config import AgentConfig
    sys.exit(run(AgentConfig(server="http://127.0.0.1:9", data_dir=sys.argv[1],
                             kill_timeout=1.0)))
""")


@pytest.fixture
def agent_process(tmp_path):
    log_path = tmp_path / "agent.log"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", AGENT_SCRIPT, str(tmp_path / "data")],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    proc.log_path = log_path
    yield proc
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_run_serves_until_sigterm_and_stops_tasks(agent_process):
    proc = agent_process
    assert wait_for(lambda: "agent listening on http://" in proc.log_path.read_text(), 10)
    line = next(s for s in proc.log_path.read_text().splitlines() if "agent listening on" in s)
    url = line.split("agent listening on ")[1].split()[0]
    resp = requests.post(
        f"{url}/allocations",
        timeout=5,
        json={
            "allocation_id": "a1",
            "job_id": "j1",
            "task_group": {
                "name": "g",
                "tasks": [{"name": "t", "config": {"command": "sleep 300"}}],
            },
        },
    )
    assert resp.status_code == 200
    assert wait_for(
        lambda: requests.get(f"{url}/allocations/a1", timeout=5).json()["status"] == "running"
    )
    children = psutil.Process(proc.pid).children(recursive=True)
    supervisors = psutil.Process(proc.pid).children()  # the tasks are theirs
    tasks = [c for c in children if c not in supervisors]
    assert tasks and supervisors
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    assert not any(live(c.pid) for c in tasks)  # killed before the agent exits
    # A supervisor leaves on its own once its tasks have ended; the agent
    # waits for that only so long (2 s), which a loaded host can outlast.
    assert wait_for(lambda: not any(live(c.pid) for c in supervisors), 10)
    doc = json.loads((proc.log_path.parent / "data" / "allocs" / "a1" / "alloc.json").read_text())
    assert doc["tasks"]["t"]["status"] == "failed"


def test_restore_finishes_an_interrupted_delete(tmp_path):
    config = AgentConfig(data_dir=str(tmp_path), kill_timeout=1.0)
    store = AgentStore(str(tmp_path))
    spec = alloc("a1", "sleep 300")
    os.makedirs(store.task_dir("a1", "t"))
    driver = ExecDriver()
    handle = driver.start(store_task_context(store))
    store.save_alloc(
        "a1",
        {
            "spec": spec.to_dict(),
            "stopped": True,
            "tasks": {"t": {"status": "running"}},
            "handles": {"t": driver.handle_to_json(handle)},
        },
    )
    agent = Agent(config)
    try:
        assert agent.restore() == 0
        assert wait_for(lambda: not os.path.exists(store.alloc_dir("a1")))
        assert not live(handle.pid)
        # Its last word, as a DELETE's, until the server has taken it.
        assert agent.heartbeat_reports()["a1"][0] == AllocStatus.STOPPED
    finally:
        agent.shutdown(stop_tasks=True)
        driver.stop(handle, 0.5)
        driver.wait(handle, 1)


def _inode_flags(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return struct.unpack("i", fcntl.ioctl(fd, FS_IOC_GETFLAGS, b"\0" * 4))[0]
    finally:
        os.close(fd)


def test_the_allocs_dir_asks_the_file_system_to_spread_its_subdirs(tmp_path):
    probe = tmp_path / "probe"
    probe.mkdir()
    if not spread_subdirs(str(probe)):
        pytest.skip("the file system under tmp_path has no TOPDIR flag")
    before = _inode_flags(str(probe))
    assert before & FS_TOPDIR_FL
    assert spread_subdirs(str(probe)) and _inode_flags(str(probe)) == before  # idempotent
    store = AgentStore(str(tmp_path / "data"))
    assert _inode_flags(store.allocs_dir) & FS_TOPDIR_FL
    # Only a hint: the allocation's files are where they always were.
    store.save_alloc("a1", {"allocation_id": "a1"})
    with open(os.path.join(store.alloc_dir("a1"), "alloc.json")) as f:
        assert json.load(f) == {"allocation_id": "a1"}


def test_spreading_subdirs_is_a_hint_that_may_be_refused(tmp_path):
    assert spread_subdirs(str(tmp_path / "missing")) is False
    plain = tmp_path / "file"
    plain.write_text("x")
    assert spread_subdirs(str(plain)) is False  # not a directory
    if os.path.isdir("/proc/self"):
        assert spread_subdirs("/proc/self") is False  # procfs has no such flags


def test_make_dir_takes_one_system_call_when_the_parent_is_there(tmp_path, monkeypatch):
    calls: list[str] = []
    for name in ("mkdir", "stat", "lstat"):
        real = getattr(os, name)
        monkeypatch.setattr(
            os, name, lambda *a, _n=name, _r=real, **k: (calls.append(_n), _r(*a, **k))[1]
        )
    make_dir(str(tmp_path / "a1"))
    assert calls == ["mkdir"]
    monkeypatch.undo()
    make_dir(str(tmp_path / "a1"))  # there already: as makedirs(exist_ok=True)
    make_dir(str(tmp_path / "b" / "c"))  # no parent: made too
    assert (tmp_path / "a1").is_dir() and (tmp_path / "b" / "c").is_dir()
    (tmp_path / "f").write_text("")
    with pytest.raises(FileExistsError):
        make_dir(str(tmp_path / "f"))


def test_paths_are_the_joins_of_their_parts_however_the_data_dir_is_written(tmp_path, monkeypatch):
    """The store concatenates validated ids and names (no '/', no '..') instead of
    calling os.path.join: the result must be the same path."""
    monkeypatch.chdir(tmp_path)
    for data_dir in ("rel/", "rel//agent/", f"{tmp_path}/abs/", "."):
        store = AgentStore(data_dir)
        allocs = os.path.join(os.path.abspath(data_dir), "allocs")
        assert store.alloc_dir("a-1.x_y") == os.path.join(allocs, "a-1.x_y")
        assert store.task_dir("a-1", "web.1") == os.path.join(allocs, "a-1", "web.1")
        assert store.log_path("a-1", "t", "stderr") == os.path.join(
            allocs, "a-1", "t", "stderr.log"
        )
        store.save_alloc("a-1", {"x": 1})
        assert os.path.isfile(os.path.join(allocs, "a-1", "alloc.json"))
        store.remove_alloc("a-1")
