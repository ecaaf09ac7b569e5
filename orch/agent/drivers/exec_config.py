"""The exec task's `config`, turned into what the supervisor starts: argv, env, cwd, user.

`command` as a string runs through `/bin/sh -c` (with `args` appended,
shell-quoted); as a list it is exec'd directly. `env` is merged over a base
environment (PATH, HOME, ORCH_*); `cwd` is relative to the task dir.
"""

from __future__ import annotations

import os
import shlex

from orch.agent.drivers.base import TaskContext
from orch.errors import DriverError

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def build_argv(config: dict) -> list[str]:
    """The argv for a task's `command` and `args`; raises DriverError."""
    command = config.get("command")
    args = config.get("args") or []
    if not isinstance(args, list) or not all(_scalar(a) for a in args):
        raise DriverError("config.args: must be a list of strings")
    args = [_text(a) for a in args]
    if isinstance(command, str) and command.strip():
        line = " ".join([command] + [shlex.quote(a) for a in args])
        return ["/bin/sh", "-c", line]
    if (
        isinstance(command, list)
        and command
        and all(isinstance(c, str) for c in command)
        and command[0]
    ):
        return list(command) + args
    raise DriverError("config.command: must be a non-empty string or list of strings")


def build_env(ctx: TaskContext) -> dict[str, str]:
    """Base env (PATH, HOME, ORCH_*) with the task's `env` merged over it."""
    env = {
        "PATH": os.environ.get("PATH") or DEFAULT_PATH,
        "HOME": os.environ.get("HOME") or ctx.task_dir,
    }
    env.update({k: str(v) for k, v in ctx.env.items()})
    extra = ctx.config.get("env") or {}
    if not isinstance(extra, dict):
        raise DriverError("config.env: must be an object of strings")
    for key, value in extra.items():
        if not key or "=" in key or "\0" in key or not _scalar(value):
            raise DriverError(f"config.env.{key}: must be a string")
        env[key] = _text(value)
    return env


def resolve_cwd(ctx: TaskContext) -> str:
    """`cwd` from the config (relative to the task dir), default the task dir."""
    cwd = ctx.config.get("cwd")
    if cwd is None or cwd == "":
        return ctx.task_dir
    if not isinstance(cwd, str):
        raise DriverError("config.cwd: must be a string")
    path = os.path.join(ctx.task_dir, cwd)
    if not os.path.isdir(path):
        raise DriverError(f"config.cwd: {cwd} is not a directory")
    return path


def resolve_user(name: str) -> dict:
    """uid, gid and groups of a local user, for running tasks as them."""
    import grp
    import pwd

    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise DriverError(f"task user {name} does not exist on this node") from None
    groups = sorted({g.gr_gid for g in grp.getgrall() if name in g.gr_mem} | {entry.pw_gid})
    return {"name": name, "uid": entry.pw_uid, "gid": entry.pw_gid, "groups": groups}


def _scalar(value) -> bool:
    return isinstance(value, (str, int, float, bool)) and not (
        isinstance(value, str) and "\0" in value
    )


def _text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
