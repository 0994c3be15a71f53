"""The repository's index of stored documents (table ``repository_document``).

A row is STAGED while its submission is being registered and COMMITTED in the same
transaction as the registration (in-process registry) or right after the remote
registry accepted it; :mod:`repository.recovery` settles STAGED rows left by a crash.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable

from sqlalchemy import Connection, delete, insert, select, update

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


def _row(r) -> IndexedDocument:
    return IndexedDocument(r.unique_id, r.repository_unique_id, r.storage_key, r.size, r.sha1,
                           r.mime_type, r.state, r.created_at)


def stage(conn: Connection, docs: Iterable[IndexedDocument]) -> None:
    rows = [dict(unique_id=d.unique_id, repository_unique_id=d.repository_unique_id,
                 storage_key=d.storage_key, size=d.size, sha1=d.sha1, mime_type=d.mime_type,
                 state=STAGED, created_at=int(time.time())) for d in docs]
    if rows:
        conn.execute(insert(rd), rows)


def mark_committed(conn: Connection, unique_ids: list[str]) -> None:
    if unique_ids:
        conn.execute(update(rd).where(rd.c.unique_id.in_(unique_ids)).values(state=COMMITTED))


def forget(conn: Connection, unique_ids: list[str]) -> None:
    if unique_ids:
        conn.execute(delete(rd).where(rd.c.unique_id.in_(unique_ids)))


def lookup(conn: Connection, unique_ids: list[str]) -> dict[str, IndexedDocument]:
    if not unique_ids:
        return {}
    rows = conn.execute(select(rd).where(rd.c.unique_id.in_(set(unique_ids))))
    return {r.unique_id: _row(r) for r in rows}


def staged_before(conn: Connection, cutoff: float) -> list[IndexedDocument]:
    rows = conn.execute(select(rd).where(rd.c.state == STAGED, rd.c.created_at <= cutoff))
    return [_row(r) for r in rows]


def all_keys(conn: Connection) -> set[str]:
    return set(conn.execute(select(rd.c.storage_key)).scalars())
