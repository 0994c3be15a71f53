"""Smoke tests of the test harness itself: PostgreSQL cluster, real server, CLI."""

from __future__ import annotations

import json
import urllib.request
import uuid

import psycopg


def _get(url: str):
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), resp.read()


def _cx() -> str:
    """A unique patient identifier in HL7 CX form (INS-like assigning authority)."""
    return f"{uuid.uuid4().int % 10**13:013d}^^^&1.2.250.1.213.1.4.8&ISO"


def test_pg_cluster_creates_usable_databases(pg_cluster):
    url = pg_cluster.create_database("harness_smoke")
    assert url.startswith("postgresql+psycopg://")
    conninfo = url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(conninfo) as conn:
        conn.execute("CREATE TABLE t (x bytea)")
        conn.execute("INSERT INTO t VALUES (%s)", (b"\x00\xff",))
        assert conn.execute("SELECT x FROM t").fetchone()[0] == b"\x00\xff"
        assert conn.execute("SHOW server_encoding").fetchone()[0] == "UTF8"


def test_server_answers_health(server, server_url, db_url):
    assert server_url == server.base_url
    status, ctype, body = _get(server.url("/health"))
    assert status == 200
    assert "json" in ctype
    json.loads(body)
    assert server.running


def test_cli_patient_add(cli):
    proc = cli("patient", "add", _cx())
    assert proc.returncode == 0, proc.stderr


def test_private_server_survives_kill9_and_restart(server_factory):
    srv = server_factory()
    port = srv.port
    srv.kill9()
    assert not srv.running
    srv.restart()
    assert srv.port == port
    status, _, _ = _get(srv.url("/health"))
    assert status == 200
