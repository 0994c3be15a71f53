"""The database engine after a PostgreSQL restart: pooled connections the server closed
are replaced before use (opendmp.db), so the first transaction after the restart, and
every one after it, succeeds — in the engine and through the real server (ITI-43, ITI-18).

A private throwaway cluster (tests/harness PostgresCluster) is restarted with
``pg_ctl restart -m fast``: every backend is terminated, as in a production restart.
"""
from __future__ import annotations

import threading

import factory as F
import pytest
from sqlalchemy import text
from xds import find_documents, repository, repository_unique_id, status

from harness import PostgresCluster, ServerProcess
from opendmp.db import make_engine, migrate, read_connection, read_transaction, write_transaction
from registry.hl7types import parse_cx
from repository.source import DocumentContent, provide_and_register, retrieve


@pytest.fixture(scope="module")
def cluster():
    pg = PostgresCluster(external_url="")  # never an external server: we restart it
    try:
        pg.start()
    except Exception as exc:  # noqa: BLE001
        pg.stop()
        pytest.skip(f"PostgreSQL unavailable: {exc}")
    yield pg
    pg.stop()


def _fill_pool(engine, n: int) -> set[int]:
    """Check out ``n`` connections at once (so the pool holds ``n``); their backend pids."""
    pids: set[int] = set()
    barrier = threading.Barrier(n)

    def one() -> None:
        with read_transaction(engine) as conn:
            pids.add(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
            barrier.wait(10)

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    return pids


def test_engine_transactions_succeed_right_after_a_restart(cluster):
    url = cluster.create_database("reconnect_engine")
    engine = make_engine(url)
    try:
        with write_transaction(engine) as conn:
            conn.execute(text("CREATE TABLE t (v int)"))
        before = _fill_pool(engine, 4)
        assert len(before) == 4 and engine.pool.checkedin() == 4
        cluster.restart()
        # every pooled connection is dead now: each use must get a live one, first time
        seen = set()
        for i in range(6):
            with write_transaction(engine) as conn:
                conn.execute(text("INSERT INTO t VALUES (:v)"), {"v": i})
                seen.add(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
            with read_transaction(engine) as conn:
                assert conn.execute(text("SELECT count(*) FROM t")).scalar_one() == i + 1
            with read_connection(engine) as conn:
                assert conn.execute(text("SELECT count(*) FROM t")).scalar_one() == i + 1
        assert not seen & before
        # and the pool works under concurrency again
        assert len(_fill_pool(engine, 4)) == 4
    finally:
        engine.dispose()


def test_server_answers_retrieves_and_queries_right_after_a_restart(cluster, tmp_path):
    url = cluster.create_database("reconnect_server")
    migrate(url)
    with ServerProcess(url, home=tmp_path / "home") as server:
        patient = F.new_ins()
        assert server.run_cli(["patient", "add", patient]).returncode == 0
        sub = F.submission(patient)
        de = sub.documents[0]
        de.hash = de.size = de.repository_unique_id = None
        content = b"<ClinicalDocument>after the restart</ClinicalDocument>"
        answer = provide_and_register(repository(server), sub,
                                      {de.id: DocumentContent.of(content, "text/xml")}).payload
        assert status(answer) == "Success"
        repo_uid = repository_unique_id(server)

        def retrieve_ok() -> None:
            response, docs = retrieve(repository(server), repo_uid, [de.unique_id])
            assert status(response) == "Success"
            assert [d.content for d in docs] == [content]

        def queries_ok() -> None:
            found = find_documents(server, parse_cx(patient).canonical)
            assert status(found) == "Success"
            assert len(found.xpath("//*[local-name()='ExtrinsicObject']")) == 1

        # several connections in each worker's pool
        for _ in range(3):
            threads = [threading.Thread(target=retrieve_ok) for _ in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
        cluster.restart()
        for _ in range(12):  # more than the pooled connections of both workers
            retrieve_ok()
            queries_ok()
