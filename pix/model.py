"""The PIX Manager's typed model, apart from any wire form (HL7 v2 here, HL7 v3 later).

* :class:`Domain` — a patient identifier domain (assigning authority, HL7 HD:
  namespace ``&`` universal id ``&`` universal id type), with the sources (MSH-3|MSH-4)
  allowed to assign identifiers in it.
* :class:`Identifier` — an HL7 CX restricted to what PIX uses: CX.1 id, CX.4 authority,
  CX.5 identifier type code.
* :class:`Traits` — the identity traits that come with the INS (birth name, first
  names, sex, birth date, birth place code) plus the used name, for the
  trait-contradiction checks and (opt-in) trait-based linking.
* :class:`Feed` / :class:`Merge` / :class:`Query` — what a transaction asks of
  :mod:`pix.manager`; :class:`PixError` — why it was refused, with the field at fault.
"""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from enum import Enum

__all__ = [
    "Domain",
    "Identifier",
    "Traits",
    "Feed",
    "Merge",
    "Query",
    "QueryResult",
    "PixError",
    "ErrorKind",
    "normalize_name",
]


@dataclass(frozen=True, slots=True)
class Domain:
    """A patient identifier domain. ``key`` (the universal id, else the namespace) is
    what identifiers are stored under; ``sources`` empty means any source may feed."""

    namespace: str | None
    universal_id: str | None
    universal_id_type: str | None = "ISO"
    sources: frozenset[str] = frozenset()

    @property
    def key(self) -> str:
        return self.universal_id or self.namespace or ""

    @property
    def hd(self) -> str:
        """CX.4 as an HD with subcomponents (``NS&OID&ISO``)."""
        if self.universal_id:
            return f"{self.namespace or ''}&{self.universal_id}&{self.universal_id_type or 'ISO'}"
        return self.namespace or ""

    def allows(self, source: str) -> bool:
        return not self.sources or source in self.sources


@dataclass(frozen=True, slots=True)
class Identifier:
    """A patient identifier in a domain (CX). ``domain`` is the domain key."""

    id: str
    domain: str
    type_code: str | None = None

    def __str__(self) -> str:
        return f"{self.id}@{self.domain}"


def normalize_name(value: str | None) -> str | None:
    """Upper case, accents removed, hyphens/apostrophes/spaces collapsed to one space
    (``Pat-Trois`` and ``PAT TROIS`` compare equal)."""
    if not value:
        return None
    s = unicodedata.normalize("NFKD", value)
    s = "".join(c for c in s if not unicodedata.combining(c)).upper()
    s = "".join(c if c.isalnum() else " " for c in s)
    s = " ".join(s.split())
    return s or None


@dataclass(frozen=True, slots=True)
class Traits:
    """Identity traits. Every field is optional: a trait absent on either side is never
    a contradiction. ``birth_date`` is HL7 DTM precision as sent (``YYYY[MM[DD]]``)."""

    birth_name: str | None = None
    first_names: str | None = None
    used_name: str | None = None
    sex: str | None = None
    birth_date: str | None = None
    birth_place: str | None = None

    def as_dict(self) -> dict[str, str]:
        return {k: getattr(self, k) for k in self.__slots__ if getattr(self, k)}

    @classmethod
    def from_dict(cls, d: dict | None) -> Traits:
        d = d or {}
        return cls(**{k: d.get(k) for k in cls.__slots__})

    @property
    def first_name(self) -> str | None:
        n = normalize_name(self.first_names)
        return n.split(" ")[0] if n else None

    def contradictions(self, other: Traits) -> list[str]:
        """Names of the traits on which ``self`` and ``other`` disagree (both present)."""
        out = []
        if _both(self.birth_name, other.birth_name) and \
                normalize_name(self.birth_name) != normalize_name(other.birth_name):
            out.append("birth name")
        if _both(self.first_name, other.first_name) and self.first_name != other.first_name:
            out.append("first name")
        if _both(self.sex, other.sex) and self.sex in "MF" and other.sex in "MF" \
                and self.sex != other.sex:
            out.append("sex")
        if _both(self.birth_date, other.birth_date):
            n = min(len(self.birth_date), len(other.birth_date), 8)
            if self.birth_date[:n] != other.birth_date[:n]:
                out.append("birth date")
        if _both(self.birth_place, other.birth_place) and self.birth_place != other.birth_place:
            out.append("birth place")
        return out

    def match_key(self) -> str | None:
        """Key for the opt-in trait-based linking: name, first name, full birth date and
        sex all present, else None (never link on partial traits)."""
        name = normalize_name(self.birth_name or self.used_name)
        first = self.first_name
        if not (name and first and self.birth_date and len(self.birth_date) >= 8
                and self.sex in ("M", "F")):
            return None
        return f"{name}|{first}|{self.birth_date[:8]}|{self.sex}"[:256]


def _both(a, b) -> bool:
    return bool(a) and bool(b)


class ErrorKind(Enum):
    """Why the PIX Manager refused a request. Each maps to an HL7 table 0357 code in
    :mod:`pix.hl7v2.ack` (and later to an HL7v3 acknowledgement detail)."""

    REQUIRED_MISSING = "required field missing"            # 101
    BAD_VALUE = "data type error"                          # 102
    INVALID_INS = "invalid INS"                            # 102
    UNKNOWN_DOMAIN = "unknown assigning authority"         # 204
    UNKNOWN_IDENTIFIER = "unknown patient identifier"      # 204
    NOT_AUTHORIZED = "source not authorized for domain"    # 204 (AE), see ack.py
    CONFLICT = "identity conflict"                         # 205
    TRAIT_CONTRADICTION = "traits contradict the INS"      # 205


class PixError(Exception):
    """A refused request. ``location`` is where in the request the problem is, as
    (segment, field, repetition, component) with 0 for "not applicable"."""

    def __init__(self, kind: ErrorKind, message: str,
                 location: tuple[str, int, int, int] = ("", 0, 0, 0)) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.location = tuple(location)

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Feed:
    """ITI-8 add/update (ITI-44 add/revise): identifiers the source asserts are one
    patient, with the traits it knows. ``source`` is ``MSH-3|MSH-4``."""

    identifiers: tuple[Identifier, ...]
    traits: Traits = field(default_factory=Traits)
    source: str = ""
    update: bool = False


@dataclass(frozen=True)
class Merge:
    """ITI-8 A40 (ITI-44 merge): ``subsumed`` merged into ``survivor``."""

    survivor: Identifier
    subsumed: Identifier
    traits: Traits = field(default_factory=Traits)
    source: str = ""


@dataclass(frozen=True)
class Query:
    """ITI-9 (ITI-45): identifiers of ``identifier``'s patient in ``domains``
    (domain keys; empty: all domains)."""

    identifier: Identifier
    domains: tuple[str, ...] = ()


@dataclass(frozen=True)
class QueryResult:
    identifiers: tuple[Identifier, ...]
