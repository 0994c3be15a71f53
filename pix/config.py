"""PIX Manager configuration, from ``OPENDMP_*`` settings (embedded defaults).

``OPENDMP_PIX_DOMAINS``
    The patient identifier domains the PIX Manager recognizes besides the XDS affinity
    domain's (``OPENDMP_PATIENT_DOMAINS``, always recognized). Comma-separated entries
    ``HD[@SOURCE...]``: HD is ``NAMESPACE&UNIVERSALID&TYPE`` (``CHU-X&000897406&N``,
    ``TEST&2.16.840.1.113883.3.72.5.9.1&ISO``), ``NAMESPACE&OID`` (type ISO), a bare OID
    or a bare namespace; each ``@APP|FACILITY`` names a source (MSH-3|MSH-4, first
    components) allowed to assign identifiers in it (none: any source).
``OPENDMP_PIX_CONSUMERS``
    PIX Consumers: comma-separated ``NAME=HOST:PORT[/DOMAIN+DOMAIN...]`` or
    ``NAME=mllp://HOST:PORT[/DOMAIN+...]`` (ITI-10, ADT^A31 over MLLP), or
    ``NAME=http(s)://HOST[:PORT]/PATH[#DOMAIN+DOMAIN...]`` (ITI-46, PRPA_IN201302UV02
    over SOAP 1.2); the domains, by namespace or OID, whose identifiers the consumer
    wants (none: all).
``OPENDMP_PIX_DEVICE_OID``
    The PIX Manager's HL7v3 device id (sender of ITI-44/45 answers and ITI-46);
    default the home community OID, else a fixed ``2.25`` OID.
``OPENDMP_PIX_LINK_ON_TRAITS``
    ``1`` links identifiers of different domains that carry no INS when name, first
    name, full birth date and sex are equal (the MESA tests expect it). Default ``0``:
    identifiers are linked only through the INS or when one message carries them
    together, as French identity vigilance (RNIV) requires.
``OPENDMP_PIX_APPLICATION``, ``OPENDMP_PIX_FACILITY``
    MSH-3/MSH-4 of what we send (default ``OPENDMP``/``OPENDMP``).
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from registry.hl7types import is_oid

from .ins import INS_NIA, INS_OIDS
from .model import Domain

__all__ = ["Consumer", "PixConfig", "PixConfigError", "parse_domain_spec"]

_INS_NAMESPACE = {oid: "ASIP-SANTE-INS-NIR" for oid in INS_OIDS} | {INS_NIA: "ASIP-SANTE-INS-NIA"}


class PixConfigError(ValueError):
    """An ``OPENDMP_PIX_*`` setting is invalid; the message names it."""


def parse_domain_spec(entry: str) -> Domain:
    """One ``OPENDMP_PIX_DOMAINS`` entry -> :class:`Domain`."""
    hd, *sources = [p.strip() for p in entry.strip().split("@")]
    parts = hd.split("&")
    if len(parts) > 3 or not hd:
        raise PixConfigError(f"OPENDMP_PIX_DOMAINS: bad domain {entry!r}")
    ns = parts[0] or None
    uid = parts[1] if len(parts) > 1 and parts[1] else None
    typ = parts[2] if len(parts) > 2 and parts[2] else None
    if uid is None and ns is not None and is_oid(ns):
        ns, uid = None, ns
    if uid is not None and typ is None:
        typ = "ISO" if is_oid(uid) else None
    if uid is None and ns is None:
        raise PixConfigError(f"OPENDMP_PIX_DOMAINS: empty domain in {entry!r}")
    return Domain(ns, uid, typ, frozenset(s for s in sources if s))


@dataclass(frozen=True)
class Consumer:
    """An ITI-10 PIX Consumer: where to send ADT^A31 and which domains it wants."""

    name: str
    host: str
    port: int
    domains: tuple[str, ...] = ()
    #: ITI-46 (HL7v3 over SOAP) consumer endpoint; None: ITI-10 over MLLP.
    url: str | None = None


@dataclass
class PixConfig:
    domains: list[Domain]
    affinity_oids: frozenset[str]
    consumers: list[Consumer] = field(default_factory=list)
    link_on_traits: bool = False
    application: str = "OPENDMP"
    facility: str = "OPENDMP"
    device_oid: str = "2.25.185436537468935012834431376423520395581"

    def __post_init__(self) -> None:
        self._by_uid = {d.universal_id: d for d in self.domains if d.universal_id}
        self._by_ns = {d.namespace: d for d in self.domains if d.namespace}
        self._by_key = {d.key: d for d in self.domains}

    def by_uid(self, uid: str) -> Domain | None:
        return self._by_uid.get(uid)

    def by_namespace(self, ns: str) -> Domain | None:
        return self._by_ns.get(ns)

    def by_key(self, key: str) -> Domain | None:
        return self._by_key.get(key)

    @classmethod
    def from_settings(cls, env: Mapping[str, str] | None = None) -> PixConfig:
        from registry.affinity import AffinityDomain

        env = os.environ if env is None else env
        affinity = AffinityDomain.from_settings(env).patient_domain.assigning_authorities
        domains: dict[str, Domain] = {}
        for oid in sorted(affinity):
            domains[oid] = Domain(_INS_NAMESPACE.get(oid), oid, "ISO")
        for entry in (env.get("OPENDMP_PIX_DOMAINS") or "").split(","):
            if not entry.strip():
                continue
            d = parse_domain_spec(entry)
            old = domains.get(d.key)
            if old is not None:  # configured again: add namespace/sources to the affinity entry
                d = Domain(d.namespace or old.namespace, d.universal_id, d.universal_id_type
                           or old.universal_id_type, old.sources | d.sources)
            domains[d.key] = d
        consumers = []
        for entry in (env.get("OPENDMP_PIX_CONSUMERS") or "").split(","):
            if entry.strip():
                consumers.append(_parse_consumer(entry.strip()))
        link = (env.get("OPENDMP_PIX_LINK_ON_TRAITS") or "0").strip().lower() in ("1", "true", "yes")
        return cls(
            list(domains.values()), frozenset(affinity), consumers, link,
            (env.get("OPENDMP_PIX_APPLICATION") or "OPENDMP").strip(),
            (env.get("OPENDMP_PIX_FACILITY") or "OPENDMP").strip(),
            _device_oid(env),
        )


def _device_oid(env: Mapping[str, str]) -> str:
    oid = (env.get("OPENDMP_PIX_DEVICE_OID") or "").strip()
    if not oid:
        oid = (env.get("OPENDMP_HOME_COMMUNITY_ID") or "").strip().removeprefix("urn:oid:")
    if oid and not is_oid(oid):
        raise PixConfigError(f"OPENDMP_PIX_DEVICE_OID: not an OID: {oid!r}")
    return oid or PixConfig.device_oid


def _parse_consumer(entry: str) -> Consumer:
    name, sep, rest = entry.partition("=")
    rest = rest.strip()
    if sep and rest.lower().startswith(("http://", "https://")):
        url, _, doms = rest.partition("#")
        host = url.split("://", 1)[1].split("/", 1)[0]
        return Consumer(name.strip(), host, 0,
                        tuple(d.strip() for d in doms.split("+") if d.strip()), url.strip())
    if sep and rest.lower().startswith("mllp://"):
        entry = f"{name}={rest[len('mllp://'):]}"
    try:
        name, rest = entry.split("=", 1)
        addr, _, doms = rest.partition("/")
        host, port = addr.rsplit(":", 1)
        return Consumer(name.strip(), host.strip(), int(port),
                        tuple(d.strip() for d in doms.split("+") if d.strip()))
    except ValueError:
        raise PixConfigError(
            f"OPENDMP_PIX_CONSUMERS: expected NAME=HOST:PORT[/DOMAIN+...] or "
            f"NAME=http(s)://HOST/PATH[#DOMAIN+...], got {entry!r}") from None
