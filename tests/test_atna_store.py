"""The ARR's storage of received audit messages (atna.store), on SQLite and PostgreSQL:
a message re-sent by an OpenDMP sender (same spool origin and position) is stored once."""
from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select

from atna import events as ev
from atna.message import read_index
from atna.store import Received, store_batch
from conftest import _new_database
from opendmp.db import make_engine, migrate, read_transaction
from opendmp.schema import audit_event

X = ev.Exchange("http://client/reply", "10.1.2.3", "commonName=lab", "http://arr/xds/registry", "arr")


@pytest.fixture
def engine(request, db_url, tmp_path_factory):
    backend = "sqlite" if db_url.startswith("sqlite") else "postgresql"
    url = _new_database(request, backend, tmp_path_factory)
    migrate(url)
    engine = make_engine(url)
    yield engine
    engine.dispose()


def _received(origin: str | None, seq: int | None, patient: str) -> Received:
    xml = ev.build(ev.iti18_registry(X, 0, b"<q/>", "urn:uuid:q", patient))
    return Received(read_index(xml), "tls", "lab", origin, seq)


def _stored(engine) -> list[tuple[str | None, int | None]]:
    with read_transaction(engine) as conn:
        return sorted(map(tuple, conn.execute(select(audit_event.c.origin,
                                                     audit_event.c.origin_seq))),
                      key=lambda r: (r[0] or "", r[1] or 0))


def test_a_message_re_sent_from_the_same_spool_position_is_stored_once(engine):
    a, b = uuid.uuid4().hex, uuid.uuid4().hex
    assert store_batch(engine, [_received(a, s, f"P{s}") for s in range(1, 6)]) == 5
    # the sender's unconfirmed tail again (4, 5), new positions, a position twice in one
    # batch, the same position from another spool, and messages without a position
    again = [_received(a, s, f"P{s}") for s in (4, 5, 6, 7, 7)]
    again += [_received(b, 5, "Q5"), _received(None, None, "R1"), _received(None, None, "R2")]
    assert store_batch(engine, again) == 5
    assert _stored(engine) == sorted([(a, s) for s in range(1, 8)] + [(b, 5)] + [(None, None)] * 2,
                                     key=lambda r: (r[0] or "", r[1] or 0))


def test_a_position_stored_by_another_ingest_after_the_check_is_skipped_not_retried(
        engine, monkeypatch):
    """Two ARRs on one database both receive a sender's re-sent tail: the other one commits
    a position between this one's duplicate check and its insert. The unique index refuses
    the batch; its other messages are stored, one by one, and nothing is raised (the ingest
    would otherwise retry the batch forever)."""
    from atna import store

    origin = uuid.uuid4().hex
    assert store_batch(engine, [_received(origin, 1, "P1")]) == 1
    monkeypatch.setattr(store, "_stored_seqs", lambda conn, o, seqs: set())  # the check misses it
    assert store_batch(engine, [_received(origin, s, f"P{s}") for s in (1, 2, 3)]) == 2
    assert _stored(engine) == [(origin, 1), (origin, 2), (origin, 3)]
