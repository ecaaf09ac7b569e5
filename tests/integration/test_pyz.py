"""The zipapp on its own: copied into an empty directory, it still runs."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

from orch import __version__

from harness import ROOT, free_port


def run(args, cwd, timeout=60):
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_lone_pyz_prints_help_and_version(pyz, tmp_path):
    alone = tmp_path / "empty"
    alone.mkdir()
    shutil.copy(pyz, alone / "orch.pyz")
    result = run(["orch.pyz", "--help"], alone)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: orch")
    for command in ("server", "agent", "dev", "job", "node", "alloc"):
        assert command in result.stdout
    result = run(["orch.pyz", "version"], alone)
    assert (result.returncode, result.stdout.strip()) == (0, f"orch {__version__}")
    assert sorted(p.name for p in alone.iterdir()) == ["orch.pyz"]


def test_pyz_holds_every_package_and_psutils_native_part(pyz):
    names = zipfile.ZipFile(pyz).namelist()
    for module in (
        "orch/__main__.py",
        "orch/client.py",
        "orch/cli/commands.py",
        "orch/dev/launcher.py",
        "orch/server/server.py",
        "orch/agent/agent.py",
        "bottle.py",
        "waitress/__init__.py",
        "requests/__init__.py",
        "docker/__init__.py",
    ):
        assert f"site-packages/{module}" in names, module
    assert any(n.startswith("site-packages/psutil/_psutil_") and n.endswith(".so") for n in names)


def test_client_command_against_nothing_exits_1(pyz, tmp_path):
    address = f"http://127.0.0.1:{free_port()}"
    result = run([str(pyz), "job", "status", "--address", address], tmp_path)
    assert result.returncode == 1
    assert "cannot reach orch server" in result.stderr


def test_python_dash_m_orch_from_the_checkout():
    result = run(["-m", "orch", "--help"], ROOT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: orch")
