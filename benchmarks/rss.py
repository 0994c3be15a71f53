"""Resident memory of the server's gunicorn workers, from ``/proc`` (psutil is not a
dependency).

Two measures of the peak, taken together so that each checks the other:

- ``VmHWM`` (the kernel's high-water mark of the resident set), reset to the current
  RSS before each measured request by writing ``5`` to ``/proc/<pid>/clear_refs``
  (Linux >= 4.0; needs the same user as the worker, or root);
- ``VmRSS`` polled every ``interval`` seconds (20 ms) by a thread, keeping the maximum.

A worker's RSS counts every resident page it maps, including the pages of Python, lxml,
OpenSSL... shared with the gunicorn master (copy-on-write after fork). Sizes are in
bytes.
"""
from __future__ import annotations

import os
import threading

from .profile import worker_pids

__all__ = ["worker_pids", "http_workers", "status", "rollup", "reset_peak", "Sampler",
           "current"]


def _listening_inodes(port: int) -> set[str]:
    """Socket inodes listening on TCP ``port`` (IPv4 and IPv6)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(fields[9])
        except OSError:
            continue
    return inodes


def http_workers(master: int, port: int) -> list[int]:
    """The gunicorn workers among the children of ``master``: those holding the HTTP
    listening socket (``opendmp serve`` also forks non-HTTP listeners, PIX and ATNA)."""
    inodes = _listening_inodes(port)
    out = []
    for pid in worker_pids(master):
        try:
            links = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        except OSError:
            continue
        if any(f"socket:[{i}]" in links for i in inodes):
            out.append(pid)
    return out


def status(pid: int) -> dict[str, int]:
    """``VmRSS`` and ``VmHWM`` of a process, in bytes (empty when it is gone)."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    name, value = line.split(":", 1)
                    out[name] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


def rollup(pid: int) -> dict[str, int]:
    """``Rss``, ``Pss`` and ``Private`` (clean + dirty) from ``/proc/<pid>/smaps_rollup``,
    in bytes: RSS counts the pages shared with the gunicorn master (interpreter, imported
    modules) in full, PSS shares them out, Private is what this worker alone holds."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name in ("Rss", "Pss", "Private_Clean", "Private_Dirty"):
                    out[name] = int(rest.split()[0]) * 1024
    except OSError:
        return {}
    out["Private"] = out.pop("Private_Clean", 0) + out.pop("Private_Dirty", 0)
    return out


def reset_peak(pid: int) -> bool:
    """Reset the process's VmHWM to its current RSS; False when the kernel refuses."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Sampler:
    """Polls the RSS of the worker processes ``pids`` while a request runs::

        with Sampler(http_workers(master, port)) as s:
            do_request()
        s.peak            # max over workers of max(VmHWM at the end, polled VmRSS)
    """

    def __init__(self, pids: list[int], interval: float = 0.020) -> None:
        self.interval = interval
        self.pids = list(pids)
        self.polled: dict[int, int] = {}
        self.hwm: dict[int, int] = {}
        self.samples = 0
        self.hwm_reset = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in self.pids:
                rss = status(pid).get("VmRSS", 0)
                if rss > self.polled.get(pid, 0):
                    self.polled[pid] = rss
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> "Sampler":
        self.hwm_reset = all([reset_peak(pid) for pid in self.pids])
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        for pid in self.pids:
            self.hwm[pid] = status(pid).get("VmHWM", 0)

    @property
    def peak(self) -> int:
        """The highest resident set of any worker during the block."""
        return max([*self.polled.values(), *(self.hwm.values() if self.hwm_reset else [])],
                   default=0)

    @property
    def peak_polled(self) -> int:
        return max(self.polled.values(), default=0)

    @property
    def peak_hwm(self) -> int:
        return max(self.hwm.values(), default=0) if self.hwm_reset else 0


def current(pids: list[int]) -> int:
    """The largest current RSS among ``pids``."""
    return max((status(pid).get("VmRSS", 0) for pid in pids), default=0)
