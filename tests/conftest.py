"""Shared pytest fixtures: database backends, the real server, the CLI.

Fixtures (all end-to-end ones run the *real* product in subprocesses):

``db_url``  (session, parametrized ``sqlite`` / ``pg``)
    SQLAlchemy URL of a fresh, empty database.  Every test that uses it (directly
    or through ``server``/``server_url``/``cli``) runs once per backend.
``pg_cluster``  (session)
    The throwaway :class:`harness.PostgresCluster`, started lazily on first use.
``server``  (session, one per backend)
    A :class:`harness.ServerProcess` on ``db_url``: ``.base_url``, ``.url(path)``,
    ``.home``, ``.env``, ``.log_text()``.  Shared by all tests of a backend, so
    tests must use unique identifiers and must not stop/kill/restart it — use
    ``server_factory`` for that.
``server_url``  (session)
    ``server.base_url``, e.g. ``http://127.0.0.1:41234``.
``cli``  (session)
    ``cli(*args, check=False, input=None)`` runs ``python -m opendmp.cli *args`` with
    the shared server's environment (same ``OPENDMP_HOME`` and database) and
    returns the ``CompletedProcess`` (``returncode``, ``stdout``, ``stderr``).
``server_factory``  (function)
    ``server_factory(env=None, start=True)`` -> a *private* ServerProcess on a new
    database of the current backend, stopped after the test; for tests that
    restart, kill or reconfigure a server.

Environment variables:

``OPENDMP_TEST_PG_URL``   use this PostgreSQL server instead of starting one.
``OPENDMP_TEST_SKIP_PG=1`` skip the ``pg`` variants when PostgreSQL cannot be
                          started (by default they fail: CI must test PostgreSQL).
"""

from __future__ import annotations

import os
import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import PostgresCluster, ServerProcess, run_cli  # noqa: E402

SKIP_PG = os.environ.get("OPENDMP_TEST_SKIP_PG", "") not in ("", "0", "false", "no")


@pytest.fixture(scope="session")
def pg_cluster():
    """The session's PostgreSQL cluster, started on first use and stopped at the end.

    Fails (or skips with ``OPENDMP_TEST_SKIP_PG=1``) when PostgreSQL cannot be started.
    """
    cluster = PostgresCluster()
    try:
        cluster.start()
    except Exception as exc:  # noqa: BLE001 - report whatever went wrong
        cluster.stop()
        msg = f"PostgreSQL unavailable: {exc}"
        if SKIP_PG:
            pytest.skip(msg + " (OPENDMP_TEST_SKIP_PG is set)")
        pytest.fail(msg + "\n(set OPENDMP_TEST_SKIP_PG=1 to skip the PostgreSQL tests)", pytrace=False)
    yield cluster
    cluster.stop()


def _new_database(request, backend: str, tmp_path_factory) -> str:
    """A fresh empty database of ``backend`` ('sqlite' or 'postgresql')."""
    if backend == "sqlite":
        path = tmp_path_factory.mktemp("sqlite") / "opendmp.sqlite3"
        return f"sqlite:///{path}"
    cluster = request.getfixturevalue("pg_cluster")
    return cluster.create_database(f"opendmp_{uuid.uuid4().hex[:12]}")


@pytest.fixture(scope="session", params=["sqlite", "postgresql"], ids=["sqlite", "pg"])
def db_url(request, tmp_path_factory) -> str:
    """SQLAlchemy URL of a fresh database; parametrized over SQLite and PostgreSQL."""
    return _new_database(request, request.param, tmp_path_factory)


@pytest.fixture(scope="session")
def server(db_url, tmp_path_factory):
    """The real server on ``db_url``, started once per backend for the whole session."""
    home = tmp_path_factory.mktemp("home")
    srv = ServerProcess(db_url, home=home)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def server_url(server) -> str:
    """Base URL of the shared server, e.g. ``http://127.0.0.1:41234`` (no trailing slash)."""
    return server.base_url


@pytest.fixture(scope="session")
def cli(server):
    """``cli(*args, check=False, input=None)``: run ``opendmp <args>`` against the shared server's home/database."""

    def _cli(*args, check: bool = False, input: str | None = None, timeout: float = 120):
        if len(args) == 1 and isinstance(args[0], (list, tuple)):
            args = tuple(args[0])
        return run_cli(args, server.env, check=check, input=input, timeout=timeout, python=server.python)

    return _cli


def _server_factory(request, db_url, tmp_path_factory):
    """``server_factory(env=None, start=True)`` -> a private ServerProcess on a new database.

    The database is of the same backend as ``db_url``; every server made is
    stopped at the end of the test.
    """
    backend = "sqlite" if db_url.startswith("sqlite") else "postgresql"
    made: list[ServerProcess] = []

    def _make(env: dict | None = None, start: bool = True) -> ServerProcess:
        url = _new_database(request, backend, tmp_path_factory)
        srv = ServerProcess(url, home=tmp_path_factory.mktemp("home"), env=env)
        made.append(srv)
        return srv.start() if start else srv

    yield _make
    for srv in made:
        srv.stop()


server_factory = pytest.fixture(_server_factory)
#: the same, for servers shared by the tests of one module (e.g. a corpus replay).
module_server_factory = pytest.fixture(_server_factory, scope="module",
                                       name="module_server_factory")
