"""The worker-memory settings of ``opendmp serve`` (opendmp/memory.py, issue #3) keep
the server correct: pooled database connections are not shared across the fork of a
preloaded application, gunicorn's body reads stay bounded, the server runs under
``python -OO``. (The memory itself is measured in benchmarks/, never asserted here.)"""
from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

from gunicorn.http.body import LengthReader
from gunicorn.http.unreader import SocketUnreader
from sqlalchemy import text

from opendmp import memory
from opendmp.db import make_engine


def _connection_identity(conn) -> str:
    if conn.engine.dialect.name == "postgresql":
        return str(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
    return str(id(conn.connection.dbapi_connection))


def test_forked_child_does_not_reuse_the_parents_pooled_connection(db_url):
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:          # back to the pool afterwards
            parent_id = _connection_identity(conn)
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:                            # the child: a gunicorn worker
            code = 1
            try:
                os.close(read_end)
                with engine.connect() as conn:
                    child_id = _connection_identity(conn)
                    conn.execute(text("SELECT 1"))
                os.write(write_end, child_id.encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as f:
            child_id = f.read().decode()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert child_id and child_id != parent_id
        with engine.connect() as conn:          # the parent's connection still works
            assert _connection_identity(conn) == parent_id
            assert conn.execute(text("SELECT 41 + 1")).scalar_one() == 42
    finally:
        engine.dispose()


def test_gunicorn_body_reads_hold_at_most_one_block(monkeypatch):
    monkeypatch.setattr(SocketUnreader, "max_body_chunk", SocketUnreader.max_body_chunk)
    block = 64 * 1024
    assert memory.cap_body_read_ahead(block)
    body = os.urandom(3 * 1024 * 1024 + 123)
    a, b = socket.socketpair()
    sender = threading.Thread(target=lambda: (b.sendall(body), b.close()))
    sender.start()
    try:
        unreader = SocketUnreader(a)
        reader = LengthReader(unreader, len(body))
        got, held = [], 0
        while chunk := reader.read(block):
            got.append(chunk)
            held = max(held, unreader.buf.getbuffer().nbytes)
        assert b"".join(got) == body
        assert held <= block        # uncapped, gunicorn holds up to 1 MiB ahead
    finally:
        sender.join()
        a.close()


def test_serve_runs_under_python_OO(server):
    argv = Path(f"/proc/{server.proc.pid}/cmdline").read_bytes().split(b"\0")
    assert b"-OO" in argv and argv[argv.index(b"-m") + 1] == b"opendmp.cli"
    assert argv[argv.index(b"opendmp.cli") + 1] == b"serve"
