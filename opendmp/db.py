"""Database engine and transactions: the same code on SQLite (default) and PostgreSQL.

Dialect-specific behaviour lives only here: SQLite gets WAL, a busy timeout, foreign
keys and ``BEGIN IMMEDIATE`` for write transactions (so concurrent writers queue instead
of failing on lock upgrade); PostgreSQL gets a connection pool and psycopg 3.
"""
from __future__ import annotations

import multiprocessing
import os
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from sqlalchemy import Connection, Engine, create_engine, event

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
    return create_engine(url, pool_size=5, max_overflow=10, pool_pre_ping=True)


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A read-write transaction: committed on success, rolled back on any exception."""
    with engine.connect().execution_options(write=True) as conn:
        with conn.begin():
            yield conn


@contextmanager
def read_transaction(engine: Engine) -> Iterator[Connection]:
    with engine.connect() as conn:
        with conn.begin():
            yield conn


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
