"""Repository settings: its repositoryUniqueId and where it registers (ITI TF-2b §3.41.4.1.3)."""
from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from registry.hl7types import is_oid

ID_FILE = "repository-unique-id"


@dataclass(frozen=True)
class RepositorySettings:
    #: the OID this repository answers to (DocumentEntry.repositoryUniqueId).
    unique_id: str
    #: a remote Document Registry's ITI-42 endpoint, or None to register in-process.
    registry_url: str | None
    #: staged rows/files younger than this survive the recovery sweep (multi-node setups).
    recovery_grace_seconds: float
    #: ITI-43 decrypts and hashes documents in full before answering, and keeps them in
    #: memory for the answer, while they add up to at most this many bytes per request.
    preverify_bytes: int


def repository_unique_id(env: Mapping[str, str], home: Path) -> str:
    """``OPENDMP_REPOSITORY_UNIQUE_ID``, or an OID made on first start from a random UUID
    (``2.25.<uuid>``, ITU-T X.667) and kept in ``<home>/repository-unique-id``."""
    configured = (env.get("OPENDMP_REPOSITORY_UNIQUE_ID") or "").strip()
    if configured:
        if not is_oid(configured):
            raise ValueError(f"OPENDMP_REPOSITORY_UNIQUE_ID={configured!r} is not an OID")
        return configured
    path = Path(home) / ID_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return path.read_text().strip()
    with os.fdopen(fd, "w") as fh:
        fh.write(f"2.25.{uuid.uuid4().int}\n")
        fh.flush()
        os.fsync(fh.fileno())
    return path.read_text().strip()


def repository_settings(env: Mapping[str, str], home: Path) -> RepositorySettings:
    return RepositorySettings(
        unique_id=repository_unique_id(env, home),
        registry_url=(env.get("OPENDMP_REGISTRY_URL") or "").strip() or None,
        recovery_grace_seconds=float(env.get("OPENDMP_RECOVERY_GRACE_SECONDS", "0")),
        preverify_bytes=int(env.get("OPENDMP_RETRIEVE_PREVERIFY_BYTES", 1024 * 1024)),
    )
