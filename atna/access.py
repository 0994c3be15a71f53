"""Who may read the audit trail: one policy function, :func:`may_read`.

The trail (``GET /audit``, ``GET /fhir/AuditEvent``) says who accessed which patient's
record: it is itself health data. Readers are authenticated nodes, not passwords:

``OPENDMP_AUDIT_READERS``          ``;``-separated TLS client certificate subjects (as
                                   ``commonName=...,organizationName=...``, or a bare
                                   commonName) that may read the whole trail: the
                                   security officer's console, a SIEM collector.
``OPENDMP_AUDIT_HISTORY_READERS``  subjects that may read patients' access histories
                                   only (``GET /audit/patients/<INS>/access-history``):
                                   e.g. the node of a patient portal, which authenticates
                                   the patient itself and asks only for that patient's
                                   history (the portal is out of scope here).
``OPENDMP_AUDIT_LOOPBACK_READ``    ``1``: requests from the loopback interface may read
                                   everything without a certificate. Default: ``1`` when
                                   the HTTP endpoints are not under mutual TLS
                                   (development: no node can be authenticated at all),
                                   ``0`` under ``OPENDMP_HTTP_TLS=1`` (production).

A subject is only trusted when it comes from the TLS handshake (gunicorn terminated
mutual TLS with the configured trust store): there is no header to claim one. The
command line (``opendmp audit ...``) reads the database directly: whoever runs it holds
the database credentials (an operator). Refused reads are answered 403 and audited
(DICOM 110101 Audit Log Used, outcome 8).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

LOOPBACK = frozenset({"127.0.0.1", "::1", "::ffff:127.0.0.1"})

TRAIL = "trail"
HISTORY = "history"


@dataclass(frozen=True)
class Reader:
    """Who is asking: the TLS client certificate subject (None without mutual TLS) and
    the peer address."""

    subject: str | None
    address: str | None


@dataclass(frozen=True)
class AccessSettings:
    readers: frozenset[str] = frozenset()
    history_readers: frozenset[str] = frozenset()
    loopback: bool = False

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "AccessSettings":
        def subjects(name: str) -> frozenset[str]:
            return frozenset(s.strip() for s in (env.get(name) or "").split(";") if s.strip())

        tls = (env.get("OPENDMP_HTTP_TLS") or "").lower() in ("1", "true", "yes")
        loopback = env.get("OPENDMP_AUDIT_LOOPBACK_READ")
        return cls(subjects("OPENDMP_AUDIT_READERS"), subjects("OPENDMP_AUDIT_HISTORY_READERS"),
                   (loopback == "1") if loopback in ("0", "1") else not tls)


def _common_name(subject: str) -> str | None:
    for part in subject.split(","):
        key, _, value = part.partition("=")
        if key.strip() in ("commonName", "CN"):
            return value.strip()
    return None


def _listed(subject: str | None, allowed: frozenset[str]) -> bool:
    if not subject or not allowed:
        return False
    return subject in allowed or _common_name(subject) in allowed


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str


def may_read(settings: AccessSettings, reader: Reader, what: str) -> Decision:
    """Whether ``reader`` may read ``what`` (:data:`TRAIL`: the whole trail, or
    :data:`HISTORY`: a patient's access history)."""
    if _listed(reader.subject, settings.readers):
        return Decision(True, f"audit reader {reader.subject}")
    if what == HISTORY and _listed(reader.subject, settings.history_readers):
        return Decision(True, f"access-history reader {reader.subject}")
    if settings.loopback and reader.address in LOOPBACK:
        return Decision(True, "loopback (development)")
    who = reader.subject or f"{reader.address or 'unknown address'} without a client certificate"
    return Decision(False, f"{who} is not an audit reader (OPENDMP_AUDIT_READERS"
                           + (", OPENDMP_AUDIT_HISTORY_READERS" if what == HISTORY else "") + ")")


def reader_of(environ: dict) -> Reader:
    """The :class:`Reader` of a WSGI request (gunicorn's TLS socket, REMOTE_ADDR)."""
    subject = None
    getpeercert = getattr(environ.get("gunicorn.socket"), "getpeercert", None)
    if getpeercert is not None:
        try:
            cert = getpeercert()
        except (ValueError, OSError):
            cert = None
        if cert:
            subject = ",".join("=".join(p) for rdn in cert.get("subject", ()) for p in rdn)
    return Reader(subject, environ.get("REMOTE_ADDR"))
