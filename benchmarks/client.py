"""The load generator: real SOAP 1.2 requests over keep-alive httpx clients, one forked
process per client (the GIL would otherwise cap the generator), closed loop.

Request bodies are built once by the product's client code (``soapstack.client.
build_envelope`` around ``tests/factory`` / ``tests/xds`` payloads) with sentinel
values, then per request only the patient / uniqueIds / entryUUID / wsa:MessageID are
substituted (the same slot technique as :mod:`benchmarks.dataset`), so the generator
spends its CPU on HTTP, not on building XML.

CPU accounting: every phase samples ``/proc`` at the start and the end of the measured
window: the whole machine (``/proc/stat``), the server's process group (gunicorn master
and workers), the PostgreSQL processes (postmaster and its children), and each client
process reports its own CPU time.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import random
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Protocol
from xml.sax.saxutils import escape

import httpx

import benchmarks  # noqa: F401  (tests/ on sys.path)
import factory as F
import xds
from soapstack.client import build_envelope

from .dataset import Text

_SENTINEL_MSGID = "urn:uuid:00000000-0000-4000-8000-0000000b3c41"
_SENTINEL_PATIENT = "2991299999999" + F.ins_key("2991299999999") + f"^^^&{F.INS_NIR}&ISO^NH"
_SENTINEL_DE_UID = "1.2.250.1.999.434343.8001"
_SENTINEL_SS_UID = "1.2.250.1.999.434343.8002"
_SENTINEL_UUID = "urn:uuid:5e471ae1-0000-4000-8000-00000000d0c5"
SUCCESS = b"ResponseStatusType:Success"
#: a phase during which more than this % of the machine went to other processes is
#: measured again (benchmarks.registry --retries)
FOREIGN_LIMIT = 10.0
_ERROR_CODE = re.compile(rb'errorCode="([^"]*)"')


def _template(envelope: bytes, needles: dict[str, str]) -> Text:
    tpl = Text.compile(envelope, {k: v.encode() for k, v in needles.items()})
    assert tpl is not None and set(tpl.names) == set(needles), (needles, tpl and tpl.names)
    return tpl


@dataclass
class Workload:
    """What a client process sends. Inherited by the forked processes (not pickled)."""

    name: str
    url: str
    action: str
    template: Text
    #: (rng, client nonce, request number) -> slot values (bytes); the nonce is unique
    #: per client process and phase
    values: object
    #: count this tag in answers (results per query)
    count_tag: bytes | None = None

    def body(self, rng: random.Random, client: int, i: int) -> bytes:
        vals = self.values(rng, client, i)
        vals["MSGID"] = f"urn:uuid:{uuid.UUID(int=rng.getrandbits(128), version=4)}".encode()
        return self.template.render(vals)

    # the Job protocol of run_phase
    def connect(self) -> httpx.Client:
        return httpx.Client(timeout=60)  # one keep-alive connection for the whole phase

    def prepare(self, rng: random.Random, client: int, i: int) -> tuple[None, bytes]:
        return None, self.body(rng, client, i)

    def send(self, http: httpx.Client, body: bytes) -> tuple[str | None, int]:
        headers = {"Content-Type": f'application/soap+xml; charset=UTF-8; action="{self.action}"'}
        try:
            r = http.post(self.url, content=body, headers=headers)
            content, status = r.content, r.status_code
        except httpx.HTTPError as exc:
            content, status = repr(exc).encode(), 0
        if status == 200 and SUCCESS in content:
            return None, content.count(self.count_tag) if self.count_tag else 0
        codes = sorted(set(_ERROR_CODE.findall(content)))
        return f"HTTP {status}: " + (", ".join(c.decode() for c in codes) if codes
                                     else repr(content[:600])), 0


def find_documents(url: str, patients: list[str]) -> Workload:
    """ITI-18 FindDocuments, patient + Approved, LeafClass, for a uniformly random patient."""
    req = xds.adhoc_query(xds.FIND_DOCUMENTS, {
        "$XDSDocumentEntryPatientId": f"'{_SENTINEL_PATIENT}'",
        "$XDSDocumentEntryStatus": f"('{xds.APPROVED}')"}, "LeafClass")
    env = build_envelope(xds.ITI18, url, req, message_id=_SENTINEL_MSGID)
    tpl = _template(env, {"MSGID": _SENTINEL_MSGID, "PATIENT": escape(_SENTINEL_PATIENT)})
    escaped = [escape(p).encode() for p in patients]

    def values(rng, client, i):
        return {"PATIENT": escaped[rng.randrange(len(escaped))]}

    return Workload("FindDocuments", url, xds.ITI18, tpl, values, b"<rim:ExtrinsicObject ")


def get_documents(url: str, document_uuid, n_documents: int) -> Workload:
    """ITI-18 GetDocuments by one entryUUID, LeafClass, for a uniformly random document."""
    req = xds.adhoc_query(xds.GET_DOCUMENTS,
                          {"$XDSDocumentEntryEntryUUID": f"('{_SENTINEL_UUID}')"}, "LeafClass")
    env = build_envelope(xds.ITI18, url, req, message_id=_SENTINEL_MSGID)
    tpl = _template(env, {"MSGID": _SENTINEL_MSGID, "UUID": _SENTINEL_UUID})

    def values(rng, client, i):
        return {"UUID": document_uuid(rng.randrange(n_documents)).encode()}

    return Workload("GetDocuments", url, xds.ITI18, tpl, values, b"<rim:ExtrinsicObject ")


def register(url: str, patients: list[str], oid_root: str) -> Workload:
    """ITI-42 of a fresh submission (1 DocumentEntry + SubmissionSet + HasMember) for a
    uniformly random existing patient; uniqueIds ``oid_root.<client>.<n>.1|2``."""
    sub = F.submission(_SENTINEL_PATIENT, unique_id=_SENTINEL_DE_UID,
                       content=bytes(143_872))
    sub.submission_set.unique_id = _SENTINEL_SS_UID
    env = build_envelope(xds.ITI42, url, F.submit_objects_request(sub),
                         message_id=_SENTINEL_MSGID)
    tpl = _template(env, {"MSGID": _SENTINEL_MSGID, "PATIENT": escape(_SENTINEL_PATIENT),
                          "DE_UID": _SENTINEL_DE_UID, "SS_UID": _SENTINEL_SS_UID})
    escaped = [escape(p).encode() for p in patients]

    def values(rng, client, i):
        base = f"{oid_root}.{client}.{i}"
        return {"PATIENT": escaped[rng.randrange(len(escaped))],
                "DE_UID": f"{base}.1".encode(), "SS_UID": f"{base}.2".encode()}

    return Workload("ITI-42", url, xds.ITI42, tpl, values)


# ----------------------------------------------------------------- CPU accounting

_TICK = os.sysconf("SC_CLK_TCK")


def _proc_stat(pid: int) -> tuple[int, int, int] | None:
    """(ppid, pgrp, utime+stime ticks) of a process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2:].split()
    return int(fields[1]), int(fields[2]), int(fields[11]) + int(fields[12])


def _machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    idle = vals[3] + vals[4]
    total = sum(vals[:8])
    return total - idle, total


@dataclass
class CpuSample:
    machine_busy: int
    machine_total: int
    #: ticks per process of the server's process group (gunicorn master and workers)
    server: dict[int, int]
    postgres: int
    #: ticks per process of everything else (other sessions, kernel threads)
    others: dict[int, int]

    @classmethod
    def take(cls, server_pgid: int | None, postmaster: int | None,
             exclude: frozenset[int] = frozenset()) -> "CpuSample":
        busy, total = _machine_ticks()
        server: dict[int, int] = {}
        others: dict[int, int] = {}
        pg = 0
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            pid = int(name)
            st = _proc_stat(pid)
            if st is None:
                continue
            ppid, pgrp, ticks = st
            if server_pgid is not None and pgrp == server_pgid:
                server[pid] = ticks
            elif postmaster is not None and (pid == postmaster or ppid == postmaster):
                pg += ticks
            elif pid not in exclude:
                others[pid] = ticks
        return cls(busy, total, server, pg, others)


def _delta(after: dict[int, int], before: dict[int, int]) -> dict[int, int]:
    return {pid: t - before.get(pid, 0) for pid, t in after.items()}


def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return str(pid)


# ----------------------------------------------------------------- running a phase


def machine_busy(seconds: float = 0.5) -> float:
    """% of all CPUs busy over the next ``seconds``."""
    b0, t0 = _machine_ticks()
    time.sleep(seconds)
    b1, t1 = _machine_ticks()
    return 100.0 * (b1 - b0) / max(1, t1 - t0)


def wait_quiet(limit: float = 10.0, calm: float = 2.0, timeout: float = 120.0) -> float:
    """Wait (up to ``timeout`` s) until the machine has been below ``limit`` % busy for
    ``calm`` seconds in a row; return the last reading. Between phases only the idle
    server and PostgreSQL are running, so anything above a few % is someone else."""
    deadline = time.monotonic() + timeout
    quiet_since = None
    while True:
        busy = machine_busy(0.5)
        now = time.monotonic()
        if busy > limit:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = now - 0.5
        if quiet_since is not None and now - quiet_since >= calm:
            return busy
        if now > deadline:
            return busy


@dataclass
class PhaseResult:
    name: str
    clients: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    error_sample: str = ""
    results: int = 0
    client_cpu_s: float = 0.0
    cpu: dict = field(default_factory=dict)
    #: measurements of this phase discarded because others used the machine
    discarded: list[float] = field(default_factory=list)
    #: keys of the successful requests, warm-up included (ITI-41: the uniqueIds stored)
    stored: list[str] = field(default_factory=list)
    #: open connections from the clients per server process, busiest first, sampled at the
    #: start of the window (keep-alive connections stay on the worker that accepted them)
    connections: list[int] = field(default_factory=list)

    @property
    def disturbed(self) -> bool:
        return self.cpu.get("foreign", 0.0) > FOREIGN_LIMIT

    @property
    def count(self) -> int:
        return len(self.latencies)

    @property
    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        """Latency percentile in ms (nearest rank)."""
        if not self.latencies:
            return float("nan")
        lat = sorted(self.latencies)
        return 1000 * lat[min(len(lat) - 1, max(0, int(round(q * len(lat))) - 1))]

    def cpu_ms_per_request(self, part: str) -> float:
        """CPU milliseconds per request of ``part`` (server, postgres, clients): the cost
        of a request, which other load on the machine barely changes."""
        if not self.count:
            return float("nan")
        ncpu = os.cpu_count() or 1
        return self.cpu[part] / 100 * ncpu * self.seconds / self.count * 1000

    @property
    def mean_ms(self) -> float:
        return 1000 * sum(self.latencies) / len(self.latencies) if self.latencies else float("nan")

    @property
    def mean_results(self) -> float:
        return self.results / self.count if self.count else 0.0


class Job(Protocol):
    """What a client process runs (inherited by the forked processes, not pickled):
    :class:`Workload` here, ``benchmarks.repository.Iti41Job`` / ``Iti43Job``."""

    name: str

    def connect(self):
        """A keep-alive session for the whole phase (has ``close()``)."""

    def prepare(self, rng: random.Random, client: int, i: int) -> tuple[str | None, object]:
        """Before the clock starts: (a key recorded when the request succeeds, or None;
        what :meth:`send` needs). ``client`` is unique per client process and phase."""

    def send(self, session, prepared) -> tuple[str | None, int]:
        """One timed request: (None or an error description, results counted)."""


_JOB: Job | None = None


def _client_main(conn, index: int, seed: int, t_start: float, t_end: float,
                 warmup: float) -> None:
    job = _JOB
    rng = random.Random(seed)
    lat: list[float] = []
    stored: list[str] = []
    errors, results, sample, i = 0, 0, "", 0
    cpu0 = None
    session = job.connect()
    try:
        while time.monotonic() < t_start - warmup:
            time.sleep(0.005)
        while True:
            key, prepared = job.prepare(rng, seed, i)
            i += 1
            t0 = time.monotonic()
            if t0 >= t_end:
                break
            if cpu0 is None and t0 >= t_start:
                cpu0 = time.process_time()
            try:
                error, n = job.send(session, prepared)
            except Exception as exc:  # noqa: BLE001 - counted and reported
                error, n = f"{type(exc).__name__}: {exc}"[:600], 0
            t1 = time.monotonic()
            if error is None and key is not None:
                stored.append(key)
            if t0 < t_start or t1 > t_end:  # warm-up, or finished after the window
                continue
            if error is None:
                lat.append(t1 - t0)
                results += n
            else:
                errors += 1
                sample = sample or error
    finally:
        session.close()
    cpu = time.process_time() - (cpu0 if cpu0 is not None else time.process_time())
    conn.send((lat, errors, sample, results, stored, cpu))
    conn.close()


def run_phase(job: Job, clients: int, seconds: float, warmup: float,
              server_pgid: int | None, postmaster: int | None, seed: int,
              server_port: int | None = None) -> PhaseResult:
    """``clients`` forked processes, closed loop, one keep-alive session each, for
    ``seconds`` after ``warmup``, with the CPU split of the measured window."""
    global _JOB
    _JOB = job
    ctx = mp.get_context("fork")
    t_start = time.monotonic() + 0.5 + warmup
    t_end = t_start + seconds
    procs, pipes = [], []
    for c in range(clients):
        parent, child = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_client_main,
                        args=(child, c, seed * 1000 + c, t_start, t_end, warmup), daemon=True)
        p.start()
        child.close()
        procs.append(p)
        pipes.append(parent)
    mine = frozenset([os.getpid(), *(p.pid for p in procs)])
    time.sleep(max(0.0, t_start - time.monotonic()))
    before = CpuSample.take(server_pgid, postmaster, mine)
    connections = connections_per_process(before.server, server_port)
    time.sleep(max(0.0, t_end - time.monotonic()))
    after = CpuSample.take(server_pgid, postmaster, mine)
    res = PhaseResult(job.name, clients, seconds)
    res.connections = connections
    for parent in pipes:
        lat, errors, sample, results, stored, cpu = parent.recv()
        res.latencies += lat
        res.errors += errors
        res.error_sample = res.error_sample or sample
        res.results += results
        res.stored += stored
        res.client_cpu_s += cpu
    for p in procs:
        p.join(60)
    res.cpu = cpu_split(before, after, seconds, res.client_cpu_s)
    _JOB = None
    return res


def cpu_split(before: CpuSample, after: CpuSample, window: float, clients_cpu_s: float) -> dict:
    """The % of the machine each part used over the ``window`` seconds between two
    samples: server (and per gunicorn process, busiest first: the master is the near-zero
    one), postgres, clients (``clients_cpu_s``, the generator's own CPU time), others (the
    busiest named), machine, and foreign = machine minus ours."""
    ncpu = os.cpu_count() or 1
    wall_ticks = window * _TICK * ncpu

    def share(ticks: float) -> float:
        return 100.0 * ticks / wall_ticks

    server = _delta(after.server, before.server)
    others = {pid: t for pid, t in _delta(after.others, before.others).items()
              if pid in before.others and t > 0}
    top = sorted(others.items(), key=lambda kv: -kv[1])[:3]
    cpu = {
        "machine": 100.0 * (after.machine_busy - before.machine_busy)
        / max(1, after.machine_total - before.machine_total),
        "server": share(sum(server.values())),
        "server_split": [round(share(t)) for t in sorted(server.values(), reverse=True)],
        "postgres": share(after.postgres - before.postgres),
        "clients": share(clients_cpu_s * _TICK),
        "others": share(sum(others.values())),
        "others_top": [f"{_comm(pid)} {share(t):.0f}%" for pid, t in top if share(t) >= 1],
    }
    #: CPU used by neither the benchmark nor the product: other sessions on the machine,
    #: kernel threads, interrupts (loopback networking is a few %)
    cpu["foreign"] = max(0.0, cpu["machine"] - cpu["clients"] - cpu["server"] - cpu["postgres"])
    return cpu


def connections_per_process(pids, port: int | None) -> list[int]:
    """Established TCP connections to ``port`` (IPv4 loopback, /proc/net/tcp) held by each
    of ``pids``, busiest first, processes without any left out."""
    if port is None:
        return []
    established = set()
    try:
        with open("/proc/net/tcp") as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    established.add(f"socket:[{fields[9]}]")
    except OSError:
        return []
    counts = []
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        n = 0
        for fd in fds:
            try:
                n += os.readlink(f"/proc/{pid}/fd/{fd}") in established
            except OSError:
                pass
        if n:
            counts.append(n)
    return sorted(counts, reverse=True)
