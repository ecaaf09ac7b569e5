"""lock_data_dir: one holder per data dir, its PID in the lock file, freed on close."""

import os

import pytest

from orch.datadir import LOCK_FILE, lock_data_dir
from orch.errors import DataDirError, DataDirInUse


def test_a_second_lock_is_refused_naming_the_holder(tmp_path):
    data = tmp_path / "data"
    fd = lock_data_dir(str(data), "server")  # creates the dir
    try:
        assert (data / LOCK_FILE).read_text() == f"{os.getpid()}\n"
        # flock is per open file: a second open, even in this process, is refused.
        with pytest.raises(DataDirInUse) as refused:
            lock_data_dir(str(data), "server")
        assert f"data dir {data} " in refused.value.message
        assert f"pid {os.getpid()}" in refused.value.message
    finally:
        os.close(fd)
    # Closed (as at the holder's death): free again, no stale lock to remove.
    os.close(lock_data_dir(str(data), "server"))


def test_the_lock_is_not_inherited_by_children(tmp_path):
    fd = lock_data_dir(str(tmp_path), "agent")
    try:
        assert not os.get_inheritable(fd)
    finally:
        os.close(fd)


def test_a_data_dir_that_cannot_be_made_is_a_data_dir_error(tmp_path):
    """A file where the dir should be was a FileExistsError traceback at start."""
    taken = tmp_path / "afile"
    taken.write_text("")
    with pytest.raises(DataDirError) as refused:
        lock_data_dir(str(taken), "server")
    assert refused.value.message == f"data dir {taken}: not a directory"
    with pytest.raises(DataDirError) as refused:
        lock_data_dir(str(taken / "below"), "agent")
    assert refused.value.message == f"data dir {taken / 'below'}: Not a directory"
