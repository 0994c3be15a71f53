"""Optional sampling profiles of the server's gunicorn workers with py-spy
(``--profile DIR``; py-spy is not a project dependency: install it anywhere, e.g.
``pip install --target /tmp/pyspy py-spy`` and set ``PY_SPY=/tmp/pyspy/bin/py-spy``).

The workers are sampled without being paused (``--nonblocking``), and only the thread
holding the GIL (``--gil``), so the profile shows where the server's Python CPU goes,
not where its threads wait (for PostgreSQL, for the socket). :func:`summarize` turns
py-spy's collapsed stacks into inclusive/self tables.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path

from .client import _proc_stat


def py_spy() -> str | None:
    return os.environ.get("PY_SPY") or shutil.which("py-spy")


def worker_pids(master: int) -> list[int]:
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _proc_stat(int(name))
            if st is not None and st[0] == master:
                pids.append(int(name))
    return sorted(pids)


def start(master: int, out_dir: Path, label: str, seconds: float) -> list[tuple[subprocess.Popen, Path]]:
    exe = py_spy()
    if exe is None:
        raise RuntimeError("--profile needs py-spy (set PY_SPY=/path/to/py-spy)")
    out_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    for pid in worker_pids(master):
        out = out_dir / f"{label}-{pid}.txt"
        p = subprocess.Popen([exe, "record", "--pid", str(pid), "--duration", str(int(seconds) + 1),
                              "--rate", "100", "--format", "raw", "--nonblocking", "--gil",
                              "--output", str(out)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append((p, out))
    return procs


_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]*)(?::\d+)?\)$")


def _short(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    for marker in ("site-packages/", "/work/main/", "python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{m.group('func')} ({path})"


def summarize(files: list[Path], top: int = 30) -> str:
    inclusive: Counter = Counter()
    self_: Counter = Counter()
    total = 0
    for f in files:
        try:
            lines = f.read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            n = int(count)
            frames = [_short(x) for x in stack.split(";") if x]
            # drop the thread/process label py-spy puts first
            frames = [x for x in frames if not x.startswith(("process ", "thread "))]
            if not frames:
                continue
            total += n
            for fr in set(frames):
                inclusive[fr] += n
            self_[frames[-1]] += n
    if not total:
        return "(no samples)"
    out = [f"{total} samples (active threads of all workers)", "", "inclusive %  function"]
    out += [f"{100 * c / total:9.1f}  {fr}" for fr, c in inclusive.most_common(top)]
    out += ["", "self %  function"]
    out += [f"{100 * c / total:6.1f}  {fr}" for fr, c in self_.most_common(top)]
    return "\n".join(out)


def finish(procs: list[tuple[subprocess.Popen, Path]], summary_path: Path) -> str:
    for p, _ in procs:
        try:
            p.wait(60)
        except subprocess.TimeoutExpired:
            p.kill()
    text = summarize([out for _, out in procs])
    summary_path.write_text(text + "\n")
    return text
