"""The durable audit spool: append-only, in order, acknowledged per destination, shared by
processes (gunicorn workers), robust to a record torn by a crash."""
from __future__ import annotations

import multiprocessing
import os
import threading

from atna.spool import Spool, SpoolReader, _segments, collect_garbage


def _drain(reader: SpoolReader, start=None) -> list:
    pos = start or reader.acked()
    out = []
    while True:
        batch = reader.read(*pos, max_records=7)
        if not batch:
            return out
        out += batch
        pos = (batch[-1].next_segment, batch[-1].next_offset)


def test_records_come_back_in_order_and_acknowledgement_resumes_after_them(tmp_path):
    spool = Spool(tmp_path)
    seqs = [spool.append(f"message {i}".encode()) for i in range(50)]
    assert seqs == sorted(set(seqs))
    reader = SpoolReader(tmp_path, "tls-arr-6514")
    records = _drain(reader)
    assert [r.payload for r in records] == [f"message {i}".encode() for i in range(50)]
    assert [r.seq for r in records] == seqs
    reader.ack(records[29].next_segment, records[29].next_offset)
    again = SpoolReader(tmp_path, "tls-arr-6514")  # e.g. after a restart
    assert [r.payload for r in _drain(again)] == [f"message {i}".encode() for i in range(30, 50)]
    assert [r.payload for r in _drain(SpoolReader(tmp_path, "udp-other-514"))][:1] == [b"message 0"]


def _writer(directory, worker, n):
    spool = Spool(directory)
    for i in range(n):
        spool.append(f"{worker}:{i}".encode())


def test_concurrent_processes_append_without_loss_each_in_its_own_order(tmp_path):
    procs = [multiprocessing.Process(target=_writer, args=(tmp_path, w, 200)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    records = _drain(SpoolReader(tmp_path, "d"))
    assert len(records) == 800
    by_worker: dict[str, list[int]] = {}
    for r in records:
        w, i = r.payload.decode().split(":")
        by_worker.setdefault(w, []).append(int(i))
    assert all(v == list(range(200)) for v in by_worker.values())


def test_a_torn_record_at_the_end_of_a_segment_is_skipped_once_a_later_segment_exists(tmp_path):
    first = Spool(tmp_path)
    first.append(b"before the crash")
    seg = _segments(tmp_path)[-1]
    with open(tmp_path / f"{seg:012d}.seg", "ab") as fh:
        fh.write(b"\x00\x00\x01\x00\x12\x34")  # a header without its payload: torn by a crash
    reader = SpoolReader(tmp_path, "d")
    assert [r.payload for r in _drain(reader)] == [b"before the crash"]  # waits: may be mid-write
    Spool(tmp_path).append(b"after the restart")  # a new process starts a new segment
    assert [r.payload for r in _drain(reader)] == [b"before the crash", b"after the restart"]


def test_acknowledged_segments_are_collected(tmp_path):
    for _ in range(3):  # three processes, three segments
        pid = os.fork()
        if pid == 0:
            Spool(tmp_path).append(b"x")
            os._exit(0)
        os.waitpid(pid, 0)
    assert len(_segments(tmp_path)) == 3
    reader = SpoolReader(tmp_path, "d")
    records = _drain(reader)
    reader.ack(records[-1].next_segment, records[-1].next_offset)
    assert collect_garbage(tmp_path, [reader]) == 2
    assert _drain(reader) == []


def _fork_and_append(spool_or_auditor, append) -> int:
    """Fork while another thread of this process holds the writer's lock (as gunicorn's
    master forks workers while its audit thread appends); the child appends and exits
    0 when it could, 3 when it hung. Returns the child's exit status."""
    holding, release = threading.Event(), threading.Event()

    def hold():
        with spool_or_auditor._lock:
            holding.set()
            release.wait(10)
    t = threading.Thread(target=hold)
    t.start()
    holding.wait(5)
    pid = os.fork()
    if pid == 0:  # child: the holding thread does not exist here
        done = threading.Event()
        threading.Thread(target=lambda: (append(), done.set()), daemon=True).start()
        os._exit(0 if done.wait(5) else 3)
    release.set()
    t.join()
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_a_child_forked_while_the_spool_is_locked_can_still_append(tmp_path):
    spool = Spool(tmp_path / "spool", fsync=False)
    spool.append(b"parent")
    assert _fork_and_append(spool, lambda: spool.append(b"child")) == 0
    records = SpoolReader(tmp_path / "spool", "d").read(1, 0)
    assert sorted(r.payload for r in records) == [b"child", b"parent"]


def test_a_writer_whose_segment_was_collected_loses_nothing(tmp_path):
    """Two writing processes (two Spool instances: each starts its own segment); the
    destination acknowledges past the first writer's segment and the garbage collector
    deletes it; the first writer's next records must still reach the reader (they used
    to be appended to the unlinked file: audit messages silently lost)."""
    d = tmp_path / "spool"
    a, b = Spool(d, fsync=False), Spool(d, fsync=False)
    a.append(b"a1")                       # segment 1
    b.append(b"b1")                       # segment 2
    c = Spool(d, fsync=False)
    c.append(b"c1")                       # segment 3
    reader = SpoolReader(d, "dest")
    got = reader.read(*reader.acked())
    assert [r.payload for r in got] == [b"a1", b"b1", b"c1"]
    last = got[-1]
    reader.ack(last.next_segment, last.next_offset)
    collect_garbage(d, [reader])          # segments 1 and 2 are gone
    assert _segments(d) == [3]
    a.append(b"a2")
    b.append(b"b2")
    got = reader.read(last.next_segment, last.next_offset)
    assert [r.payload for r in got] == [b"a2", b"b2"]
