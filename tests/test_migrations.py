"""The Alembic chain (opendmp/migrations) builds exactly the tables of opendmp/schema.py,
on SQLite and PostgreSQL, and every migration can be undone and redone.

`opendmp serve` runs ``alembic upgrade head``; a migration that drifts from schema.py (a
column, an index or a foreign key left out) would only show in production.
"""
from __future__ import annotations

import uuid

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine

from opendmp.db import alembic_config, migrate
from opendmp.schema import metadata


@pytest.fixture(params=["sqlite", "postgresql"], ids=["sqlite", "pg"])
def fresh_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'migrations.sqlite3'}"
    return request.getfixturevalue("pg_cluster").create_database(f"mig_{uuid.uuid4().hex[:12]}")


def _drift(url: str) -> list:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return compare_metadata(MigrationContext.configure(conn), metadata)
    finally:
        engine.dispose()


def test_one_linear_chain():
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    assert len(script.get_heads()) == 1, script.get_heads()
    revisions = list(script.walk_revisions())
    assert [r.revision for r in revisions][-1] == "0001"
    assert all(r.down_revision == revisions[i + 1].revision
               for i, r in enumerate(revisions[:-1]))


def test_upgrade_builds_schema_py_and_every_step_reverses(fresh_url):
    migrate(fresh_url)
    assert _drift(fresh_url) == []
    cfg = alembic_config(fresh_url)
    command.downgrade(cfg, "base")
    command.upgrade(cfg, "head")
    assert _drift(fresh_url) == []
