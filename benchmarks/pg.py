"""PostgreSQL for the benchmark: the test harness's throwaway cluster, but durable and
sized like a small production server, plus the EXPLAIN check of the hot queries."""
from __future__ import annotations

import os
import re

import psycopg
from psycopg import sql as pgsql
from sqlalchemy import event

import benchmarks  # noqa: F401  (tests/ on sys.path)
import xds
from harness import PostgresCluster, free_port
from opendmp.db import make_engine, read_transaction
from registry.affinity import AffinityDomain
from registry.iti18 import registry_stored_query

from .dataset import conninfo

#: settings of the benchmark cluster; the test harness runs with fsync=off instead.
SETTINGS = {
    "shared_buffers": "1GB",
    "effective_cache_size": "12GB",
    "work_mem": "16MB",
    "maintenance_work_mem": "512MB",
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "wal_compression": "on",
    "max_wal_size": "8GB",
    "checkpoint_timeout": "15min",
    "checkpoint_completion_target": "0.9",
    "random_page_cost": "1.1",
    "max_connections": "200",
}


class BenchCluster(PostgresCluster):
    """harness.PostgresCluster with durable, tuned settings (``SETTINGS``, overridable)."""

    def __init__(self, settings: dict[str, str] | None = None):
        # "" = never an external server (OPENDMP_TEST_PG_URL is for tests)
        super().__init__(external_url="")
        self.settings = {**SETTINGS, **(settings or {})}

    def _start_server(self) -> None:  # replaces the harness's fsync=off options
        last = None
        for _attempt in range(3):
            self.port = free_port(self.host)
            opts = f"-c listen_addresses={self.host} -p {self.port} -k {self.socket_dir} " + \
                " ".join(f"-c {k}={v}" for k, v in self.settings.items())
            proc = self._run([self._pg_ctl, "-D", self.data_dir, "-l", self.log_path, "-w",
                              "-t", "60", "-o", opts, "start"], check=False)
            if proc.returncode == 0 and self._wait_ready(30):
                return
            last = proc.stdout
            self._run([self._pg_ctl, "-D", self.data_dir, "-m", "immediate", "-w", "stop"],
                      check=False)
        raise RuntimeError(f"could not start PostgreSQL:\n{last}\n{self.log_text()}")

    @property
    def postmaster_pid(self) -> int | None:
        try:
            with open(os.path.join(self.data_dir, "postmaster.pid")) as f:
                return int(f.readline())
        except (OSError, ValueError, TypeError):
            return None


def server_facts(url: str) -> dict[str, str]:
    with psycopg.connect(conninfo(url)) as conn:
        facts = {"version": conn.execute("SHOW server_version").fetchone()[0]}
        for name in ("shared_buffers", "synchronous_commit", "fsync", "full_page_writes",
                     "default_toast_compression", "max_wal_size"):
            facts[name] = conn.execute(f"SHOW {name}").fetchone()[0]
    return facts


def sizes(url: str) -> dict[str, int]:
    with psycopg.connect(conninfo(url)) as conn:
        return {t: conn.execute("SELECT pg_total_relation_size(%s)", (t,)).fetchone()[0]
                for t in ("patient", "registry_object", "object_key")}


def _captured_statements(url: str, request) -> list[tuple[str, dict]]:
    """Run one stored query in-process with the product's engine and code; return the
    SQL statements it sent, with their parameters."""
    engine = make_engine(url)
    seen: list[tuple[str, dict]] = []

    @event.listens_for(engine, "before_cursor_execute")
    def _capture(conn, cursor, statement, parameters, context, executemany):
        seen.append((statement, dict(parameters or {})))

    with read_transaction(engine) as conn:
        registry_stored_query(conn, request, AffinityDomain.from_settings({}))
    engine.dispose()
    return seen


def _explain(url: str, statement: str, params: dict, generic: bool) -> list[str]:
    """EXPLAIN ANALYZE the statement with its parameters; ``generic``: as a prepared
    statement forced onto its generic plan (what psycopg's automatic prepare, after 5
    executions on a connection, may end up using)."""
    with psycopg.connect(conninfo(url)) as conn:
        if not generic:
            rows = conn.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement, params).fetchall()
            return [r[0] for r in rows]
        names: list[str] = []

        def placeholder(m: re.Match) -> str:
            names.append(m.group(1))
            return f"${len(names)}"

        sql = re.sub(r"%\((\w+)\)s", placeholder, statement)
        conn.execute(f"PREPARE bench_q AS {sql}")
        conn.execute("SET plan_cache_mode = force_generic_plan")
        args = ", ".join(pgsql.Literal(params[n]).as_string(conn) for n in names)
        rows = conn.execute(f"EXPLAIN (ANALYZE, BUFFERS) EXECUTE bench_q({args})").fetchall()
        return [r[0] for r in rows]


def explain_find_documents(url: str, patient: str) -> dict:
    """The FindDocuments SQL the product sends for ``patient`` (Approved, LeafClass), its
    plans, and whether they use ix_ro_patient."""
    req = xds.adhoc_query(xds.FIND_DOCUMENTS, {
        "$XDSDocumentEntryPatientId": f"'{patient}'",
        "$XDSDocumentEntryStatus": f"('{xds.APPROVED}')"})
    statements = _captured_statements(url, req)
    main = [(s, p) for s, p in statements if "registry_object" in s and "patient_pk" in s
            and "FOR UPDATE" not in s]
    assert main, f"FindDocuments statement not found among {statements}"
    sql, params = main[-1]
    custom = _explain(url, sql, params, generic=False)
    generic = _explain(url, sql, params, generic=True)
    return {"sql": sql, "params": params, "custom": custom, "generic": generic,
            "all_sql": [s for s, _ in statements],
            "uses_index": all("ix_ro_patient" in "\n".join(p) for p in (custom, generic))}


def explain_get_documents(url: str, uuid: str) -> dict:
    req = xds.adhoc_query(xds.GET_DOCUMENTS, {"$XDSDocumentEntryEntryUUID": f"('{uuid}')"})
    statements = _captured_statements(url, req)
    sql, params = [(s, p) for s, p in statements if "registry_object" in s][-1]
    custom = _explain(url, sql, params, generic=False)
    return {"sql": sql, "params": params, "custom": custom,
            "all_sql": [s for s, _ in statements]}
