"""The zipapp's `__main__.py` (put there by build/make_pyz.py): shiv's
bootstrap, with three things around it.

- A fast path: once this build is unpacked, a start reads the build id from
  the archive through the importer that loaded this file (its directory is
  already in memory), puts the unpacked site-packages first on sys.path and
  calls orch's entry point. Shiv's bootstrap would import zipfile, hashlib,
  compileall, shutil, subprocess and runpy and open the archive twice more
  first, about 40 ms of CPU in every server, agent and launcher started.
  Shiv's own path still does the first unpacking, and any start it is asked
  to treat specially (``SHIV_FORCE_EXTRACT``, ``SHIV_ENTRY_POINT``, ...).

- `orch dev` started without ``-S`` runs again with it (one exec, before
  anything is imported): its servers and agents are forked from it
  (orch/dev/zygote.py), and must carry no more of the host's site-packages
  (their ``.pth`` start-up hooks) than the ``python3 -S orch.pyz agent``
  they stand for.
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
import sys

EXIT_UNUSABLE_ROOT = 1
SITE_DIRS = ("site-packages", "dist-packages")
_held = []  # the lock's fd, open for the life of the process


def in_use_lock(root, build_dir: str) -> int:
    """A shared lock on the build's in-use file, for as long as we run."""
    path = os.path.join(root, f".{build_dir}.inuse")
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


def unpacked_site_packages():
    """(This build's unpacked site-packages, its entry point), or None: shiv's path must run.

    The same directory shiv's cache_path names: ``$SHIV_ROOT`` (or the
    archive's root, or ``~/.shiv``) / ``<file name>_<build id>``."""
    if any(key.startswith("SHIV_") and key != "SHIV_ROOT" for key in os.environ):
        return None  # a shiv setting we do not interpret: shiv's own path
    loader = globals().get("__loader__")
    try:
        raw = loader.get_data("environment.json").decode()  # type: ignore[union-attr]
    except (AttributeError, OSError):
        return None
    import json  # every orch process imports it anyway

    env = json.loads(raw)
    if env.get("preamble") or env.get("script") or env.get("extend_pythonpath"):
        return None
    if not env.get("entry_point") or env.get("no_modify"):
        return None
    root = os.environ.get("SHIV_ROOT") or env.get("root") or "~/.shiv"
    if root.startswith("$"):
        root = os.environ.get(root[1:], root[1:])
    name = os.path.basename(os.path.realpath(sys.argv[0]))
    target = os.path.join(os.path.expanduser(root), f"{name}_{env['build_id']}")
    site_packages = os.path.join(target, "site-packages")
    # The lock first: a newer build's first run removes an unpacked build
    # only while no process holds its lock, so once held the dir stays.
    try:
        _held.append(in_use_lock(os.path.dirname(target), os.path.basename(target)))
    except OSError:
        return None  # shiv's path says why, in its one line
    try:
        # A .pth file would need site.addsitedir to run it: shiv's path does.
        if any(entry.endswith(".pth") for entry in os.listdir(site_packages)):
            return None
    except OSError:
        return None  # not unpacked yet: shiv's path unpacks it
    return site_packages, env["entry_point"]


def fast_start(site_packages: str, entry_point: str):
    """Run orch from an unpacked build, its site-packages where shiv puts it:
    before the host's first site-packages directory, else last."""
    index = next(
        (i for i, p in enumerate(sys.path) if os.path.basename(p) in SITE_DIRS), len(sys.path)
    )
    sys.path.insert(index, site_packages)
    module, _, name = entry_point.partition(":")
    sys.exit(getattr(__import__(module, fromlist=[name]), name)())


def remove_old_builds(root, name: str, build_id: str) -> None:
    """Dirs of other builds of this file name that no process runs from."""
    import re
    import shutil
    from pathlib import Path

    root = Path(root)
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
    import zipfile

    import _bootstrap
    from _bootstrap.environment import Environment

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


def command(argv):
    """The subcommand named in ``argv`` (the first word not an option or the
    value of the top-level ``--log-level``)."""
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--log-level":
            skip = True
        elif not arg.startswith("-"):
            return arg
    return None


def without_site() -> None:
    """Run `orch dev` again under ``-S`` when site ran (see the docstring)."""
    if sys.flags.no_site or command(sys.argv[1:]) != "dev" or not sys.executable:
        return
    argv0 = os.path.abspath(sys.argv[0])
    try:
        os.execv(sys.executable, [sys.executable, "-S", argv0, *sys.argv[1:]])
    except OSError:
        pass  # run on as we are: the children then carry what site loaded


def main() -> None:
    without_site()
    found = unpacked_site_packages()
    if found is not None:
        fast_start(*found)
    import _bootstrap

    prepare()
    _bootstrap.bootstrap()


main()
