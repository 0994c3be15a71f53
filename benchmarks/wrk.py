"""The wrk load generator: the same SOAP requests as :mod:`benchmarks.client`'s forked
httpx processes, sent by wrk (C, epoll, LuaJIT) so that the generator takes a
small share of the 2 vCPUs it shares with the server.

A request is captured once from the Python generator (the product's ``SoapClient`` on an
``httpx.MockTransport``, see :func:`capture`), then split into a :class:`Template`: the
constant bytes and named slots (message id, random ``urn:uuid:`` ids, patient, uniqueIds,
size). ``benchmarks/wrk_xds.lua`` renders each request from it, checks each answer
(HTTP 200, the success text, a minimum length), counts errors per wrk thread and prints
one JSON line at the end; :func:`run_phase` runs it with the same protocol and CPU
accounting as :func:`benchmarks.client.run_phase` (warm-up, measured window, the server's
process group, PostgreSQL, the generator, the rest of the machine) and returns a
compatible :class:`~benchmarks.client.PhaseResult`.

``apt-get install wrk`` (Debian/Ubuntu: wrk 4.1.0 built with LuaJIT).
"""
from __future__ import annotations

import json
import math
import os
import re
import select
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from . import client as C

LUA = Path(__file__).with_name("wrk_xds.lua")
INSTALL_HINT = "apt-get install wrk"
#: per-request timeout given to wrk; wrk also sizes its latency histogram on it
TIMEOUT_S = 60
#: ms between the starts of wrk's threads (one connection each)
STAGGER_MS = 20
_RESULT = "WRK-RESULT "
_URN_UUID = re.compile(rb"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def wrk_path() -> str | None:
    """The wrk executable ($WRK, else on PATH), or None."""
    return os.environ.get("WRK") or shutil.which("wrk")


def wrk_version(exe: str) -> str:
    try:
        out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "?"
    first = (out.stdout or out.stderr).splitlines()[:1]
    return first[0].split(" Copyright")[0] if first else "?"


# ----------------------------------------------------------------- templates


@dataclass
class Template:
    """Bytes with named slots: ``segs[0] slot[0] segs[1] ... segs[-1]``."""

    segs: list[bytes]
    slots: list[str]

    @classmethod
    def from_spans(cls, data: bytes, spans: list[tuple[int, int, str]]) -> "Template":
        """Cut ``data`` at ``(start, end, name)`` spans (non-overlapping)."""
        segs, slots, pos = [], [], 0
        for start, end, name in sorted(spans):
            if start < pos:
                raise ValueError(f"overlapping slots at {start} ({name})")
            segs.append(data[pos:start])
            slots.append(name)
            pos = end
        segs.append(data[pos:])
        return cls(segs, slots)

    def render(self, values: dict[str, bytes]) -> bytes:
        out = [self.segs[0]]
        for name, seg in zip(self.slots, self.segs[1:]):
            out += [values[name], seg]
        return b"".join(out)


@dataclass
class Captured:
    """One HTTP request as the Python generator sent it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class _Stop(Exception):
    pass


def capture(send) -> Captured:
    """Run ``send(http_client)`` (the Python generator's code for one request) against an
    ``httpx.MockTransport`` and return the request it sent, byte for byte."""
    got: list[Captured] = []

    def handler(request: httpx.Request) -> httpx.Response:
        got.append(Captured(request.method, request.url.raw_path.decode("ascii"),
                            dict(request.headers), request.read()))
        raise _Stop

    http = httpx.Client(transport=httpx.MockTransport(handler))
    try:
        send(http)
    except _Stop:
        pass
    finally:
        http.close()
    if len(got) != 1:
        raise RuntimeError(f"expected one request, captured {len(got)}")
    return got[0]


def random_uuids(a: bytes, b: bytes) -> list[tuple[int, int]]:
    """Spans of the ``urn:uuid:`` values of ``a`` that are not in ``b`` (two renderings
    of the same request: the per-request random ids, not the standard's constants)."""
    constant = set(_URN_UUID.findall(b))
    return [m.span() for m in _URN_UUID.finditer(a) if m.group(0) not in constant]


@dataclass
class Request:
    """What wrk sends: request line and headers (Content-Length computed per request)
    and a body template; plus the data its slots draw from (see wrk_xds.lua)."""

    name: str
    url: str
    head: bytes
    body: Template
    success: bytes
    min_body: int = 0
    patients: list[str] = field(default_factory=list)
    uids: list[str] = field(default_factory=list)
    uid_root: str = ""
    size_base: int = 0

    @classmethod
    def from_capture(cls, name: str, url: str, cap: Captured, body: Template,
                     success: bytes, **kw) -> "Request":
        host = urlsplit(url).netloc
        ctype = cap.headers["content-type"]
        head = f"{cap.method} {cap.path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {ctype}\r\n"
        return cls(name, url, head.encode("latin-1"), body, success, **kw)

    def render(self, values: dict[str, bytes]) -> bytes:
        """The whole HTTP request as wrk_xds.lua builds it (for the tests)."""
        body = self.body.render(values)
        return self.head + b"Content-Length: %d\r\n\r\n" % len(body) + body

    def write(self, directory: Path) -> Path:
        """The spec file wrk_xds.lua loads (and its blob); returns the spec's path."""
        directory.mkdir(parents=True, exist_ok=True)
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", self.name)
        blob = directory / f"{stem}.bin"
        blob.write_bytes(b"".join(self.body.segs))
        spec = directory / f"{stem}.lua"
        lines = [
            "return {",
            f"  head = {_lua(self.head)},",
            f"  blob = {_lua(str(blob).encode())},",
            f"  segs = {{{', '.join(str(len(s)) for s in self.body.segs)}}},",
            f"  slots = {{{', '.join(_lua(s.encode()) for s in self.body.slots)}}},",
            f"  patients = {{{', '.join(_lua(p.encode()) for p in self.patients)}}},",
            f"  uids = {{{', '.join(_lua(u.encode()) for u in self.uids)}}},",
            f"  uid_root = {_lua(self.uid_root.encode())},",
            f"  size_base = {self.size_base},",
            f"  success = {_lua(self.success)},",
            f"  min_body = {self.min_body},",
            "}",
        ]
        spec.write_text("\n".join(lines) + "\n", encoding="ascii")
        return spec


def _lua(data: bytes) -> str:
    """A Lua string literal of ``data`` (ASCII source: other bytes as \\ddd)."""
    out = []
    for byte in data:
        ch = chr(byte)
        if ch in '"\\' or not 32 <= byte < 127:
            out.append(f"\\{byte:03d}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


# ----------------------------------------------------------------- running


@dataclass
class WrkPhaseResult(C.PhaseResult):
    """A :class:`~benchmarks.client.PhaseResult` whose latencies are summarized (count,
    mean and percentiles) instead of a list of samples: those wrk_xds.lua measured for
    each request, not wrk's histogram, which wrk corrects for coordinated omission (in a
    closed loop, one stall of a connection would count as many requests)."""

    n: int = 0
    mean: float = float("nan")
    #: percentile (0.5, 0.9, 0.99, 0.999, 1.0 = max) -> ms
    percentiles: dict = field(default_factory=dict)
    #: wrk's own JSON line
    raw: dict = field(default_factory=dict)

    @property
    def count(self) -> int:
        return self.n

    def pct(self, q: float) -> float:
        return self.percentiles.get(q, float("nan"))

    @property
    def mean_ms(self) -> float:
        return self.mean


def _ticks(pid: int) -> int:
    st = C._proc_stat(pid)
    return st[2] if st else 0


def _run(exe: str, spec: Path, url: str, clients: int, seconds: float, nonce: int,
         seed: int, measure=None) -> tuple[dict, float, object]:
    """One wrk run of ``seconds``, stopped by SIGINT (wrk's own way to end a run early);
    ``measure(pid)`` is called when wrk is about to start its connections and returns a
    callable for the end of the window. Returns (wrk's JSON line, wrk's CPU seconds over
    the window, what the end callable returned)."""
    # -d is only a backstop: the run is ended by SIGINT after `seconds`
    cmd = [exe, f"-t{clients}", f"-c{clients}", f"-d{math.ceil(seconds) + 60}s",
           "--timeout", f"{TIMEOUT_S}s", "-s", str(LUA), url, "--", str(spec), str(nonce),
           str(seed), str(STAGGER_MS)]
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.PIPE)
        try:
            err = _wait_ready(proc, clients)
            cpu0 = _ticks(proc.pid)
            finish = measure(proc.pid) if measure else None
            time.sleep(seconds)
            proc.send_signal(signal.SIGINT)
            err += proc.stderr.read()
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            end = finish() if finish else None
        except BaseException:
            if proc.returncode is None:
                proc.kill()
                proc.wait()
            raise
        finally:
            proc.stderr.close()
        out.seek(0)
        text = out.read().decode("utf-8", "replace")
    line = next((x for x in text.splitlines() if x.startswith(_RESULT)), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed (exit {proc.returncode}): {' '.join(cmd)}\n"
                           f"{err.decode('utf-8', 'replace')}\n{text}")
    cpu = usage.ru_utime + usage.ru_stime - cpu0 / C._TICK
    return json.loads(line[len(_RESULT):]), cpu, end


def _wait_ready(proc: subprocess.Popen, threads: int, timeout: float = 120) -> bytes:
    """Read wrk's stderr up to the script's "wrk-ready" line of the last thread (its
    init(), right before wrk starts it, then its clock)."""
    buf = b""
    deadline = time.monotonic() + timeout
    fd = proc.stderr.fileno()
    last = b"wrk-ready %d\n" % threads
    while last not in buf:
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            raise RuntimeError(f"wrk did not start: {buf.decode('utf-8', 'replace')}")
        if select.select([fd], [], [], min(left, 0.5))[0]:
            chunk = os.read(fd, 4096)
            if not chunk:
                proc.wait()
                raise RuntimeError(f"wrk exited: {buf.decode('utf-8', 'replace')}")
            buf += chunk
    return re.sub(rb"wrk-ready \d+\n", b"", buf)


def run_phase(req: Request, spec: Path, clients: int, seconds: float, warmup: float,
              server_pgid: int | None, postmaster: int | None, seed: int,
              exe: str | None = None, server_port: int | None = None) -> WrkPhaseResult:
    """``clients`` keep-alive connections, one wrk thread each, started ``STAGGER_MS``
    apart (so that gunicorn's workers share them as they would independent clients'),
    closed loop: a warm-up run
    of ``warmup`` seconds (not measured), then ``seconds`` measured with the CPU split of
    the window, like :func:`benchmarks.client.run_phase`."""
    exe = exe or wrk_path()
    if exe is None:
        raise RuntimeError(f"wrk is not installed ({INSTALL_HINT})")
    if warmup > 0:
        _run(exe, spec, req.url, clients, warmup, seed * 1000 + 500, seed)

    def measure(pid: int):
        mine = frozenset([os.getpid(), pid])
        t0 = time.monotonic()
        before = C.CpuSample.take(server_pgid, postmaster, mine)
        time.sleep(0.01)  # wrk connects as soon as its thread starts
        connections = C.connections_per_process(before.server, server_port)

        def finish():
            return (time.monotonic() - t0, before,
                    C.CpuSample.take(server_pgid, postmaster, mine), connections)
        return finish

    data, wrk_cpu, (window, before, after, connections) = _run(
        exe, spec, req.url, clients, seconds, seed * 1000, seed, measure)
    lat = data["latency_us"]
    sock = data["socket_errors"]
    res = WrkPhaseResult(req.name, clients, data["duration_us"] / 1e6)
    res.raw = data
    res.connections = connections
    res.n = int(data["ok"])
    res.errors = int(data["bad"]) + sum(int(v) for v in sock.values())
    res.error_sample = data.get("sample") or (
        f"socket errors {sock}" if any(sock.values()) else "")
    res.mean = lat["mean"] / 1000
    res.percentiles = {0.5: lat["p50"] / 1000, 0.9: lat["p90"] / 1000,
                       0.99: lat["p99"] / 1000, 0.999: lat["p999"] / 1000,
                       1.0: lat["max"] / 1000}
    res.client_cpu_s = wrk_cpu
    res.cpu = C.cpu_split(before, after, window, wrk_cpu)
    return res
