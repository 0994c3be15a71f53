"""The repository's index of stored documents (table ``repository_document``).

With the in-process registry a row is written COMMITTED in the registration's own
transaction. With a remote registry it is STAGED before the registry is called and
COMMITTED right after the registry accepted the submission; :mod:`repository.recovery`
settles STAGED rows left by a crash.

Each row records the patient of its document (the SubmissionSet patientId received at
ITI-41, canonical CX) in the same insert, hence in the same transaction as the row:
:func:`opendmp.policy.require_documents` reads it when the registry does not know the
document (a remote registry). Rows written before migration 0007 have none.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Callable, Iterable

from sqlalchemy import Connection, bindparam, delete, select, update
from sqlalchemy.dialects.sqlite import insert as _sqlite_insert

from opendmp.db import pg_execute
from opendmp.schema import repository_document as rd

STAGED = 0
COMMITTED = 1


@dataclass(frozen=True)
class IndexedDocument:
    unique_id: str
    repository_unique_id: str
    storage_key: str
    size: int
    sha1: str
    mime_type: str
    state: int
    created_at: int
    #: canonical CX of the document's patient as received at ITI-41; None before 0007.
    patient_cx: str | None


def _row(r) -> IndexedDocument:
    return IndexedDocument(r.unique_id, r.repository_unique_id, r.storage_key, r.size, r.sha1,
                           r.mime_type, r.state, r.created_at, r.patient_cx)


def add_new(conn: Connection, docs: Iterable[IndexedDocument]) -> set[str]:
    """Insert the rows whose uniqueId the index does not hold yet, in their ``state``, in
    one statement (``INSERT .. ON CONFLICT DO NOTHING RETURNING``, PostgreSQL and SQLite);
    returns the uniqueIds inserted. A uniqueId another transaction is inserting waits for
    that transaction: then it is inserted (rolled back) or left out (committed)."""
    return send_new(conn, docs)()


def send_new(conn: Connection, docs: Iterable[IndexedDocument]) -> Callable[[], set[str]]:
    """:func:`add_new`, its result read when the returned callable is called: on
    PostgreSQL the statement is sent now and, inside :func:`opendmp.db.pg_pipeline`,
    its result arrives with those of the statements sent after it."""
    now = int(time.time())
    rows = [dict(zip(_COLUMNS, (d.unique_id, d.repository_unique_id, d.storage_key, d.size,
                                d.sha1, d.mime_type, d.state, now, d.patient_cx)))
            for d in docs]
    if not rows:
        return set
    if conn.dialect.name == "postgresql":   # one statement, the rows as JSON (pg_execute)
        cursor = pg_execute(conn, _PG_ADD_NEW, (json.dumps(rows),))
        return lambda: {r[0] for r in cursor.fetchall()}
    inserted = set(conn.execute(_SQLITE_ADD_NEW, rows).scalars())
    return lambda: inserted


def mark_committed(conn: Connection, unique_ids: list[str]) -> None:
    if unique_ids:
        conn.execute(update(rd).where(rd.c.unique_id.in_(unique_ids)).values(state=COMMITTED))


def forget(conn: Connection, unique_ids: list[str]) -> None:
    if unique_ids:
        conn.execute(delete(rd).where(rd.c.unique_id.in_(unique_ids)))


#: the columns of :class:`IndexedDocument`, in its order
_COLUMNS = ("unique_id", "repository_unique_id", "storage_key", "size", "sha1", "mime_type",
            "state", "created_at", "patient_cx")
_LOOKUP = select(*(rd.c[name] for name in _COLUMNS)).where(
    rd.c.unique_id.in_(bindparam("unique_ids", expanding=True)))
_PG_LOOKUP = (f"SELECT {', '.join(_COLUMNS)} FROM {rd.name} "
              "WHERE unique_id = ANY(%s::varchar[])")
#: PostgreSQL: the rows as one JSON array read against the table's row type (each value
#: through its column's input function), as registry.store inserts objects: psycopg dumps
#: one string for about a tenth of the CPU of nine one-element arrays
_PG_ADD_NEW = (f"INSERT INTO {rd.name} ({', '.join(_COLUMNS)}) SELECT {', '.join(_COLUMNS)} "
               f"FROM json_populate_recordset(NULL::{rd.name}, %s::json) "
               "ON CONFLICT (unique_id) DO NOTHING RETURNING unique_id")
#: built once (SQLAlchemy computes a statement's cache key at each build)
_SQLITE_ADD_NEW = (_sqlite_insert(rd).on_conflict_do_nothing(index_elements=[rd.c.unique_id])
                   .returning(rd.c.unique_id))


def lookup(conn: Connection, unique_ids: list[str]) -> dict[str, IndexedDocument]:
    """The rows of ``unique_ids`` that exist, in ``conn``'s transaction (if any).

    On PostgreSQL the statement goes to psycopg directly, on ``conn``'s own DBAPI
    connection: this is every ITI-43's one query, and SQLAlchemy Core's execution of the
    same SELECT (statement, compilation cache, result rows) cost about three times its
    CPU (benchmarks/README.md, "ITI-43 CPU per request"). psycopg prepares it
    server-side after a few executions."""
    if not unique_ids:
        return {}
    wanted = sorted(set(unique_ids))
    if conn.dialect.name == "postgresql":
        rows = pg_execute(conn, _PG_LOOKUP, (wanted,), prepare=False).fetchall()
    else:
        rows = conn.execute(_LOOKUP, {"unique_ids": wanted}).all()
    return {r[0]: IndexedDocument(*r) for r in rows}


def staged_before(conn: Connection, cutoff: float) -> list[IndexedDocument]:
    rows = conn.execute(select(rd).where(rd.c.state == STAGED, rd.c.created_at <= cutoff))
    return [_row(r) for r in rows]


def states_by_key(conn: Connection) -> dict[str, int]:
    """Every row's storage key and state (the recovery sweep)."""
    return {key: state for key, state in conn.execute(select(rd.c.storage_key, rd.c.state))}
