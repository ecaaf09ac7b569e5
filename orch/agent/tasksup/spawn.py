"""Starting a task without subprocess: posix_spawn, as subprocess would start it.

The task supervisor's start path (`server.py`) for tasks without a `user`:
subprocess's own path cost twice the supervisor's CPU a start. Stdlib only:
the supervisor imports it.
"""

from __future__ import annotations

import errno
import os
import signal

# What subprocess's restore_signals puts back to default in a task: the
# supervisor ignores SIGPIPE; SIGXFSZ as Python sets it.
RESTORED_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGPIPE", "SIGXFZ", "SIGXFSZ") if hasattr(signal, name)
)


def posix_spawn_task(spec: dict, stdio: tuple[int, int, int], home_dir: int) -> int:
    """The task started by posix_spawn, as subprocess would start it without a user.

    subprocess's own path costs twice the supervisor's CPU a start (its
    error pipe, the fd sweep, the environment encoded in Python, the Popen
    object). The child gets only stdio: every fd of the supervisor is
    close-on-exec (`no_inherited_fds`). posix_spawn has no cwd in Python
    3.11, so the supervisor, single-threaded, steps into it for the start.
    """
    env = spec["env"]
    program = find_program(spec["argv"][0], env)
    os.chdir(spec["cwd"])
    try:
        return os.posix_spawn(
            program,
            spec["argv"],
            env,
            file_actions=[(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in enumerate(stdio)],
            setpgroup=0,
            setsigdef=RESTORED_SIGNALS,
        )
    finally:
        os.fchdir(home_dir)


def find_program(program: str, env: dict) -> str:
    """`program` looked up on the task's PATH, as subprocess does; raises FileNotFoundError."""
    if os.sep in program:
        return program
    # Not shutil.which: it skips a file found but not executable, and the
    # task's error must say "permission denied" there, as execvp would.
    # A miss is one access() without an exception (isfile raises and catches
    # one per missing file), a dir named twice on PATH is looked in once, and
    # not os.get_exec_path (its warnings guard alone costs a miss or two): the
    # lookup runs at every start, and agents' PATHs are often long.
    path = env.get("PATH")
    dirs = list(dict.fromkeys((os.defpath if path is None else path).split(os.pathsep)))
    for directory in dirs:
        candidate = os.path.join(directory, program)
        if os.access(candidate, os.X_OK) and os.path.isfile(candidate):
            return candidate
    denied = None  # nothing runnable: as execvp, say so if a file was there
    for directory in dirs:
        candidate = os.path.join(directory, program)
        if os.path.isfile(candidate):
            denied = candidate
    if denied is not None:
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), denied)
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), program)


def no_inherited_fds() -> None:
    """Every fd above stdio close-on-exec: posix_spawn closes nothing itself."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        names = [str(fd) for fd in range(3, 256)]
    for name in names:
        fd = int(name)
        if fd > 2:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass


def open_cwd() -> int:
    """An fd of the current directory to fchdir back to; of / if it is gone."""
    flags = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
    try:
        return os.open(".", flags)
    except OSError:
        return os.open("/", flags)
