"""Recovery sweep, run by ``opendmp serve`` before it accepts requests: settles what a
crash in the middle of ITI-41 left behind (ITI TF-2b §3.41.4.1.3: a document is either
stored and registered, or neither).

- STAGED index rows (remote registry): registered -> COMMITTED; otherwise their bytes
  are deleted and the row removed.
- Staged files whose row is COMMITTED (the in-process registry commits the row before
  the file is renamed into place): renamed into place.
- Staged files with no row, committed files with no row at all, and half-written files:
  deleted.
Rows and files younger than the grace period are left alone (other nodes may be writing).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from opendmp.db import read_transaction, write_transaction

from . import index
from .actor import Repository

log = logging.getLogger("opendmp.repository")


@dataclass
class RecoveryReport:
    committed: int = 0
    committed_files: int = 0
    removed_rows: int = 0
    removed_staged_files: int = 0
    removed_orphan_files: int = 0
    removed_partial_files: int = 0


def recover(repo: Repository) -> RecoveryReport:
    report = RecoveryReport()
    grace = repo.settings.recovery_grace_seconds
    cutoff = time.time() - grace
    report.removed_partial_files = repo.store.sweep_partial(older_than=grace)
    with read_transaction(repo.engine) as conn:
        stale = index.staged_before(conn, cutoff)
    for row in stale:
        if repo.registry.is_registered(row.unique_id):
            if repo.store.exists(row.storage_key) or _commit_staged(repo, row.storage_key):
                with write_transaction(repo.engine) as conn:
                    index.mark_committed(conn, [row.unique_id])
                report.committed += 1
                continue
            log.error("document %s is registered but its bytes are lost", row.unique_id)
        repo.store.delete(row.storage_key) or repo.store.discard(row.storage_key)
        with write_transaction(repo.engine) as conn:
            index.forget(conn, [row.unique_id])
        report.removed_rows += 1
    with read_transaction(repo.engine) as conn:
        known = index.states_by_key(conn)
    for key in list(repo.store.iter_staged()):
        if known.get(key) == index.COMMITTED:
            repo.store.commit(key)
            report.committed_files += 1
        elif key not in known and _older_than(repo, key, cutoff):
            repo.store.discard(key)
            report.removed_staged_files += 1
    for key in list(repo.store.iter_keys()):
        if key not in known:
            repo.store.delete(key)
            report.removed_orphan_files += 1
    if any(vars(report).values()):
        log.warning("repository recovery: %s", report)
    return report


def _commit_staged(repo: Repository, key: str) -> bool:
    if key in set(repo.store.iter_staged()):
        repo.store.commit(key)
        return True
    return False


def _older_than(repo: Repository, key: str, cutoff: float) -> bool:
    try:
        return repo.store.staged_mtime(key) <= cutoff
    except OSError:  # committed or discarded meanwhile
        return False
