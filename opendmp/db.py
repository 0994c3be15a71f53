"""Database engine and transactions: the same code on SQLite (default) and PostgreSQL.

Dialect-specific behaviour lives only here: SQLite gets WAL, a busy timeout, foreign
keys and ``BEGIN IMMEDIATE`` for write transactions (so concurrent writers queue instead
of failing on lock upgrade); PostgreSQL gets a connection pool and psycopg 3, pooled
connections the server closed are replaced at checkout without a round trip, and
:func:`read_connection` runs single-statement reads without a transaction block.
"""
from __future__ import annotations

import multiprocessing
import os
import select
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import DisconnectionError

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).with_name("migrations")


def _forget_pool_after_fork(ref: "weakref.ref[Engine]") -> None:
    """In a forked child (a gunicorn worker of a preloaded app), drop the pooled
    connections inherited from the parent without closing them: they belong to the
    parent (SQLAlchemy, "Using Connection Pools with Multiprocessing")."""
    engine = ref()
    if engine is not None:
        engine.dispose(close=False)


def make_engine(url: str) -> Engine:
    """Create the engine for ``url`` (``sqlite:///...`` or ``postgresql+psycopg://...``)."""
    engine = _make_engine(url)
    ref = weakref.ref(engine)
    os.register_at_fork(after_in_child=lambda: _forget_pool_after_fork(ref))
    return engine


def _make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_conn, _record) -> None:
            dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            immediate = conn.get_execution_options().get("write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    engine = create_engine(url, pool_size=5, max_overflow=10)
    event.listen(engine, "checkout", _replace_if_closed_by_server)
    return engine


def _replace_if_closed_by_server(dbapi_conn, record, proxy) -> None:
    """Pool checkout (PostgreSQL): refuse a pooled connection the server has closed, so the
    pool replaces it before the transaction uses it (SQLAlchemy retries the checkout
    with a new connection on :class:`DisconnectionError`).

    This replaces ``pool_pre_ping``, which sent a query — one more round trip and about
    0.05 ms of client and server CPU — before every transaction. An idle connection
    has nothing to read: when PostgreSQL restarts, or terminates a backend
    (``pg_terminate_backend``, ``idle_session_timeout``), it sends a FATAL message and
    closes the socket, which then polls readable. So a readable or closed socket means a
    dead connection (a healthy one that happens to hold an asynchronous message is just
    replaced). ``tests/test_db_reconnect.py`` restarts PostgreSQL under the engine and
    under the real server."""
    if _closed_by_server(dbapi_conn):
        raise DisconnectionError("the database server closed this pooled connection")


def _closed_by_server(dbapi_conn) -> bool:
    if dbapi_conn.closed or dbapi_conn.broken:
        return True
    try:
        fd = dbapi_conn.fileno()
    except Exception:  # noqa: BLE001 - no socket: certainly not usable
        return True
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLPRI)  # POLLHUP, POLLERR: always reported
    return bool(poller.poll(0))


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A read-write transaction: committed on success, rolled back on any exception."""
    with engine.connect().execution_options(write=True) as conn:
        with conn.begin():
            yield conn


@contextmanager
def read_transaction(engine: Engine) -> Iterator[Connection]:
    """A read transaction: on SQLite one snapshot for all its statements; on PostgreSQL
    (READ COMMITTED) each statement sees what was committed when it started."""
    with engine.connect() as conn:
        with conn.begin():
            yield conn


@contextmanager
def read_connection(engine: Engine) -> Iterator[Connection]:
    """A connection for reads that share no snapshot, without a transaction block on
    PostgreSQL: the connection is in autocommit, so a statement is its own transaction
    and sees what was committed when it started — exactly what it sees inside a READ
    COMMITTED transaction — without the ``BEGIN`` and ``COMMIT`` round trips. On SQLite,
    :func:`read_transaction`. For hot single-statement reads (ITI-43's index lookup)."""
    if engine.dialect.name != "postgresql":
        with read_transaction(engine) as conn:
            yield conn
        return
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        yield conn


def pg_execute(conn: Connection, sql: str, params=None, *, prepare: bool | None = None):
    """Run ``sql`` (psycopg placeholders) on ``conn``'s own DBAPI connection, in its
    transaction, and return psycopg's cursor (rows are tuples). For the few hot
    statements of ITI-41/ITI-43 on PostgreSQL: SQLAlchemy Core's execution (statement
    cache key, compilation cache, result processing) costs about three times the CPU of
    the statement itself (benchmarks/README.md, "ITI-43 CPU per request"). psycopg
    prepares a statement server-side after a few executions. Inside :func:`pg_pipeline`
    the statement is sent and the cursor's rows are read after the block.

    ``prepare=False`` for a lookup whose best plan depends on the table's size (``col =
    ANY(%s)``): PostgreSQL may keep a prepared statement's generic plan, made on the
    connection's first executions; on a new database that plan is a sequential scan of
    a then tiny table, kept while the table grows until an ANALYZE invalidates it (seen
    in the repository benchmark: 0.6-1 ms per ITI-41 registry lookup after a few thousand
    documents, against 10-25 µs of planning per call)."""
    return conn.connection.driver_connection.execute(sql, params, prepare=prepare)


@contextmanager
def pg_pipeline(conn: Connection) -> Iterator[None]:
    """PostgreSQL: the statements :func:`pg_execute` runs inside the block are sent
    without waiting for each other's results (psycopg pipeline mode, libpq pipelining);
    every result has arrived when the block ends, in one round trip for all of them (the
    ``BEGIN`` of a transaction they start included). The server still runs them one after
    the other, in order, each seeing what the ones before it did. An error aborts the
    transaction and is raised by the round trip that brings it back (a fetch, the block's
    end, or a ``COMMIT`` sent inside the block), not where the statement was issued: a
    caller that handles a statement's errors handles them there, or keeps the statement
    outside. SQLAlchemy statements cannot run inside (SQLAlchemy reads a result as soon as
    it executes). Elsewhere (SQLite) a no-op: the statements ran when issued."""
    if conn.dialect.name != "postgresql":
        yield
        return
    with conn.connection.driver_connection.pipeline():
        yield


def alembic_config(url: str) -> "Config":
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def migrate(url: str) -> None:
    """Apply every pending Alembic migration (run at ``opendmp serve`` start)."""
    from alembic import command   # imported here only: see migrate_in_child

    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(alembic_config(url), "head")


def migrate_in_child(url: str) -> None:
    """:func:`migrate` in a short-lived forked process (``opendmp serve``): Alembic, Mako
    and Pygments (about 11 MiB) then never enter the gunicorn master, whose memory every
    worker maps (and counts in its RSS) after fork."""
    proc = multiprocessing.get_context("fork").Process(target=migrate, args=(url,),
                                                       name="opendmp-migrate")
    proc.start()
    proc.join()
    if proc.exitcode != 0:
        raise SystemExit(f"opendmp: the database migration failed (exit code {proc.exitcode})")
