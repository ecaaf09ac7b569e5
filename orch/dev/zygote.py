"""`orch dev`'s children forked from the launcher instead of exec'ed.

An exec'ed server or agent pays the interpreter's start, the zipapp's
bootstrap and its imports (~0.25 s of CPU each); `orch dev` started four of
them. The launcher imports an agent's modules once and forks: each child then
becomes what ``python3 -S orch.pyz agent ...`` would be (its own session,
stdin, environment, ``sys.argv``, signal dispositions and command line as
`ps` shows it), runs the same entry point with the same arguments, and exits
with its code without ever returning into the launcher's frames.

Fork only where it is safe: Linux, and no thread in the launcher yet (a fork
copies only the calling thread; a lock another thread held would stay held).
Otherwise, or with ``ORCH_DEV_SPAWN=exec``, the launcher execs as before.
"""

from __future__ import annotations

import atexit
import ctypes
import gc
import os
import signal
import sys
import threading
import traceback

SPAWN_ENV = "ORCH_DEV_SPAWN"  # "exec" forces the exec path (a debugging aid)
PR_SET_PDEATHSIG = 1
# Imported by the server and by every agent alike: loaded before the server
# is forked (a unit test holds both sides to this list).
SHARED_MODULES = (
    "bottle",
    "orch.httpjson",
    "orch.security",
    "orch.structs",
    "orch.transport",
    "orch.validation",
    "orch.wsgichannel",
)
# The rest of an agent's imports: loaded once the server is forked, while it
# imports its own, so that neither carries the other's modules (memory).
AGENT_MODULES = ("orch.agent.main",)


def can_fork(environ=os.environ) -> bool:
    """Whether the children may be forked from this process right now."""
    if environ.get(SPAWN_ENV, "fork") == "exec":
        return False
    return sys.platform.startswith("linux") and threading.active_count() == 1


def preload(modules: tuple[str, ...]) -> None:
    """Import, once, modules the children to be forked next would import."""
    for name in modules:
        __import__(name)


class Forked:
    """A forked child, with the part of `subprocess.Popen` the launcher uses."""

    def __init__(self, pid: int):
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                return self.returncode
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self) -> int:
        while self.returncode is None:
            try:
                _, status = os.waitpid(self.pid, 0)
            except ChildProcessError:
                self.returncode = -1  # reaped by someone else: nothing more to learn
                break
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, signum)


def fork_child(argv0: list[str], args: list[str], env: dict) -> Forked:
    """Fork a child that runs ``orch <args>`` as exec'ing ``argv0 + args`` would."""
    for stream in (sys.stdout, sys.stderr):
        stream.flush()  # else the child would write the launcher's buffer again
    # What exists now is shared copy-on-write; kept out of the collector's
    # passes, it stays shared instead of being copied page by page.
    gc.freeze()
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return Forked(pid)
    code = 1
    try:
        become(argv0 + args, args, env, parent)
        code = run_main(args)
    except BaseException:  # noqa: BLE001 - never unwind into the launcher's frames
        traceback.print_exc()
    finally:
        os._exit(code)
    raise AssertionError("unreachable")  # pragma: no cover


def become(argv: list[str], args: list[str], env: dict, parent: int) -> None:
    """Make this fresh fork look like the exec'ed child would from the inside."""
    os.setsid()  # a Ctrl-C in the terminal reaches only the launcher
    die_with_parent(parent)
    # A fresh interpreter's dispositions, not the launcher's counting handlers.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    close_fds(keep=_build_locks())
    os.environ.clear()
    os.environ.update(env)
    # sys.argv[0] as exec would give it: the zipapp's path (or orch/__main__.py).
    sys.argv = [os.path.abspath(sys.argv[0]), *args]
    set_cmdline(argv)


def run_main(args: list[str]) -> int:
    """`orch <args>`'s entry point, then what the interpreter's exit would do."""
    from orch.__main__ import main

    try:
        code = main(args)
    except SystemExit as exc:
        code = exit_code(exc.code)
    # os._exit skips these: non-daemon threads joined, atexit handlers
    # (logging's flush among them) run, as at an ordinary exit.
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    return code


def exit_code(value) -> int:
    """The status `sys.exit(value)` gives: a non-int is printed, and means 1."""
    if value is None or isinstance(value, int):
        return value or 0
    print(value, file=sys.stderr)
    return 1


def die_with_parent(parent: int | None = None) -> None:
    """SIGTERM this child when the launcher dies (Linux), forked or about to
    exec; with ``parent``, at once if the launcher died before the prctl."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if parent is not None and os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def _build_locks() -> set[int]:
    """The zipapp's shared lock on its unpacked build (build/pyz_main.py): kept,
    so the build stays marked in use for as long as this child runs from it."""
    main = sys.modules.get("__main__")
    return {fd for fd in getattr(main, "_held", ()) if isinstance(fd, int)}


def close_fds(keep: set[int]) -> None:
    """Close every descriptor above stderr but ``keep``: an exec'ed child got
    only 0-2 (Popen's close_fds), and the launcher's data-dir lock must not
    outlive the launcher in its children."""
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        fds = list(range(3, os.sysconf("SC_OPEN_MAX")))
    for fd in fds:
        if fd > 2 and fd not in keep:
            try:
                os.close(fd)
            except OSError:
                pass  # the listing's own descriptor, already closed


def _stack_areas() -> tuple[int, int, int, int] | None:
    """(arg_start, arg_end, env_start, env_end) of this process, from /proc."""
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rindex(b")") + 2 :].split()
    try:
        areas = tuple(int(x) for x in fields[45:49])  # fields 48-51 of proc(5)
    except ValueError:
        return None
    if len(areas) != 4 or not areas[0] or areas[1] != areas[2]:
        return None
    return areas


def set_cmdline(argv: list[str]) -> bool:
    """Show ``argv`` as this process's command line (`ps`, /proc/<pid>/cmdline).

    As setproctitle(3) does: the words, space-separated, over the original
    argument strings and, past them, the environment strings, whose copies
    move to the heap first (libc's getenv and exec read them). The kernel
    then reads the line as one string up to its NUL. False where /proc does
    not say where those areas are."""
    areas = _stack_areas()
    if areas is None:
        return False
    arg_start, arg_end, env_start, env_end = areas
    try:
        libc = ctypes.CDLL(None)
        libc.strdup.restype = ctypes.c_void_p
        libc.strdup.argtypes = [ctypes.c_void_p]
        environ = ctypes.POINTER(ctypes.c_void_p).in_dll(libc, "environ")
    except (OSError, ValueError, AttributeError):
        return False
    i = 0
    while environ and environ[i]:
        if env_start <= environ[i] < env_end:
            environ[i] = libc.strdup(environ[i])
        i += 1
    size = env_end - arg_start
    title = " ".join(argv).encode(errors="surrogateescape")[: size - 1]
    ctypes.memset(arg_start, 0, size)
    ctypes.memmove(arg_start, title, len(title))
    if len(title) < arg_end - arg_start - 1:
        # A non-NUL last byte of the argument area tells the kernel to read the
        # line up to the title's NUL, not the whole area with its NUL padding.
        ctypes.memset(arg_end - 1, ord("."), 1)
    return True
