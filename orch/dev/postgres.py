"""A throwaway PostgreSQL instance: `orch dev --servers 3`, the tests and benches.

initdb into a fresh directory and start `postgres` on a free loopback port.
PostgreSQL refuses to run as root, so when we are root the directory is given
to an unprivileged user (Debian's `postgres`, else `nobody`) and the server
runs as that user. Trust authentication on loopback only: the instance is a
local scratch database, never a deployment.
"""

from __future__ import annotations

import glob
import logging
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "PostgreSQL's server programs (initdb, postgres) were not found: install "
    "Debian's `postgresql` package (apt-get install postgresql), or pass "
    "--database postgresql://... for a server you already run"
)


class PostgresUnavailable(RuntimeError):
    """The machine has no PostgreSQL server programs."""


def find_bindir() -> str:
    """The directory holding initdb and postgres (Debian keeps them off PATH)."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("postgres"):
        return os.path.dirname(os.path.realpath(on_path))
    for bindir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(os.path.join(bindir, "initdb")):
            return bindir
    raise PostgresUnavailable(INSTALL_HINT)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_as() -> pwd.struct_passwd | None:
    """The unprivileged user to run as when we are root, else None (ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise PostgresUnavailable("running as root and no unprivileged user to run PostgreSQL as")


def _demote(user: pwd.struct_passwd | None):
    if user is None:
        return None

    def drop() -> None:
        os.setgid(user.pw_gid)
        os.setuid(user.pw_uid)

    return drop


class ThrowawayPostgres:
    """One private PostgreSQL server; `url` once started, gone after stop()."""

    def __init__(self, base_dir: str | None = None, *, dbname: str = "orch"):
        self.bindir = find_bindir()
        self.user = _run_as()
        self._own_dir = base_dir is None
        self.base_dir = base_dir or tempfile.mkdtemp(prefix="orch-pg-")
        self.data_dir = os.path.join(self.base_dir, "pgdata")
        self.port = 0
        self.dbname = dbname
        self.proc: subprocess.Popen | None = None

    @property
    def role(self) -> str:
        return self.user.pw_name if self.user else pwd.getpwuid(os.geteuid()).pw_name

    @property
    def url(self) -> str:
        return f"postgresql://{self.role}@127.0.0.1:{self.port}/{self.dbname}"

    def _prepare_dir(self) -> None:
        os.makedirs(self.base_dir, exist_ok=True)
        if self.user is not None:
            # The user must reach the directory through every parent.
            os.chmod(self.base_dir, 0o755)
            path = self.base_dir
            while path not in ("/", ""):
                mode = os.stat(path).st_mode
                if not mode & 0o001:
                    os.chmod(path, mode | 0o001)
                path = os.path.dirname(path)
            os.chown(self.base_dir, self.user.pw_uid, self.user.pw_gid)

    def start(self, timeout: float = 60.0, *, port: int | None = None) -> str:
        """initdb (first time only), start the server, create the database; its URL.

        ``port`` starts it again where it was (a restart its clients reconnect to)."""
        self._prepare_dir()
        if not os.path.exists(os.path.join(self.data_dir, "PG_VERSION")):
            subprocess.run(
                [os.path.join(self.bindir, "initdb"), "-D", self.data_dir, "-A", "trust",
                 "-U", self.role, "-E", "UTF8", "--no-sync"],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                preexec_fn=_demote(self.user), cwd=self.base_dir,
            )  # fmt: skip
        self.port = port or _free_port()
        log_path = os.path.join(self.base_dir, "postgres.log")
        # Opened by us (root may own it): the child only inherits the descriptor.
        log_file = open(log_path, "ab")  # noqa: SIM115 - lives as long as the server
        self.proc = subprocess.Popen(
            [os.path.join(self.bindir, "postgres"), "-D", self.data_dir,
             "-p", str(self.port), "-h", "127.0.0.1", "-k", self.base_dir,
             "-c", "fsync=off", "-c", "max_connections=200"],
            stdout=log_file, stderr=log_file, preexec_fn=_demote(self.user),
            cwd=self.base_dir, start_new_session=True,
        )  # fmt: skip
        log_file.close()
        self._wait_ready(timeout, log_path)
        self._create_database()
        log.info("throwaway postgres pid=%d url=%s", self.proc.pid, self.url)
        return self.url

    def _wait_ready(self, timeout: float, log_path: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                with open(log_path, errors="replace") as f:
                    raise RuntimeError(f"postgres exited at start:\n{f.read()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    pass
                probe = subprocess.run(
                    [os.path.join(self.bindir, "pg_ctl"), "status", "-D", self.data_dir],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    preexec_fn=_demote(self.user),
                )  # fmt: skip
                if probe.returncode == 0:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"postgres did not accept connections within {timeout:.0f} s")

    def _create_database(self) -> None:
        """CREATE DATABASE through the `postgres` maintenance database, retried while it starts."""
        import psycopg  # only the PostgreSQL paths import it

        admin = f"postgresql://{self.role}@127.0.0.1:{self.port}/postgres"
        deadline = time.monotonic() + 30
        while True:
            try:
                with psycopg.connect(admin, autocommit=True) as conn:
                    exists = conn.execute(
                        "SELECT 1 FROM pg_database WHERE datname = %s", (self.dbname,)
                    ).fetchone()
                    if not exists:
                        conn.execute(f'CREATE DATABASE "{self.dbname}"')
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def stop(self) -> None:
        """Stop the server (fast shutdown) and remove a directory we made."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # PostgreSQL's "fast" shutdown
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> ThrowawayPostgres:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
