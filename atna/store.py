"""Storage of audit records (tables ``audit_event`` and ``audit_key``, migration 0005).

Ingest is batched: the receiver hands over every record it has parsed since the last
write, and :func:`store_batch` inserts them in one transaction with two multi-row
``INSERT`` statements (events with ``RETURNING pk``, then their search keys). Messages that
carry an OpenDMP spool position (``origin``, ``origin_seq``) are stored once: a sender that
re-sends its unconfirmed tail after a reconnection does not create duplicates.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import psycopg
from sqlalchemy import Connection, Engine, func, select, text
from sqlalchemy.exc import IntegrityError

from opendmp.db import write_transaction
from opendmp.schema import audit_event, audit_key
from registry.hl7types import cx_match_key

from .message import AuditIndex

KEY_PATIENT, KEY_USER, KEY_DOCUMENT, KEY_SUBMISSION_SET, KEY_EVENT_TYPE, KEY_NAP = 1, 2, 3, 4, 5, 6
MAX_KEY = 256


@dataclass
class Received:
    """The indexed fields of a received audit message with the facts of its delivery."""

    record: AuditIndex
    transport: str  # tls, udp, local
    peer: str | None = None
    origin: str | None = None
    origin_seq: int | None = None
    received_at: int = 0


def _keys(rec: AuditIndex) -> set[tuple[int, str]]:
    keys = {(KEY_PATIENT, cx_match_key(v)[:MAX_KEY]) for v in rec.patient_ids}
    keys.update((KEY_USER, v[:MAX_KEY]) for v in rec.user_ids)
    keys.update((KEY_DOCUMENT, v[:MAX_KEY]) for v in rec.document_ids)
    keys.update((KEY_SUBMISSION_SET, v[:MAX_KEY]) for v in rec.submission_set_ids)
    keys.update((KEY_EVENT_TYPE, v[:MAX_KEY]) for v in rec.event_types)
    keys.update((KEY_NAP, v[:MAX_KEY]) for v in rec.network_access_points)
    return {k for k in keys if k[1]}


def _row(item: Received) -> tuple:
    """The ``audit_event`` columns of :data:`EVENT_COLUMNS`, in order."""
    rec = item.record
    return (
        rec.event_time,
        item.received_at or int(time.time() * 1_000_000),
        rec.event_id[:64],
        (rec.action or None) and rec.action[:4],
        rec.outcome if 0 <= rec.outcome < 32768 else -1,
        rec.event_types[0][:64] if rec.event_types else None,
        (rec.source_id or None) and rec.source_id[:256],
        0 if rec.schema_errors else 1,
        item.transport,
        (item.peer or None) and item.peer[:512],
        item.origin,
        item.origin_seq,
        rec.xml,
    )


def _without_duplicates(conn: Connection, items: list[Received]) -> list[Received]:
    """Drop records whose (origin, origin_seq) is already stored, or repeated in ``items``."""
    by_origin: dict[str, list[int]] = {}
    for item in items:
        if item.origin is not None:
            by_origin.setdefault(item.origin, []).append(item.origin_seq)
    if not by_origin:
        return items
    seen = {(origin, seq) for origin, seqs in by_origin.items()
            for seq in _stored_seqs(conn, origin, seqs)}
    out = []
    for item in items:
        if item.origin is not None:
            key = (item.origin, item.origin_seq)
            if key in seen:
                continue
            seen.add(key)
        out.append(item)
    return out


def _stored_seqs(conn: Connection, origin: str, seqs: list[int]) -> set[int]:
    """Which of ``seqs`` of ``origin`` are already stored: one range scan of the (origin,
    origin_seq) index, from the lowest of them to the highest (a re-sent tail is a run of
    recent positions). Not ``origin_seq = ANY(seqs)``: on a table without statistics yet
    (a new ARR), PostgreSQL takes ``origin`` for selective and scans the index for it
    alone, i.e. every message ever stored from that sender (3,000 blocks per batch one
    minute into the repository benchmark); a range on both columns it plans as one."""
    found = conn.execute(select(audit_event.c.origin_seq).where(
        audit_event.c.origin == origin,
        audit_event.c.origin_seq >= min(seqs), audit_event.c.origin_seq <= max(seqs))).scalars()
    return set(seqs).intersection(found)


def _allocate_pks(conn: Connection, n: int) -> list[int]:
    """``n`` new primary keys (dialect-specific, here only): PostgreSQL takes them from the
    column's sequence; SQLite's write transactions are exclusive (BEGIN IMMEDIATE), so the
    next keys after MAX(pk) are ours."""
    if conn.dialect.name == "postgresql":
        return list(conn.execute(text(
            "SELECT nextval(pg_get_serial_sequence('audit_event', 'pk')) "
            "FROM generate_series(1, :n)"), {"n": n}).scalars())
    start = conn.execute(select(func.coalesce(func.max(audit_event.c.pk), 0))).scalar_one()
    return list(range(start + 1, start + 1 + n))


def insert_batch(conn: Connection, items: list[Received]) -> int:
    """Insert ``items`` in ``conn``'s transaction; returns how many were new."""
    items = _without_duplicates(conn, items)
    if not items:
        return 0
    pks = _allocate_pks(conn, len(items))
    _executemany(conn, audit_event.name, EVENT_COLUMNS,
                 [(pk, *_row(item)) for pk, item in zip(pks, items)])
    keys = [(pk, kind, value) for pk, item in zip(pks, items) for kind, value in _keys(item.record)]
    if keys:
        _executemany(conn, audit_key.name, KEY_COLUMNS, keys)
    return len(items)


#: (column, PostgreSQL type for binary COPY), in the order of ``(pk, *_row(item))``
EVENT_COLUMNS = [("pk", "int8"), ("event_time", "int8"), ("received_at", "int8"),
                 ("event_id", "text"), ("event_action", "text"), ("outcome", "int2"),
                 ("event_type", "text"), ("source_id", "text"), ("valid", "int2"),
                 ("transport", "text"), ("peer", "text"), ("origin", "text"),
                 ("origin_seq", "int8"), ("xml", "bytea")]
KEY_COLUMNS = [("event_pk", "int8"), ("kind", "int2"), ("value", "text")]


def _executemany(conn: Connection, table: str, columns: list[tuple[str, str]],
                 rows: list[tuple]) -> None:
    """A plain DB-API executemany: SQLAlchemy's per-row parameter processing costs more
    than the insert itself at thousands of rows per second."""
    names = ", ".join(name for name, _ in columns)
    if conn.dialect.name == "postgresql":
        # binary COPY: one round trip for the whole batch, and the XML travels as it is
        # (text COPY would hex-escape it, doubling its size, and PostgreSQL decode it)
        dbapi = conn.connection.driver_connection
        with dbapi.cursor() as cur, \
                cur.copy(f"COPY {table} ({names}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types([pg_type for _, pg_type in columns])
            for row in rows:
                copy.write_row(row)
        return
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    conn.exec_driver_sql(f"INSERT INTO {table} ({names}) VALUES ({', '.join([mark] * len(columns))})",
                         rows)


def store_batch(engine: Engine, items: list[Received]) -> int:
    """Store ``items`` in one transaction (one by one if a concurrent writer raced us: another
    ARR's ingest on the same database stored one of the positions after our check)."""
    if not items:
        return 0
    refused = (IntegrityError, psycopg.IntegrityError)  # Core, or psycopg (binary COPY)
    try:
        with write_transaction(engine) as conn:
            return insert_batch(conn, items)
    except refused:
        stored = 0
        for item in items:
            try:
                with write_transaction(engine) as conn:
                    stored += insert_batch(conn, [item])
            except refused:
                pass
        return stored

