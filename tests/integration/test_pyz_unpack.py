"""Where the zipapp unpacks: a clear line when it cannot, and no pile of old
builds' dirs (build/pyz_main.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import zipfile

from orch import __version__

from harness import clean_env, wait_until

BUILD_DIR = re.compile(r"orch\.pyz_[0-9a-f]{64}")


def run(pyz, *args, env=None):
    return subprocess.run(
        [sys.executable, "-S", str(pyz), *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env=clean_env(env),
    )


def another_build(pyz, dest, build_id: str):
    """The same zipapp under another build id, as the next build would be."""
    dest.mkdir()
    out = dest / "orch.pyz"
    data = pyz.read_bytes()
    with zipfile.ZipFile(pyz) as old, open(out, "wb") as f:
        f.write(data[: data.index(b"PK")])
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_DEFLATED) as new:
            for info in old.infolist():
                body = old.read(info)
                if info.filename == "environment.json":
                    env = json.loads(body)
                    env["build_id"] = build_id
                    body = json.dumps(env).encode()
                new.writestr(info, body)
    return out


def builds(root):
    return sorted(p.name[-64:] for p in root.iterdir() if BUILD_DIR.fullmatch(p.name))


def test_an_unwritable_home_gives_one_line_naming_shiv_root(pyz, tmp_path):
    home = tmp_path / "not-a-dir"
    home.write_text("")  # as root, only a file stops a mkdir under it
    result = run(pyz, "version", env={"HOME": str(home), "SHIV_ROOT": ""})
    assert result.returncode == 1
    assert result.stderr == (
        f"orch: cannot unpack the zipapp into {home}/.shiv: Not a directory; set "
        "SHIV_ROOT to a writable directory (e.g. SHIV_ROOT=/tmp/orch-shiv)\n"
    )
    ok = run(pyz, "version", env={"HOME": str(home), "SHIV_ROOT": str(tmp_path / "shiv")})
    assert (ok.returncode, ok.stdout.strip()) == (0, f"orch {__version__}"), ok.stderr


def test_old_builds_are_removed_unless_in_use(pyz, tmp_path):
    root = tmp_path / "shiv"
    env = {"SHIV_ROOT": str(root)}
    first = another_build(pyz, tmp_path / "1", "1" * 64)
    second = another_build(pyz, tmp_path / "2", "2" * 64)
    third = another_build(pyz, tmp_path / "3", "3" * 64)
    legacy = root / f"orch.pyz_{'f' * 64}"  # unpacked by a build without the lock
    legacy.mkdir(parents=True)

    assert run(first, "version", env=env).returncode == 0
    assert builds(root) == ["1" * 64, "f" * 64]
    assert run(second, "version", env=env).returncode == 0
    assert builds(root) == ["2" * 64, "f" * 64]  # the first is gone, the legacy one kept

    # A server runs from the second build: a third build leaves that one be.
    server = subprocess.Popen(
        [
            sys.executable,
            "-S",
            str(second),
            "server",
            "--port",
            "0",
            "--data-dir",
            str(tmp_path / "data"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env=clean_env(env),
    )
    try:
        wait_until(
            lambda: "server listening on" in server.stderr.readline(),
            30,
            what="the server from the second build",
        )
        assert run(third, "version", env=env).returncode == 0
        assert builds(root) == ["2" * 64, "3" * 64, "f" * 64]
    finally:
        server.kill()
        server.wait()
    assert run(first, "version", env=env).returncode == 0
    assert builds(root) == ["1" * 64, "f" * 64]
    assert sorted(p.name for p in root.iterdir() if p.name.endswith(".inuse")) == [
        f".orch.pyz_{'1' * 64}.inuse"
    ]
