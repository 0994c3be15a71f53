"""Fault injection for crash tests (the "failpoint" pattern of FreeBSD/TiKV/etcd).

``OPENDMP_FAILPOINTS=name:action[,name:action]`` arms named points in the code; the only
action is ``kill`` (SIGKILL to the current process, i.e. a crash with no cleanup at all).
Unset in production: :func:`hit` is then a dictionary lookup that finds nothing.
"""
from __future__ import annotations

import os
import signal

_ARMED = {
    name.strip(): action.strip()
    for item in os.environ.get("OPENDMP_FAILPOINTS", "").split(",") if ":" in item
    for name, action in [item.split(":", 1)]
}


def hit(name: str) -> None:
    """Crash here if the failpoint ``name`` is armed."""
    if _ARMED.get(name) == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
