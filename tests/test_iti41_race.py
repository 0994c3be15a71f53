"""ITI-41 racing another ITI-41 for the same SubmissionSet uniqueId (ITI TF-2b §3.42.4.1.3,
XDSDuplicateUniqueIdInRegistry), on the WSGI application in-process, two threads.

Transaction A is held just before its COMMIT; B, for another patient (so no patient lock
orders them), passes the registry's checks, which cannot see A's uncommitted rows. On
PostgreSQL B's insert, sent in ITI-41's pipeline with its COMMIT, then waits on A's entry
in the unique index; once A commits, the index refuses B's insert and the refusal comes
back with B's COMMIT round trip: B must answer XDSDuplicateUniqueIdInRegistry and leave
neither rows nor bytes. On SQLite the writers queue (BEGIN IMMEDIATE): B's checks run
after A's commit and refuse it with the same code.
"""
from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import factory as F
import pytest
from conftest import _new_database
from lxml import etree
from sqlalchemy import text
from xds import NS, error_codes, status

from opendmp import failpoints
from opendmp.app import create_app
from opendmp.config import Settings
from opendmp.db import make_engine, migrate, read_connection, write_transaction
from registry import store
from registry.hl7types import parse_cx
from repository import index
from repository.source import ITI41_ACTION, DocumentContent, provide_and_register_request
from soapstack.client import build_envelope
from soapstack.mtom import mtom_message

ENDPOINT = "http://127.0.0.1:8080/xds/repository"


def _post(app, body: bytes, content_type: str) -> etree._Element:
    environ = {
        "REQUEST_METHOD": "POST", "PATH_INFO": "/xds/repository", "QUERY_STRING": "",
        "CONTENT_TYPE": content_type, "CONTENT_LENGTH": str(len(body)),
        "wsgi.input": io.BytesIO(body), "REMOTE_ADDR": "127.0.0.1",
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8080", "wsgi.url_scheme": "http",
    }
    result = app(environ, lambda s, h, exc=None: None)
    try:
        out = b"".join(result)
    finally:
        getattr(result, "close", lambda: None)()
    start = out.index(b"<env:Envelope")
    return etree.fromstring(out[start:out.index(b"</env:Envelope>") + 15]).find(
        ".//rs:RegistryResponse", NS)


def _iti41_body(sub, content: bytes) -> tuple[bytes, str]:
    de = sub.documents[0]
    de.hash = de.size = de.repository_unique_id = None
    body, attachments = provide_and_register_request(
        sub, {de.id: DocumentContent.of(content, "text/xml")})
    ctype, _length, chunks = mtom_message(build_envelope(ITI41_ACTION, ENDPOINT, body),
                                          attachments, action=ITI41_ACTION)
    return b"".join(chunks), ctype


@pytest.fixture
def app_on_fresh_db(request, db_url, tmp_path_factory, tmp_path):
    backend = "sqlite" if db_url.startswith("sqlite") else "postgresql"
    url = _new_database(request, backend, tmp_path_factory)
    migrate(url)
    app = create_app(Settings.from_env({"OPENDMP_DATABASE_URL": url,
                                        "OPENDMP_HOME": str(tmp_path)}))
    return app, url, tmp_path


def test_a_submission_set_unique_id_registered_concurrently_is_refused_whole(
        app_on_fresh_db, monkeypatch):
    app, url, home = app_on_fresh_db
    engine = make_engine(url)
    patients = [F.new_ins(), F.new_ins()]
    with write_transaction(engine) as conn:
        for cx in patients:
            store.add_patient(conn, parse_cx(cx).canonical)
    sub_a, sub_b = (F.submission(cx) for cx in patients)
    sub_b.submission_sets[0].unique_id = sub_a.submission_sets[0].unique_id
    uid_a, uid_b = sub_a.documents[0].unique_id, sub_b.documents[0].unique_id
    bodies = {"A": _iti41_body(sub_a, b"<doc>A</doc>"), "B": _iti41_body(sub_b, b"<doc>B</doc>")}

    a_holds, release = threading.Event(), threading.Event()
    real_hit = failpoints.hit

    def hold_a_before_commit(name: str) -> None:
        if name == "iti41.before_commit" and threading.current_thread().name == "A":
            a_holds.set()
            assert release.wait(30)
        real_hit(name)

    monkeypatch.setattr(failpoints, "hit", hold_a_before_commit)
    answers: dict[str, etree._Element] = {}

    def submit(name: str) -> None:
        answers[name] = _post(app, *bodies[name])

    threads = {n: threading.Thread(target=submit, args=(n,), name=n) for n in ("A", "B")}
    threads["A"].start()
    while not a_holds.wait(0.05):
        assert threads["A"].is_alive(), etree.tostring(answers["A"])
    threads["B"].start()
    if url.startswith("postgresql"):   # B's insert waits on A's entry in the unique index
        deadline = time.monotonic() + 30
        with read_connection(engine) as conn:
            while not conn.execute(text("SELECT count(*) FROM pg_locks WHERE NOT granted")
                                   ).scalar():
                assert time.monotonic() < deadline, "B never waited for A"
                time.sleep(0.01)
    else:
        time.sleep(0.3)                # B queues behind A's write transaction
    release.set()
    for t in threads.values():
        t.join(60)
        assert not t.is_alive()

    assert status(answers["A"]) == "Success", etree.tostring(answers["A"])
    assert status(answers["B"]) == "Failure", etree.tostring(answers["B"])
    assert error_codes(answers["B"]) == ["XDSDuplicateUniqueIdInRegistry"]
    with read_connection(engine) as conn:
        rows = index.lookup(conn, [uid_a, uid_b])
        registered = {o.unique_id for o in store.stored_objects(conn, [], [uid_a, uid_b])}
    assert set(rows) == {uid_a} and registered == {uid_a}   # nothing of B
    documents = Path(home) / "documents"
    deadline = time.monotonic() + 10   # A's file may still be moving into objects/
    while True:
        files = [p.name.split(".")[0] for d in ("staging", "objects")
                 for p in (documents / d).rglob("*") if p.is_file()]
        if files == [rows[uid_a].storage_key] or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert files == [rows[uid_a].storage_key]   # B's bytes are gone
