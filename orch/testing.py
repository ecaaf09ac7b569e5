"""A throwaway orch cluster for tests: ``dev_cluster()`` and the ``orch_cluster`` fixture.

    from orch.testing import dev_cluster

    with dev_cluster(agents=3) as cluster:
        cluster.client.jobs.submit(spec)
        cluster.client.jobs.wait(spec["job_id"], "complete", timeout=30)

``orch dev`` runs in a process group of its own on a free port, from the
installed package (``python -m orch``) or from a zipapp (``pyz=`` or the
``ORCH_PYZ`` variable). On exit it is stopped as Ctrl-C would (agents stop
their tasks first), and then every process it had started that is still
there, tasks included, is killed: a test never leaves work running behind.

Installed, this module is also a pytest plugin (entry point ``pytest11``):
the ``orch_cluster`` fixture yields a running cluster, and
``@pytest.mark.orch_cluster(agents=1)`` passes options to it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from orch.client import Client, OrchError

START_TIMEOUT = 30.0
STOP_TIMEOUT = 20.0  # the launcher itself gives its children 10 s
POLL_INTERVAL = 0.05


class ClusterError(OrchError):
    """Raised when the dev cluster does not come up; the message has its log."""


class DevCluster:
    """A running ``orch dev``: its ``address``, a ``client`` and its ``nodes``."""

    def __init__(
        self, address: str, client: Client, process: subprocess.Popen, data_dir: str, log_path: str
    ):
        self.address, self.client, self.process = address, client, process
        self.data_dir, self.log_path = data_dir, log_path

    @property
    def pid(self) -> int:
        """The launcher's pid (also its process group id)."""
        return self.process.pid

    @property
    def nodes(self) -> list[dict]:
        """The server's nodes, as ``GET /nodes`` lists them now."""
        return self.client.nodes.list()

    def log(self) -> str:
        """What the launcher and its server and agents printed so far."""
        try:
            return Path(self.log_path).read_text(errors="replace")
        except OSError:
            return ""

    def processes(self) -> list:
        """psutil.Process of everything the cluster runs now, tasks included."""
        import psutil

        try:
            return psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []


@contextlib.contextmanager
def dev_cluster(
    agents: int = 3,
    *,
    pyz: str | os.PathLike | None = None,
    token: str | None = None,
    timeout: float = START_TIMEOUT,
    data_dir: str | os.PathLike | None = None,
    extra_args: tuple[str, ...] = (),
) -> Iterator[DevCluster]:
    """Start ``orch dev --agents N`` on a free port; stop it and all its tasks after."""
    pyz = pyz or os.environ.get("ORCH_PYZ") or None
    own_dir = data_dir is None
    root = tempfile.mkdtemp(prefix="orch-testing-") if data_dir is None else os.fspath(data_dir)
    os.makedirs(root, exist_ok=True)
    port = _free_port()
    address = f"http://127.0.0.1:{port}"
    argv = _program(pyz) + [
        "dev",
        "--agents",
        str(agents),
        "--port",
        str(port),
        "--data-dir",
        os.path.join(root, "cluster"),
        *extra_args,
    ]
    log_path = os.path.join(root, "dev.log")
    with open(log_path, "wb") as log:
        # A session of its own: signals meant for the test runner (Ctrl-C)
        # reach the cluster only through this context's teardown.
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_env(pyz, token),
            start_new_session=True,
        )
    cluster = DevCluster(address, Client(address, token=token), process, root, log_path)
    try:
        _wait_ready(cluster, agents, timeout)
        yield cluster
    finally:
        _teardown(cluster)
        if own_dir:
            shutil.rmtree(root, ignore_errors=True)


def _program(pyz) -> list[str]:
    if pyz:
        return [sys.executable, os.fspath(pyz)]
    return [sys.executable, "-m", "orch"]


def _env(pyz, token: str | None) -> dict:
    # The caller's ORCH_* settings (an address, a port, a data dir) would
    # point the cluster elsewhere: it gets only what is passed here.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    if token:
        env["ORCH_TOKEN"] = token
    if not pyz:
        # The same orch as the caller's, installed or not.
        here = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
    return env


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ready(cluster: DevCluster, agents: int, timeout: float) -> None:
    """Until the server lists ``agents`` healthy nodes; ClusterError if it never does."""
    deadline = time.monotonic() + timeout
    while True:
        if cluster.process.poll() is not None:
            raise ClusterError(
                f"orch dev exited with code {cluster.process.returncode}:\n{cluster.log()[-3000:]}"
            )
        try:
            healthy = [n for n in cluster.client.nodes.list() if n.get("healthy")]
            if len(healthy) >= agents:
                return
        except OrchError:
            pass  # not listening yet
        if time.monotonic() >= deadline:
            raise ClusterError(
                f"orch dev: {agents} nodes not healthy after {timeout:g}s:\n{cluster.log()[-3000:]}"
            )
        time.sleep(POLL_INTERVAL)


def _teardown(cluster: DevCluster) -> None:
    """SIGTERM the launcher (it stops agents, their tasks, then the server),
    then kill whatever it had started that outlived it."""
    import psutil

    started = cluster.processes()
    process = cluster.process
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    # Tasks run in sessions of their own (they may outlive an agent on
    # purpose): the launcher's group does not hold them, the snapshot does.
    # psutil refuses to signal a pid reused since the snapshot.
    left = []
    for proc in started:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            if proc.status() != psutil.STATUS_ZOMBIE:  # dead, awaiting its reaper
                proc.kill()
                left.append(proc)
    psutil.wait_procs(left, timeout=5)
    cluster.client.close()


# ---- pytest plugin ---------------------------------------------------------------

try:
    import pytest
except ImportError:  # orch.testing without pytest: the context manager only
    _have_pytest = False
else:
    _have_pytest = True

if _have_pytest:

    def pytest_configure(config) -> None:
        config.addinivalue_line(
            "markers",
            "orch_cluster(**options): options of the orch_cluster fixture "
            "(agents=, pyz=, token=, timeout=)",
        )

    @pytest.fixture
    def orch_cluster(request) -> Iterator[DevCluster]:
        """A running dev cluster (3 agents unless marked), stopped after the test."""
        marker = request.node.get_closest_marker("orch_cluster")
        options = dict(marker.kwargs) if marker else {}
        with dev_cluster(**options) as cluster:
            yield cluster
