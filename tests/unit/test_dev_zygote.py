"""orch/dev/zygote.py: a forked child runs orch's entry point and exits with its
code, never returning into the forking process; its command line reads as given."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from orch import __version__
from orch.dev import zygote

from waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
FAKE_ARGV0 = [sys.executable, "-S", "/nowhere/orch.pyz"]


def run_forking(body: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """``body`` in a fresh interpreter (no pytest capture in the way) that forks."""
    script = tmp_path / "forking.py"
    script.write_text(
        f"import os, sys\nfrom orch.dev import zygote\nARGV0 = {FAKE_ARGV0!r}\n" + body
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT), OTHER="1")
    return subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=60
    )


def test_a_forked_child_runs_the_command_and_exits_with_its_code(tmp_path):
    body = (
        "print(zygote.fork_child(ARGV0, ['version'], {}).wait())\n"
        # argparse's SystemExit(2) is the child's status, not an exception in our frames.
        "print(zygote.fork_child(ARGV0, ['agent', '--port', 'x'], {}).wait())\n"
    )
    done = run_forking(body, tmp_path)
    assert done.stdout.splitlines() == [f"orch {__version__}", "0", "2"], done.stderr
    assert "not a port number" in done.stderr


def test_the_child_gets_its_own_session_environment_and_argv(tmp_path):
    out = tmp_path / "seen"
    body = (
        "import signal\n"
        "from orch import __main__ as entry\n"
        "def seen(args):\n"
        f"    open({str(out)!r}, 'w').write(repr((os.getsid(0) == os.getpid(), "
        "os.environ.get('ONLY'), 'OTHER' in os.environ, sys.argv[1:], "
        "signal.getsignal(signal.SIGTERM) == signal.SIG_DFL, "
        "open('/proc/self/cmdline', 'rb').read())))\n"
        "    return 7\n"
        "entry.main = seen\n"
        "child = zygote.fork_child(ARGV0, ['agent', '--x', '1'], {'ONLY': 'yes'})\n"
        "print(child.wait())\n"
    )
    done = run_forking(body, tmp_path)
    assert done.stdout.strip() == "7", done.stderr
    leader, only, other, argv, term_default, title = eval(out.read_text())  # noqa: S307 - ours
    assert leader and only == "yes" and not other
    assert argv == ["agent", "--x", "1"] and term_default
    assert title.rstrip(b"\0").decode() == " ".join([*FAKE_ARGV0, "agent", "--x", "1"])


def test_forked_handle_polls_signals_and_reaps():
    pid = os.fork()
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    child = zygote.Forked(pid)
    assert child.poll() is None
    child.send_signal(signal.SIGTERM)
    assert wait_for(lambda: child.poll() is not None, 5.0)
    assert child.returncode == -signal.SIGTERM == child.wait()
    child.send_signal(signal.SIGTERM)  # gone: nothing to signal, no error


def test_no_fork_with_a_thread_running_or_when_asked_not_to(monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(threading, "active_count", lambda: 1)
    assert zygote.can_fork({})
    assert not zygote.can_fork({zygote.SPAWN_ENV: "exec"})
    monkeypatch.setattr(threading, "active_count", lambda: 2)
    assert not zygote.can_fork({})


@pytest.mark.parametrize("value, code", [(None, 0), (0, 0), (3, 3), ("bad flag", 1)])
def test_exit_code_is_what_sys_exit_gives(value, code, capsys):
    assert zygote.exit_code(value) == code
    assert ("bad flag" in capsys.readouterr().err) == (value == "bad flag")


def test_the_launchers_descriptors_are_closed_but_the_kept_one(tmp_path):
    kept, dropped = (os.open(tmp_path / name, os.O_CREAT | os.O_RDWR) for name in ("k", "d"))
    pid = os.fork()
    if pid == 0:
        zygote.close_fds(keep={kept})
        fds = set(map(int, os.listdir("/proc/self/fd")))
        os._exit(0 if kept in fds and dropped not in fds else 1)
    _, status = os.waitpid(pid, 0)
    os.close(kept)
    os.close(dropped)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_long_command_line_spills_over_the_environment_area():
    words = ["python3", "-S", "/x/orch.pyz", "agent", "--data-dir", "/tmp/" + "d" * 300]
    pid = os.fork()
    if pid == 0:
        ok = zygote.set_cmdline(words) and os.environ.get("PATH") is not None
        time.sleep(30 if ok else 0)
        os._exit(0 if ok else 1)
    try:
        title = Path(f"/proc/{pid}/cmdline")
        assert wait_for(lambda: title.read_bytes().startswith(b"python3 -S"), 5.0)
        assert title.read_bytes().rstrip(b"\0").decode() == " ".join(words)
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


@pytest.mark.parametrize(
    "role_imports",
    [
        "import orch.agent.main",
        # What `orch server` imports: orch.server.server, then run()'s own imports.
        "import orch.server.server, orch.server.api, orch.server.inline, orch.server.wsgi",
    ],
)
def test_the_shared_modules_are_ones_each_role_imports_anyway(role_imports):
    """Preloaded before the server is forked: none may burden a role that would not load it."""
    shared = zygote.SHARED_MODULES
    check = f"import sys; {role_imports}; print([m for m in {shared!r} if m not in sys.modules])"
    done = subprocess.run(
        [sys.executable, "-c", check],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        timeout=60,
    )
    assert done.stdout.strip() == "[]", done.stderr
