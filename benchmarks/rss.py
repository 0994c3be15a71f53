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

import threading

from .profile import worker_pids

__all__ = ["worker_pids", "status", "reset_peak", "Sampler"]


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


def reset_peak(pid: int) -> bool:
    """Reset the process's VmHWM to its current RSS; False when the kernel refuses."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Sampler:
    """Polls the RSS of the workers of ``master`` while a request runs::

        with Sampler(master) as s:
            do_request()
        s.peak            # max over workers of max(VmHWM at the end, polled VmRSS)
    """

    def __init__(self, master: int, interval: float = 0.020) -> None:
        self.master = master
        self.interval = interval
        self.pids = worker_pids(master)
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


def current(master: int) -> int:
    """The largest current RSS among the workers of ``master``."""
    return max((status(pid).get("VmRSS", 0) for pid in worker_pids(master)), default=0)
