"""How the task supervisor finds a task's program on the task's PATH (`spawn.find_program`)."""

import errno
import os
import shutil

import pytest

from orch.agent.tasksup.spawn import find_program


def executable(path, mode: int = 0o755):
    path.write_text("#!/bin/sh\n")
    path.chmod(mode)
    return path


def test_the_first_executable_file_on_path_wins(tmp_path):
    dirs = [tmp_path / name for name in ("a", "b", "c", "d")]
    for directory in dirs:
        directory.mkdir()
    (dirs[0] / "prog").mkdir()  # a directory of that name is not the program
    executable(dirs[1] / "prog", 0o644)  # a file, but not executable
    executable(dirs[2] / "prog")
    executable(dirs[3] / "prog")
    path = os.pathsep.join(str(d) for d in dirs)
    assert find_program("prog", {"PATH": path}) == str(dirs[2] / "prog")


def test_a_program_with_a_slash_is_taken_as_it_is(tmp_path):
    assert find_program("./prog", {"PATH": str(tmp_path)}) == "./prog"


def test_a_dir_named_twice_on_path_is_looked_in_once(tmp_path, monkeypatch):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    executable(second / "prog")
    looked: list[str] = []
    real_access, real_isfile = os.access, os.path.isfile

    def access(path, mode):
        looked.append(str(path))
        return real_access(path, mode)

    def isfile(path):
        looked.append(str(path))
        return real_isfile(path)

    monkeypatch.setattr(os, "access", access)
    monkeypatch.setattr(os.path, "isfile", isfile)
    path = os.pathsep.join([str(first), str(first), str(second)])
    assert find_program("prog", {"PATH": path}) == str(second / "prog")
    assert looked.count(str(first / "prog")) == 1


def test_without_path_the_default_path_is_searched():
    assert find_program("sh", {}) == shutil.which("sh", path=os.defpath)


def test_a_file_found_but_not_executable_is_permission_denied(tmp_path):
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    executable(first / "prog", 0o644)
    executable(second / "prog", 0o600)
    path = os.pathsep.join([str(first), str(second)])
    with pytest.raises(PermissionError) as denied:
        find_program("prog", {"PATH": path})
    assert denied.value.errno == errno.EACCES
    assert denied.value.filename == str(second / "prog")  # the last found, as before
    with pytest.raises(FileNotFoundError) as missing:
        find_program("other", {"PATH": path})
    assert missing.value.filename == "other"
