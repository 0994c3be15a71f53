"""The Audit Record Repository's ingest process: parse, validate, index and store batches
of audit messages handed over by the receiver process (:mod:`atna.receiver`).

The receiver (one asyncio loop: TLS, framing, RFC 5424 header) and this process run on
different CPUs. They talk over two pipes with :mod:`multiprocessing.connection` framing:

- receiver → ingest: ``("batch", id, items)`` where ``items`` are
  ``(transport, peer, origin, origin_seq, xml)`` tuples; end of file = stop when done;
- ingest → receiver: ``("done", id, counters)`` once the batch is committed (or could not
  be stored at all: non-audit payloads are counted, not stored).

A batch is committed in one transaction (:func:`atna.store.store_batch`); database errors
are retried with backoff, never dropped, so a database restart only stalls the pipeline
(and, through the receiver's bounded in-flight window, the TLS senders).

Run as ``python -m atna.ingest READ_FD WRITE_FD`` by the receiver, which sends the
database URL first (``("config", {...})``) rather than putting it on the command line.
"""
from __future__ import annotations

import logging
import os
import pickle
import signal
import sys
import time
from collections import Counter
from multiprocessing.connection import Connection

from sqlalchemy import Engine

from .message import NotAnAuditMessage, read_index
from .ratelimit import RateLimitedLog
from .store import Received, store_batch

log = logging.getLogger("opendmp.atna.ingest")

#: items of a batch: (transport, peer, origin, origin_seq, audit XML)
Item = tuple[str, "str | None", "str | None", "int | None", bytes]


def process_batch(engine: Engine, items: list[Item], warn=log.warning) -> Counter:
    """Index and store one batch; returns the counters it changes."""
    counters: Counter[str] = Counter()
    received = []
    now = int(time.time() * 1_000_000)
    for transport, peer, origin, seq, xml in items:
        try:
            index = read_index(xml)
        except NotAnAuditMessage as exc:
            counters["non_audit"] += 1
            warn("ATNA %s from %s: not an audit message (%s)", transport, peer, exc)
            continue
        if index.schema_errors:
            counters["schema_invalid"] += 1
        received.append(Received(index, transport, peer, origin, seq, now))
    delay = 0.5
    while True:
        try:
            stored = store_batch(engine, received)
            break
        except Exception:  # noqa: BLE001 - the database may be restarting: keep the batch
            log.exception("ATNA: storing %d audit records failed; retrying", len(received))
            time.sleep(delay)
            delay = min(delay * 2, 10)
    counters["stored"] += stored
    if len(received) > stored:
        counters["duplicates"] += len(received) - stored
    return counters


def serve(inbox: Connection, outbox: Connection) -> None:
    """Process batches until the receiver closes its end of ``inbox``."""
    from opendmp.db import make_engine

    kind, config = pickle.loads(inbox.recv_bytes())
    assert kind == "config"
    engine = make_engine(config["database_url"])
    warn = RateLimitedLog(log).warning
    outbox.send_bytes(pickle.dumps(("ready", os.getpid())))
    try:
        while True:
            try:
                kind, batch_id, items = pickle.loads(inbox.recv_bytes())
            except EOFError:
                break
            counters = process_batch(engine, items, warn)
            outbox.send_bytes(pickle.dumps(("done", batch_id, dict(counters)),
                                           pickle.HIGHEST_PROTOCOL))
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    # the receiver decides when we stop (it closes the pipe after draining); a signal sent
    # to the whole process group must not cut a batch the receiver still counts on
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    inbox = Connection(int(argv[0]), writable=False)
    outbox = Connection(int(argv[1]), readable=False)
    try:
        serve(inbox, outbox)
    except BrokenPipeError:  # the receiver is gone: nobody left to tell
        pass


if __name__ == "__main__":
    main()
