"""The receiver's side of the hand-over to the ingest process (:mod:`atna.ingest`).

The receiver's event loop appends each audit message it has framed to the current batch;
a batch leaves when it holds ``batch_max`` messages or ``window`` seconds after its first
message, whichever comes first. At most ``inflight`` batches are with the ingest process
(sent, not yet committed) and one more waits to be sent: past that, :meth:`put` waits —
the TLS connection is not read any more and TCP flow control pushes back on the sender —
and :meth:`offer` lets the current batch grow to ``overflow_max`` messages, then refuses
(UDP datagrams are dropped and counted: RFC 5426 has no flow control).

Durability (README "Audit Record Repository"): a message is durable once its batch is
committed. Until then it exists only in this process and the ingest process. What a crash
of the ARR can lose is therefore bounded: at most ``(inflight + 2) * batch_max`` messages
from TLS connections (``overflow_max`` more when UDP bursts are being absorbed), received
within the last ``window`` seconds plus the time the ingest process needs for the batches
ahead of them. If only the ingest process dies, nothing is lost: the batches
it had not acknowledged are kept here and sent again to a new ingest process (a batch
committed just before the crash is then stored twice, except the messages from an
OpenDMP spool, which carry their origin and sequence number and are stored once).
"""
from __future__ import annotations

import asyncio
import logging
import os
import pickle
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import Callable

log = logging.getLogger("opendmp.atna.arr")

BATCH_MAX = 500
#: seconds a batch waits for more messages before it is handed over
BATCH_WINDOW = 0.05
INFLIGHT = 2
#: messages a batch may hold when it cannot leave (UDP has no flow control: absorb bursts)
OVERFLOW_MAX = 8 * BATCH_MAX


class IngestPipeline:
    def __init__(self, database_url: str, on_counters: Callable[[dict], None],
                 batch_max: int = BATCH_MAX, window: float = BATCH_WINDOW,
                 inflight: int = INFLIGHT, overflow_max: int = OVERFLOW_MAX) -> None:
        self.database_url = database_url
        self.on_counters = on_counters
        self.batch_max = batch_max
        self.window = window
        self.inflight = inflight
        self.overflow_max = max(overflow_max, batch_max)
        self.pending: list[tuple] = []
        self.unacked: dict[int, list[tuple]] = {}
        self.worker_pid: int | None = None
        self._next_id = 0
        self._gen = 0
        self._closing = False
        self._proc: subprocess.Popen | None = None
        self._conn: Connection | None = None
        self._io = ThreadPoolExecutor(1, thread_name_prefix="atna-ingest-pipe")
        self._tasks: list[asyncio.Task] = []

    # ------------------------------------------------------------------ producers
    async def put(self, item: tuple) -> None:
        """Queue a message from a stream; waits while the pipeline is full."""
        self._append(item)
        if len(self.pending) >= self.batch_max:
            batch, self.pending = self.pending, []
            await self._batches.put(batch)

    def offer(self, item: tuple) -> bool:
        """Queue a message without waiting (UDP, local alerts): when the pipeline is full
        the current batch grows up to ``overflow_max`` messages (a burst is absorbed, the
        batch goes as one transaction); past that, False (the caller counts a drop)."""
        if len(self.pending) >= self.batch_max:
            if not self._batches.full():
                batch, self.pending = self.pending, []
                self._batches.put_nowait(batch)
            elif len(self.pending) >= self.overflow_max:
                return False
        self._append(item)
        return True

    def _append(self, item: tuple) -> None:
        if not self.pending:
            self._has_pending.set()
        self.pending.append(item)

    # ------------------------------------------------------------------ life cycle
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._batches: asyncio.Queue[list[tuple]] = asyncio.Queue(1)
        self._has_pending = asyncio.Event()
        self._progress = asyncio.Event()
        self._lock = asyncio.Lock()
        async with self._lock:
            await self._spawn()
        self._tasks = [asyncio.create_task(self._timer()), asyncio.create_task(self._pump())]

    async def drain(self, timeout: float = 30.0) -> bool:
        """Hand over what is pending, wait until every batch is committed (at most
        ``timeout`` seconds), then stop the ingest process. True when all was committed."""
        if self.pending:
            batch, self.pending = self.pending, []
            await self._batches.put(batch)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (not self._batches.empty() or self.unacked) and loop.time() < deadline:
            self._progress.clear()
            try:
                await asyncio.wait_for(self._progress.wait(), max(0.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                break
        done = not self.unacked and self._batches.empty()
        if not done:
            log.error("ATNA: stopping with %d audit messages not yet stored",
                      sum(map(len, self.unacked.values())) + len(self.pending))
        self._closing = True
        for task in self._tasks:
            task.cancel()
        await self._stop_worker()
        self._io.shutdown(wait=False)
        return done

    # ------------------------------------------------------------------ tasks
    async def _timer(self) -> None:
        while True:
            await self._has_pending.wait()
            await asyncio.sleep(self.window)
            self._has_pending.clear()
            if self.pending:
                batch, self.pending = self.pending, []
                await self._batches.put(batch)

    async def _pump(self) -> None:
        while True:
            batch = await self._batches.get()
            while len(self.unacked) >= self.inflight:
                self._progress.clear()
                await self._progress.wait()
            self._next_id += 1
            self.unacked[self._next_id] = batch
            await self._send(self._next_id)

    async def _send(self, batch_id: int) -> None:
        async with self._lock:
            gen = self._gen
            ok = await self._loop.run_in_executor(self._io, self._send_sync, batch_id)
        if not ok:
            await self._restart(gen)

    def _send_sync(self, batch_id: int) -> bool:
        batch, conn = self.unacked.get(batch_id), self._conn
        if batch is None:
            return True
        if conn is None:
            return False
        try:
            conn.send_bytes(pickle.dumps(("batch", batch_id, batch), pickle.HIGHEST_PROTOCOL))
            return True
        except OSError:
            return False

    # ------------------------------------------------------------------ the ingest process
    async def _spawn(self) -> None:
        """Start an ingest process (``self._lock`` held)."""
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        path = [p or os.getcwd() for p in sys.path]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "atna.ingest", str(to_child_r), str(from_child_w)],
                pass_fds=(to_child_r, from_child_w), env=env, stdin=subprocess.DEVNULL)
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        self._gen += 1
        self.worker_pid = self._proc.pid
        self._conn = Connection(to_child_w, readable=False)
        acks = Connection(from_child_r, writable=False)
        threading.Thread(target=self._read_acks, args=(acks, self._gen), daemon=True,
                         name="atna-ingest-acks").start()
        config = pickle.dumps(("config", {"database_url": self.database_url}))
        await self._loop.run_in_executor(self._io, self._conn.send_bytes, config)
        log.info("ATNA: ingest process %s started", self._proc.pid)

    def _read_acks(self, conn: Connection, gen: int) -> None:
        """Thread: the ingest process's answers, to the event loop."""
        try:
            while True:
                try:
                    message = pickle.loads(conn.recv_bytes())
                except (EOFError, OSError):
                    break
                self._loop.call_soon_threadsafe(self._on_message, message)
        finally:
            conn.close()
            try:
                self._loop.call_soon_threadsafe(self._worker_gone, gen)
            except RuntimeError:  # the loop is closed: the ARR is stopping
                pass

    def _on_message(self, message: tuple) -> None:
        if message[0] == "done":
            _, batch_id, counters = message
            self.unacked.pop(batch_id, None)
            self.on_counters(counters)
            self._progress.set()

    def _worker_gone(self, gen: int) -> None:
        if self._closing or gen != self._gen:
            return
        self._tasks.append(asyncio.create_task(self._restart(gen)))

    async def _restart(self, gen: int) -> None:
        """Replace the ingest process of generation ``gen`` (found dead by a failed send
        or by the end of its answers, whichever comes first) and re-send what it had not
        committed."""
        delay = 0.5
        async with self._lock:
            while gen == self._gen and not self._closing:
                log.error("ATNA: ingest process %s is gone (exit status %s); starting another, "
                          "re-sending %d batches", self.worker_pid,
                          self._proc.poll() if self._proc else None, len(self.unacked))
                self.on_counters({"ingest_restarts": 1})
                await self._stop_worker()
                await self._spawn()
                gen = self._gen
                ok = True
                for batch_id in sorted(self.unacked):
                    ok = await self._loop.run_in_executor(self._io, self._send_sync, batch_id)
                    if not ok:
                        break
                if ok:
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                gen = self._gen  # retry with yet another process

    async def _stop_worker(self) -> None:
        conn, proc = self._conn, self._proc
        self._conn = None
        if conn is not None:
            conn.close()  # end of file: the ingest process finishes its batch and exits
        if proc is not None:
            try:
                await self._loop.run_in_executor(None, proc.wait, 10)
            except subprocess.TimeoutExpired:
                proc.kill()
                await self._loop.run_in_executor(None, proc.wait)
