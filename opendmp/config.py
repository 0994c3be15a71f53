"""Runtime configuration, read once from the environment (12-factor style).

Every setting has an embedded default so that ``opendmp serve`` runs on a fresh machine:
data under ``./var`` (or ``$OPENDMP_HOME``), a SQLite file there, generated keys.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

#: The source tree root: vendored schemas/, wsdl/ and valuesets/ live here.
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str
    #: largest accepted SOAP request (plain, non-MTOM) in bytes.
    max_request_bytes: int = 64 * 1024 * 1024
    #: largest accepted MTOM request (documents are spooled to disk, not held in memory).
    max_mtom_request_bytes: int = 2 * 1024 ** 3
    env: dict[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "Settings":
        env = dict(os.environ if environ is None else environ)
        home = Path(env.get("OPENDMP_HOME") or "var").resolve()
        url = env.get("OPENDMP_DATABASE_URL") or f"sqlite:///{home / 'opendmp.sqlite3'}"
        return cls(
            home=home,
            database_url=url,
            max_request_bytes=int(env.get("OPENDMP_MAX_REQUEST_BYTES", 64 * 1024 * 1024)),
            max_mtom_request_bytes=int(env.get("OPENDMP_MAX_MTOM_REQUEST_BYTES", 2 * 1024 ** 3)),
            env=env,
        )

    def ensure_home(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
