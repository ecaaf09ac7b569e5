"""The agent's own small state on disk: its node id and its allocations.

    <data_dir>/node_id
    <data_dir>/node_secret                          (0600) proves the node id is ours
    <data_dir>/allocs/<alloc_id>/alloc.json        spec, task states, handles
    <data_dir>/allocs/<alloc_id>/<task>/stdout.log  (and stderr.log)
    <data_dir>/spare/                               emptied allocation dirs (`spare.py`)

Files are written whole to a temporary name and renamed, so a crash leaves
either the old or the new version. An allocation's first version is written
in place, in one write to a file created for it: a crash that leaves it
empty or cut short loses only an allocation none of whose tasks had started
(the first write comes before any start), which the server pushes again, as
it does one the agent never wrote. The rename costs as much as the write on
a busy disk, and most batch allocations are written once.

`allocs/` asks ext2/3/4 to spread the directories made in it (the TOPDIR
flag, `chattr +T`): see `spread_subdirs`.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import shutil
import struct
import threading
import uuid

from orch import fastjson
from orch.agent.spare import SpareDirs

log = logging.getLogger(__name__)

ALLOC_FILE = "alloc.json"
LOG_TYPES = ("stdout", "stderr")
# <linux/fs.h>: the inode flags ioctls (they pass an int) and the "top of a
# directory hierarchy" flag.
FS_IOC_GETFLAGS = 0x80086601
FS_IOC_SETFLAGS = 0x40086602
FS_TOPDIR_FL = 0x00020000


class AgentStore:
    """Reads and writes `<data_dir>`; safe to call from many threads."""

    def __init__(self, data_dir: str):
        self.data_dir = os.path.abspath(data_dir)
        self.allocs_dir = os.path.join(self.data_dir, "allocs")
        os.makedirs(self.allocs_dir, exist_ok=True)
        spread_subdirs(self.allocs_dir)
        self._lock = threading.Lock()
        self._removed: set[str] = set()
        self._made: set[str] = set()  # allocation dirs made by this store
        self.spares = SpareDirs(
            os.path.join(self.data_dir, "spare"), keep_empty=tuple(f"{k}.log" for k in LOG_TYPES)
        )

    def node_id(self, override: str | None = None) -> str:
        """The persisted node id (created once); an override replaces it."""
        path = os.path.join(self.data_dir, "node_id")
        if override:
            _write_atomic(path, override.encode() + b"\n")
            return override
        try:
            with open(path, encoding="utf-8") as f:
                node_id = f.read().strip()
            if node_id:
                return node_id
        except FileNotFoundError:
            pass
        node_id = str(uuid.uuid4())
        _write_atomic(path, node_id.encode() + b"\n")
        return node_id

    def node_secret(self) -> str:
        """The node's secret (created once, readable by the agent's user only).

        Like Nomad's node SecretID: the server accepts a register or heartbeat
        for this node id only with it, so no one else can take the node over."""
        path = os.path.join(self.data_dir, "node_secret")
        try:
            with open(path, encoding="utf-8") as f:
                secret = f.read().strip()
            if secret:
                return secret
        except FileNotFoundError:
            pass
        secret = secrets.token_hex(32)
        tmp = f"{path}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(secret + "\n")
        os.replace(tmp, path)
        return secret

    # Allocation ids and task names are validated (orch.validation.fields: no
    # '/', no '..'), so a path is their plain concatenation: os.path.join
    # costs ~2 us a call, and a job's start and collection made ~10 of them.

    def alloc_dir(self, alloc_id: str) -> str:
        return f"{self.allocs_dir}/{alloc_id}"

    def task_dir(self, alloc_id: str, task: str) -> str:
        return f"{self.allocs_dir}/{alloc_id}/{task}"

    def log_path(self, alloc_id: str, task: str, kind: str) -> str:
        return f"{self.allocs_dir}/{alloc_id}/{task}/{kind}.log"

    def save_alloc(self, alloc_id: str, doc: dict | bytes, tasks: tuple[str, ...] = ()) -> None:
        """Persist an allocation (a document, or its JSON); a no-op once it was
        removed. Its first write makes its dir, from a spare one with these
        task dirs if there is one."""
        raw = doc if isinstance(doc, bytes) else fastjson.dumps(doc, escape=True)
        path = f"{self.allocs_dir}/{alloc_id}/{ALLOC_FILE}"
        with self._lock:
            if alloc_id in self._removed:
                return
            first = alloc_id not in self._made
            if first:  # its first write: make the directory
                if not (tasks and self.spares.take(self.alloc_dir(alloc_id), tasks)):
                    make_dir(self.alloc_dir(alloc_id))
                self._made.add(alloc_id)
            try:
                if not (first and _write_new(path, raw)):
                    _write_atomic(path, raw)
            except FileNotFoundError:  # removed behind our back: make it again
                os.makedirs(self.alloc_dir(alloc_id), exist_ok=True)
                _write_atomic(path, raw)

    def remove_alloc(self, alloc_id: str, reuse: bool = False) -> None:
        """Delete the allocation's directory: state and logs. With `reuse`
        (nothing of its tasks is left), its emptied dirs may be kept as spares.

        Marked removed under the lock (no write after that brings a file
        back), deleted outside it: other allocations' writes do not wait."""
        with self._lock:
            self._removed.add(alloc_id)
            self._made.discard(alloc_id)
        path = self.alloc_dir(alloc_id)
        if not (reuse and self.spares.give(path)):
            shutil.rmtree(path, ignore_errors=True)

    def forget_removal(self, alloc_id: str) -> None:
        """Allow an allocation id to be stored again (accepted anew)."""
        with self._lock:
            self._removed.discard(alloc_id)

    def load_allocs(self) -> list[dict]:
        """Every persisted allocation document; unreadable ones are skipped."""
        docs = []
        for name in sorted(os.listdir(self.allocs_dir)):
            path = os.path.join(self.allocs_dir, name, ALLOC_FILE)
            try:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
                if not text:  # created, not yet written: as if never written
                    continue
                docs.append(fastjson.loads(text))
            except FileNotFoundError:
                continue
            except (OSError, ValueError) as exc:
                log.warning("skipping unreadable allocation state path=%s error=%s", path, exc)
        return docs


def make_dir(path: str) -> None:
    """`os.makedirs(path, exist_ok=True)`, in one system call when the parent is there.

    makedirs stats the parent first, and the path again when it exists:
    three calls where one does, for every allocation's dir and task dir."""
    try:
        os.mkdir(path)
    except FileNotFoundError:
        os.makedirs(path, exist_ok=True)
    except FileExistsError:
        if not os.path.isdir(path):
            raise


def spread_subdirs(path: str) -> bool:
    """Set the TOPDIR flag on `path` where the file system has it; True if set.

    ext4 puts a new file's inode in its directory's block group, and a
    subdirectory's near its parent, so every allocation's six inodes (its
    dir, task dir, alloc.json, run record, two logs) land in the one group
    of `allocs/`, where the garbage collection frees them again. Without a
    journal (this host's ext4), allocating an inode walks past every one
    freed in that group in the last 1-5 minutes (`recently_deleted`):
    250-340 us of kernel CPU a create here once a few thousand jobs had run,
    against ~20 us in a quiet group (bench/README.md). Under a TOPDIR parent
    ext4 spreads new directories over the groups (Orlov), each allocation's
    files follow its dir, and no group piles up the churn. Only a placement
    hint: other file systems refuse the ioctl, and nothing else changes.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        (flags,) = struct.unpack("i", fcntl.ioctl(fd, FS_IOC_GETFLAGS, b"\0" * 4))
        if not flags & FS_TOPDIR_FL:
            fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("i", flags | FS_TOPDIR_FL))
        return True
    except OSError as exc:  # ENOTTY, EOPNOTSUPP (tmpfs, xfs, ...), EPERM
        log.debug("no TOPDIR flag on %s: %s", path, exc)
        return False
    finally:
        os.close(fd)


def _write_new(path: str, raw: bytes) -> bool:
    """Create `path` with `raw` in one write; False if it exists already."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    except FileExistsError:  # an earlier agent's: replace it whole
        return False
    try:
        view = memoryview(raw)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)
    return True


def _write_atomic(path: str, raw: bytes) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(raw)
    os.replace(tmp, path)
