"""Plumbing for integration tests: processes, ports, polling, the zipapp."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[2]
PYZ = ROOT / "dist" / "orch.pyz"
MAKE_PYZ = ROOT / "build" / "make_pyz.py"
STOP_GRACE = 10.0


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the OS may hand it out again later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_until(fn, timeout: float = 10.0, interval: float = 0.02, what: str | None = None):
    """Call ``fn`` until it returns something truthy, and return that.

    Exceptions count as "not yet"; on timeout the last one is in the message.
    """
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            value = fn()
            if value:
                return value
        except Exception as exc:   # noqa: BLE001 - polling: any failure means not yet
            last_exc = exc
        if time.monotonic() >= deadline:
            label = what or getattr(fn, "__name__", "condition")
            detail = f"; last error: {last_exc!r}" if last_exc else ""
            raise AssertionError(f"timed out after {timeout:g}s waiting for {label}{detail}")
        time.sleep(interval)


def sources_mtime() -> float:
    paths = [*ROOT.joinpath("orch").rglob("*.py"), ROOT / "setup.py", MAKE_PYZ,
             ROOT / "build" / "pyz_main.py",
             ROOT / "requirements-dev.txt"]
    return max(p.stat().st_mtime for p in paths if p.exists())


def ensure_pyz() -> Path:
    """dist/orch.pyz, rebuilt when missing or older than any source."""
    if not PYZ.exists() or PYZ.stat().st_mtime < sources_mtime():
        subprocess.run([sys.executable, str(MAKE_PYZ)], check=True, cwd=ROOT)
    return PYZ


def clean_env(extra: dict | None = None) -> dict:
    """The test's environment without the developer's ORCH_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCH_")}
    env.update(extra or {})
    return env


def _exited(pid: int) -> bool:
    """Has the child exited? Leaves it a zombie, so its pid (and group id) stay ours."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None and info.si_pid != 0


class Proc:
    """``[sys.executable, pyz, *args]`` in its own session, output in files.

    Never reaped before ``stop()``/``kill()``: until then its pid cannot be
    reused, so signalling its process group can only reach what it started.
    """

    def __init__(self, pyz: Path, args: list[str], log_dir: Path, name: str,
                 env: dict | None = None, cwd: Path | None = None):
        self.args, self.name = list(args), name
        self.stdout_path = log_dir / f"{name}.stdout"
        self.stderr_path = log_dir / f"{name}.stderr"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.popen = subprocess.Popen(
                [sys.executable, str(pyz), *self.args], stdin=subprocess.DEVNULL,
                stdout=out, stderr=err, env=clean_env(env), cwd=cwd,
                start_new_session=True)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.returncode is None and not _exited(self.pid)

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def wait_for_output(self, pattern: str, timeout: float = 10.0, stream: str = "stderr"):
        """The first match of ``pattern`` in the process's stdout or stderr."""
        regex = re.compile(pattern)

        def match():
            if not self.alive():
                raise AssertionError(f"{self.name} exited:\n{self.stderr()[-3000:]}")
            return regex.search(self.stdout() if stream == "stdout" else self.stderr())
        return wait_until(match, timeout, what=f"{pattern!r} from {self.name}")

    def signal(self, signum: int) -> None:
        """A signal to the process itself (not its group)."""
        if self.alive():
            os.kill(self.pid, signum)

    def wait(self, timeout: float) -> int | None:
        """Wait for exit without reaping; its exit code, or None if still running."""
        try:
            wait_until(lambda: not self.alive(), timeout, what=f"{self.name} to exit")
        except AssertionError:
            return None
        return self.popen.wait()

    def stop(self, grace: float = STOP_GRACE) -> int:
        """SIGTERM, wait up to ``grace``, then SIGKILL the whole process group."""
        self.signal(signal.SIGTERM)
        if self.popen.returncode is None:
            try:
                wait_until(lambda: not self.alive(), grace, interval=0.05)
            except AssertionError:
                pass
        return self.kill()

    def kill(self) -> int:
        """SIGKILL the process group (``kill -9``), then reap."""
        if self.popen.returncode is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        return self.popen.wait()


def http_get(url: str, token: str | None = None, timeout: float = 2.0) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.get(url, headers=headers, timeout=timeout)


def nodes(base_url: str, token: str | None = None) -> list[dict]:
    resp = http_get(base_url + "/nodes", token)
    resp.raise_for_status()
    return resp.json()["nodes"]
