"""A throwaway PostgreSQL cluster for the test session.

``PostgresCluster().start()`` runs ``initdb`` into a fresh temporary directory and
starts ``postgres`` on a free loopback port with durability switched off (the data
is thrown away).  ``create_database(name)`` returns a SQLAlchemy URL
(``postgresql+psycopg://postgres@127.0.0.1:<port>/<name>``) and ``stop()`` shuts the
server down and deletes the directory.

PostgreSQL refuses to run as root, so when the tests run as root (CI, the dev
machines) ``initdb`` and ``pg_ctl`` run as the unprivileged ``postgres`` user
through ``runuser -u postgres --``; the cluster directory is created owned by
that user under ``/tmp`` so it can reach it.

If ``OPENDMP_TEST_PG_URL`` is set (any libpq/SQLAlchemy URL of a server whose user
may create databases, e.g. ``postgresql://me@localhost:5432/postgres``), no server
is started: databases are created in that server instead and dropped at ``stop()``.
"""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

PG_URL_ENV = "OPENDMP_TEST_PG_URL"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server binaries (initdb/pg_ctl) could be found."""


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _version_key(path: str) -> tuple:
    # /usr/lib/postgresql/15/bin/initdb -> (15,)
    m = re.search(r"/postgresql/([\d.]+)/", path)
    return tuple(int(p) for p in m.group(1).split(".") if p) if m else ()


def find_pg_bin(name: str) -> str | None:
    """Locate a PostgreSQL server program (``initdb``, ``pg_ctl``).

    Looks in ``$OPENDMP_PG_BINDIR`` first, then ``PATH``, then Debian's
    ``/usr/lib/postgresql/<version>/bin`` (highest version first).
    """
    bindir = os.environ.get("OPENDMP_PG_BINDIR")
    if bindir and os.access(os.path.join(bindir, name), os.X_OK):
        return os.path.join(bindir, name)
    found = shutil.which(name)
    if found:
        return found
    candidates = [
        p
        for p in glob.glob(f"/usr/lib/postgresql/*/bin/{name}")
        if os.access(p, os.X_OK)
    ]
    candidates.sort(key=_version_key, reverse=True)
    return candidates[0] if candidates else None


def _conninfo(url: str) -> str:
    """SQLAlchemy URL -> libpq URL (drop the ``+driver`` part of the scheme)."""
    parts = urlsplit(url)
    scheme = parts.scheme.split("+", 1)[0]
    if scheme == "postgres":
        scheme = "postgresql"
    return urlunsplit((scheme, parts.netloc, parts.path, parts.query, parts.fragment))


def _with_database(url: str, dbname: str) -> str:
    """Return ``url`` as a ``postgresql+psycopg`` URL pointing at ``dbname``."""
    parts = urlsplit(url)
    return urlunsplit(("postgresql+psycopg", parts.netloc, "/" + dbname, parts.query, ""))


class PostgresCluster:
    """A disposable PostgreSQL server (or an external one, see module doc).

    Usage::

        pg = PostgresCluster()
        pg.start()
        url = pg.create_database("opendmp_test")   # postgresql+psycopg://...
        ...
        pg.stop()

    It is also a context manager (``with PostgresCluster() as pg: ...``).
    """

    def __init__(self, external_url: str | None = None, host: str = "127.0.0.1"):
        self.external_url = external_url if external_url is not None else os.environ.get(PG_URL_ENV) or None
        self.host = host
        self.port: int | None = None
        self.base_dir: str | None = None  # temp dir holding data/, socket, log
        self.data_dir: str | None = None
        self.socket_dir: str | None = None
        self.log_path: str | None = None
        self._created: list[str] = []
        self._running = False
        self._pg_ctl: str | None = None
        self._as_postgres_user = os.name == "posix" and os.geteuid() == 0

    # -- public API -----------------------------------------------------------

    @property
    def admin_url(self) -> str:
        """SQLAlchemy URL of the maintenance database (``postgres``)."""
        if self.external_url:
            return _with_database(self.external_url, urlsplit(_conninfo(self.external_url)).path.lstrip("/") or "postgres")
        return f"postgresql+psycopg://postgres@{self.host}:{self.port}/postgres"

    def start(self) -> "PostgresCluster":
        """Start the server (no-op with an external server). Returns ``self``."""
        if self._running:
            return self
        if self.external_url:
            with self._admin_connect():
                pass
            self._running = True
            atexit.register(self.stop)
            return self

        initdb = find_pg_bin("initdb")
        pg_ctl = find_pg_bin("pg_ctl")
        if not initdb or not pg_ctl:
            raise PostgresUnavailable(
                "PostgreSQL server programs not found (initdb/pg_ctl not on PATH nor in "
                "/usr/lib/postgresql/*/bin): install the 'postgresql' package, or set "
                f"{PG_URL_ENV} to an existing server"
            )
        self._pg_ctl = pg_ctl
        self._make_dirs()
        atexit.register(self.stop)
        try:
            self._initdb(initdb)
            self._start_server()
        except BaseException:
            self.stop()
            raise
        self._running = True
        return self

    def create_database(self, name: str) -> str:
        """Create database ``name`` (dropping any previous one) and return its URL.

        With an external server a random suffix is appended to ``name`` so that
        concurrent test runs do not collide; the created databases are dropped
        at :meth:`stop`.
        """
        if not self._running:
            self.start()
        if self.external_url:
            name = f"{name}_{uuid.uuid4().hex[:8]}"
        with self._admin_connect() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8'").format(sql.Identifier(name))
            )
        self._created.append(name)
        if self.external_url:
            return _with_database(self.external_url, name)
        return f"postgresql+psycopg://postgres@{self.host}:{self.port}/{name}"

    def stop(self) -> None:
        """Stop the server and delete its directory (idempotent)."""
        atexit.unregister(self.stop)
        if self.external_url:
            if self._running and self._created:
                try:
                    with self._admin_connect() as conn:
                        for name in self._created:
                            conn.execute(
                                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                            )
                except psycopg.Error:
                    pass
            self._created.clear()
            self._running = False
            return
        if self.data_dir and os.path.exists(os.path.join(self.data_dir, "postmaster.pid")):
            self._run([self._pg_ctl, "-D", self.data_dir, "-m", "immediate", "-w", "-t", "30", "stop"], check=False)
        self._running = False
        if self.base_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            self.base_dir = None
            self.data_dir = None

    def restart(self) -> None:
        """Restart the server (``pg_ctl restart -m fast``: every backend is terminated and
        clients see their connections closed), same port and data; not for an external
        server."""
        if self.external_url or not self._running:
            raise RuntimeError("restart() needs a running throwaway cluster")
        proc = self._run([self._pg_ctl, "-D", self.data_dir, "-l", self.log_path, "-m", "fast",
                          "-w", "-t", "60", "restart"], check=False)
        if proc.returncode != 0 or not self._wait_ready(30):
            raise RuntimeError(f"could not restart PostgreSQL:\n{proc.stdout}\n{self.log_text()}")

    def log_text(self) -> str:
        """The server log so far ('' if none)."""
        try:
            with open(self.log_path or "", encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def __enter__(self) -> "PostgresCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- internals ------------------------------------------------------------

    def _admin_connect(self) -> psycopg.Connection:
        if self.external_url:
            return psycopg.connect(_conninfo(self.external_url), autocommit=True, connect_timeout=10)
        return psycopg.connect(
            host=self.host, port=self.port, user="postgres", dbname="postgres", autocommit=True, connect_timeout=10
        )

    def _make_dirs(self) -> None:
        if self._as_postgres_user:
            try:
                pw = pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresUnavailable(
                    "running as root but there is no 'postgres' user to run the server as "
                    "(install the 'postgresql' package, which creates it)"
                ) from None
            if not shutil.which("runuser"):
                raise PostgresUnavailable("running as root but 'runuser' is not available")
            # /tmp is traversable by everyone; a TMPDIR under /root would not be.
            self.base_dir = tempfile.mkdtemp(prefix="opendmp-pg-", dir="/tmp")
            os.chmod(self.base_dir, 0o755)
            os.chown(self.base_dir, pw.pw_uid, pw.pw_gid)
        else:
            self.base_dir = tempfile.mkdtemp(prefix="opendmp-pg-")
        self.data_dir = os.path.join(self.base_dir, "data")
        self.socket_dir = self.base_dir
        self.log_path = os.path.join(self.base_dir, "postgres.log")

    def _run(self, argv: list[str], check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        if self._as_postgres_user:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        env = dict(os.environ)
        for var in ("PGDATA", "PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGOPTIONS"):
            env.pop(var, None)
        proc = subprocess.run(
            argv,
            cwd=self.base_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"command failed ({proc.returncode}): {' '.join(argv)}\n{proc.stdout}\n"
                f"--- server log ---\n{self.log_text()}"
            )
        return proc

    def _initdb(self, initdb: str) -> None:
        base = [initdb, "-D", self.data_dir, "--no-sync", "--auth=trust", "-U", "postgres", "-E", "UTF8"]
        proc = self._run([*base, "--locale=C.UTF-8"], check=False)
        if proc.returncode != 0:
            # Systems without a C.UTF-8 locale (macOS, old glibc): plain C.
            shutil.rmtree(self.data_dir, ignore_errors=True)
            proc2 = self._run([*base, "--locale=C"], check=False)
            if proc2.returncode != 0:
                raise RuntimeError(f"initdb failed:\n{proc.stdout}\n{proc2.stdout}")

    def _start_server(self) -> None:
        last = None
        for _attempt in range(3):
            self.port = free_port(self.host)
            opts = (
                f"-c listen_addresses={self.host} -p {self.port} -k {self.socket_dir} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                "-c max_connections=200"
            )
            proc = self._run(
                [self._pg_ctl, "-D", self.data_dir, "-l", self.log_path, "-w", "-t", "60", "-o", opts, "start"],
                check=False,
            )
            if proc.returncode == 0 and self._wait_ready(30):
                return
            last = proc.stdout
            # Port taken between free_port() and bind, or a slow start: stop and retry.
            self._run([self._pg_ctl, "-D", self.data_dir, "-m", "immediate", "-w", "stop"], check=False)
        raise RuntimeError(f"could not start PostgreSQL:\n{last}\n--- server log ---\n{self.log_text()}")

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with self._admin_connect() as conn:
                    conn.execute("SELECT 1")
                return True
            except psycopg.OperationalError:
                time.sleep(0.1)
        return False
