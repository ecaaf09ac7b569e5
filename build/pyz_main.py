"""The zipapp's `__main__.py` (put there by build/make_pyz.py): shiv's
bootstrap, with two things around it.

- The extraction dir (`~/.shiv`, or `SHIV_ROOT`) must be writable: if not,
  one line says so and how to pick another, instead of a traceback.
- Each build unpacks into its own dir, so old builds' dirs would pile up.
  Every run holds a shared lock on its build's `.<dir>.inuse` file; a run
  that unpacks a new build removes the dirs of older builds of the same file
  name whose lock it can take exclusively (no process runs from them).
  Older builds' dirs, made before this file existed, have no such file and
  are left alone.

Standard library only: it runs before anything is unpacked.
"""

import fcntl
import os
import re
import shutil
import sys
import zipfile
from pathlib import Path

import _bootstrap
from _bootstrap.environment import Environment

EXIT_UNUSABLE_ROOT = 1
_held = []  # the lock's fd, open for the life of the process


def in_use_lock(root: Path, build_dir: str) -> int:
    """A shared lock on the build's in-use file, for as long as we run."""
    path = root / f".{build_dir}.inuse"
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_SH)
        try:
            # A cleaner may have removed the file while we waited for it.
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def remove_old_builds(root: Path, name: str, build_id: str) -> None:
    """Dirs of other builds of this file name that no process runs from."""
    pattern = re.compile(re.escape(name) + r"_([0-9a-f]{64})")
    for entry in os.listdir(root):
        found = pattern.fullmatch(entry)
        if not found or found.group(1) == build_id:
            continue
        lock = root / f".{entry}.inuse"
        try:
            # No in-use file: a build without this entry, whose runs take no
            # lock; whether one runs cannot be told, so it is left alone.
            fd = os.open(lock, os.O_RDWR)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)  # in use: left for a later run
            continue
        shutil.rmtree(root / entry, ignore_errors=True)
        shutil.rmtree(root / f"{entry}.tmp", ignore_errors=True)
        for leftover in (root / f".{entry}_lock", lock):
            try:
                leftover.unlink()
            except FileNotFoundError:
                pass
        os.close(fd)


def prepare() -> None:
    """Check the extraction root, hold this build's lock, clear old builds."""
    with zipfile.ZipFile(sys.argv[0]) as archive:
        env = Environment.from_json(archive.read("environment.json").decode())
        target = _bootstrap.cache_path(archive, env.root, env.build_id)
    root = target.parent
    try:
        root.mkdir(parents=True, exist_ok=True)
        _held.append(in_use_lock(root, target.name))
    except OSError as exc:
        sys.stderr.write(
            f"orch: cannot unpack the zipapp into {root}: {exc.strerror or exc}; "
            f"set SHIV_ROOT to a writable directory (e.g. SHIV_ROOT=/tmp/orch-shiv)\n"
        )
        sys.exit(EXIT_UNUSABLE_ROOT)
    if not target.exists():
        name = target.name[: -len(env.build_id) - 1]
        remove_old_builds(root, name, env.build_id)


prepare()
_bootstrap.bootstrap()
