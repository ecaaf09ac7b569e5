"""The local test image (busybox on an empty rootfs) and the engine gate for tests.

No registry is reachable from CI or a developer machine, so tests never pull:
`ensure_test_image` imports `orch-test/busybox:latest` from the host's
busybox-static, as `.ci/install-docker.sh` does. `require_engine` returns a
client, skips outside CI when no engine answers, and fails in CI.
"""

from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
import tarfile
import time

import pytest

TEST_IMAGE = "orch-test/busybox:latest"
LABEL_ALLOC = "orch.alloc_id"
BUSYBOX_PATHS = ("/bin/busybox", "/usr/bin/busybox")
PT_INTERP = 3  # an ELF program header naming a dynamic loader


def require_engine():
    """A docker client for the local engine; skip (not in CI) or fail without one."""
    reason = None
    try:
        import docker
    except ImportError:
        docker, reason = None, "the docker python package is not installed"
    if docker is not None:
        try:
            client = docker.from_env(timeout=30)
            client.ping()
            return client
        except Exception as exc:  # noqa: BLE001 - any failure means "no engine": the tests skip
            host = os.environ.get("DOCKER_HOST") or "the default socket"
            reason = (
                f"no docker engine answers at {host} ({exc.__class__.__name__}); "
                "run `bash .ci/install-docker.sh` as root"
            )
    if os.environ.get("CI") == "true":
        pytest.fail(f"docker tests must run in CI: {reason}")
    pytest.skip(reason)


def ensure_test_image(client, tag: str = TEST_IMAGE) -> str:
    """Import the busybox test image unless the engine already has it."""
    import docker.errors

    try:
        client.images.get(tag)
        return tag
    except docker.errors.ImageNotFound:
        pass
    repository, _, version = tag.rpartition(":")
    client.api.import_image_from_data(
        rootfs_tar(find_static_busybox()),
        repository=repository,
        tag=version,
        changes=["ENV PATH=/bin", 'CMD ["/bin/sh"]'],
    )
    client.images.get(tag)
    return tag


def find_static_busybox() -> str:
    """A statically linked busybox on this host (Debian: busybox-static)."""
    for path in (*BUSYBOX_PATHS, shutil.which("busybox") or ""):
        if path and os.path.isfile(path) and not _dynamic(path):
            return path
    raise RuntimeError("no static busybox on this host: apt-get install busybox-static")


def rootfs_tar(busybox: str) -> bytes:
    """A tar of /bin/busybox, a symlink per applet, /tmp, /www and /etc files."""
    applets = subprocess.run(
        [busybox, "--list"], capture_output=True, text=True, check=True, timeout=10
    ).stdout.split()
    buf = io.BytesIO()
    now = time.time()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, mode in (("bin", 0o755), ("etc", 0o755), ("tmp", 0o1777), ("www", 0o755)):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, now
            tar.addfile(info)
        tar.add(busybox, arcname="bin/busybox")
        for applet in applets:
            if applet != "busybox":
                info = tarfile.TarInfo(f"bin/{applet}")
                info.type, info.linkname, info.mtime = tarfile.SYMTYPE, "busybox", now
                tar.addfile(info)
        for name, text in (
            ("etc/passwd", "root:x:0:0:root:/:/bin/sh\n"),
            ("etc/group", "root:x:0:\n"),
        ):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, now
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def remove_containers(client, label_value: str | None = None) -> int:
    """Remove containers orch created (all, or one allocation's); returns how many."""
    label = LABEL_ALLOC if label_value is None else f"{LABEL_ALLOC}={label_value}"
    removed = 0
    # ignore_removed: docker-py lists, then inspects each container; one the
    # agent removed in between raised NotFound (a CI teardown). Every list of
    # the tests' containers says so too.
    for container in client.containers.list(
        all=True, ignore_removed=True, filters={"label": label}
    ):
        try:
            container.remove(force=True)
            removed += 1
        except Exception:  # noqa: BLE001 - best effort: it may be gone already
            pass
    return removed


def _dynamic(path: str) -> bool:
    """Does an ELF64 little-endian binary ask for a dynamic loader?"""
    try:
        with open(path, "rb") as f:
            header = f.read(64)
            if header[:4] != b"\x7fELF" or header[4] != 2:
                return True
            (phoff,) = struct.unpack_from("<Q", header, 32)
            phentsize, phnum = struct.unpack_from("<HH", header, 54)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except (OSError, struct.error):
        return True
    return any(struct.unpack_from("<I", table, i * phentsize)[0] == PT_INTERP for i in range(phnum))


if __name__ == "__main__":
    import docker

    print(ensure_test_image(docker.from_env(timeout=60)))
