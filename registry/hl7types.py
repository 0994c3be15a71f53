"""Validators for the HL7 v2 data types that XDS metadata carries as strings.

ITI TF-3 §4.2.3.1.7 (Table 4.2.3.1.7-2, "Data types") restricts the HL7 v2.5 types
CX, XCN, XON, XTN and DTM for use in Slot values and ExternalIdentifiers, and
defines the OID and UUID forms used for ids. Every function here is pure (string in,
value or :class:`HL7TypeError` out) so it can be tested and fuzzed on its own;
mapping an error to the IHE error code (XDSRegistryMetadataError,
XDSPatientIdDoesNotMatch, ...) is the caller's business.

Deliberate deviation: :func:`parse_cx` accepts an identifier type code in CX.5
by default, because the French DMP writes every patientId as
``<INS>^^^&<OID>&ISO^NH``; ``allow_type_code=False`` gives the strict ITI TF-3 form
(CX.1 and CX.4 only).
"""
from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import datetime

__all__ = [
    "HL7TypeError",
    "CX",
    "DTM",
    "parse_cx",
    "parse_dtm",
    "check_xcn",
    "check_xon",
    "check_xtn",
    "is_oid",
    "is_uuid_urn",
]


class HL7TypeError(ValueError):
    """A value does not conform to its HL7 v2 data type as restricted by ITI TF-3.

    ``str(err)`` is a readable message naming the type, the offending component
    and the value.
    """


# --------------------------------------------------------------------------- OID / UUID

_OID_RE = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))+")
_UUID_URN_RE = re.compile(
    r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
    re.IGNORECASE | re.ASCII,
)


def is_oid(value: str) -> bool:
    """ISO OID as used in XDS (ITI TF-3 Table 4.2.3.1.7-2, OID): at least two
    dot-separated numeric arcs, no leading zero in an arc (``0`` itself is allowed),
    at most 64 characters. Arc ranges are not checked (NIST test data uses ``3.4.5``)."""
    return isinstance(value, str) and len(value) <= 64 and _OID_RE.fullmatch(value) is not None


def is_uuid_urn(value: str) -> bool:
    """``urn:uuid:`` followed by an RFC 4122 UUID in 8-4-4-4-12 hex form
    (ITI TF-3 Table 4.2.3.1.7-2, UUID); prefix and hex digits are case-insensitive."""
    return isinstance(value, str) and _UUID_URN_RE.fullmatch(value) is not None


# --------------------------------------------------------------------------- helpers

def _components(value: str, type_name: str, max_components: int) -> list[str]:
    if not isinstance(value, str):
        raise HL7TypeError(f"{type_name}: expected a string, got {type(value).__name__}")
    if "~" in value:
        raise HL7TypeError(f"{type_name}: repetitions ('~') are not allowed: {value!r}")
    parts = value.split("^")
    if len(parts) > max_components:
        raise HL7TypeError(
            f"{type_name}: at most {max_components} components allowed, "
            f"found {len(parts)}: {value!r}"
        )
    return parts


def _get(parts: list[str], n: int) -> str:
    """Component n (1-based), '' when absent."""
    return parts[n - 1] if len(parts) >= n else ""


def _check_hd(hd: str, where: str, value: str) -> str:
    """HD restricted to ``&<OID>&ISO`` (ITI TF-3 Table 4.2.3.1.7-2, CX.4); returns the OID."""
    sub = hd.split("&")
    if len(sub) != 3:
        raise HL7TypeError(
            f"{where} must be '&<OID>&ISO' (3 subcomponents), found {hd!r} in {value!r}"
        )
    namespace, universal_id, universal_id_type = sub
    if namespace:
        raise HL7TypeError(
            f"{where}: the namespace id (first subcomponent) must be empty, "
            f"found {namespace!r} in {value!r}"
        )
    if not is_oid(universal_id):
        raise HL7TypeError(f"{where}: universal id {universal_id!r} is not an OID in {value!r}")
    if universal_id_type != "ISO":
        raise HL7TypeError(
            f"{where}: universal id type must be 'ISO', found {universal_id_type!r} in {value!r}"
        )
    return universal_id


def _no_subcomponents(component: str, where: str, value: str) -> None:
    if "&" in component:
        raise HL7TypeError(f"{where} must not contain subcomponents ('&'): {value!r}")


# --------------------------------------------------------------------------- CX

@dataclass(frozen=True, slots=True)
class CX:
    """A patient identifier (ITI TF-3 Table 4.2.3.1.7-2, CX): ``id^^^&<OID>&ISO``."""

    id: str
    #: CX.4.2, the assigning authority's OID.
    universal_id: str
    #: CX.4.3, always ``ISO`` once parsed.
    universal_id_type: str = "ISO"
    #: CX.5 identifier type code (``NH`` in the DMP), None when absent.
    type_code: str | None = None

    @property
    def canonical(self) -> str:
        """The ITI TF-3 form without CX.5, for comparing and indexing patient ids."""
        return f"{self.id}^^^&{self.universal_id}&{self.universal_id_type}"

    def __str__(self) -> str:
        return self.canonical + (f"^{self.type_code}" if self.type_code else "")


def cx_match_key(cx: str) -> str:
    """A patient id reduced for matching, without validating it: CX.1 and the assigning
    authority's universal id only (``id^^^&oid&ISO``), whatever CX.5 type code (``^NH``,
    ``^PI``) and CX.4 namespace (``ASIP-SANTE-INS-NIR&oid&ISO``) the message carried; an
    authority without universal id keeps its namespace (``id^^^NS``). For ids that come
    from elsewhere than validated metadata (audit messages, assertions); :func:`parse_cx`
    is the validating form."""
    parts = cx.strip().split("^")
    if len(parts) < 4:
        return cx.strip()
    ns, _, rest = parts[3].partition("&")
    uid = rest.partition("&")[0]
    return f"{parts[0]}^^^&{uid}&ISO" if uid else f"{parts[0]}^^^{ns}"


def parse_cx(value: str, *, allow_type_code: bool = True) -> CX:
    """Parse a patientId / sourcePatientId CX value (ITI TF-3 Table 4.2.3.1.7-2).

    CX.1 (id) is required; CX.2 and CX.3 must be empty; CX.4 must be exactly
    ``&<OID>&ISO``. ITI TF-3 allows no other component; the DMP adds CX.5 = ``NH``,
    which is accepted unless ``allow_type_code`` is False. CX.6 and later are refused.
    """
    parts = _components(value, "CX", 5 if allow_type_code else 4)
    cx1 = _get(parts, 1)
    if not cx1.strip():
        raise HL7TypeError(f"CX.1 (id number) is required: {value!r}")
    _no_subcomponents(cx1, "CX.1", value)
    if _get(parts, 2) or _get(parts, 3):
        raise HL7TypeError(f"CX.2 and CX.3 (check digit) must be empty: {value!r}")
    if len(parts) < 4 or not parts[3]:
        raise HL7TypeError(f"CX.4 (assigning authority '&<OID>&ISO') is required: {value!r}")
    oid = _check_hd(parts[3], "CX.4 (assigning authority)", value)
    type_code = _get(parts, 5) or None
    if type_code is not None:
        _no_subcomponents(type_code, "CX.5", value)
    return CX(id=cx1, universal_id=oid, type_code=type_code)


# --------------------------------------------------------------------------- XCN

def check_xcn(value: str, *, require_assigning_authority: bool = True) -> None:
    """Validate a person (authorPerson, legalAuthenticator, intendedRecipient person)
    as XCN (ITI TF-3 Table 4.2.3.1.7-2).

    Either XCN.1 (id) or a name (XCN.2 family name or XCN.3 given name) is required.
    XCN.9 (assigning authority), when present, must be ``&<OID>&ISO``. An id without
    any name must carry XCN.9, unless ``require_assigning_authority`` is False (ITI
    TF-3 only says "shall be present if available"; IPF does not require it, and old
    IHE samples send bare names such as ``Gerald Smitty`` in XCN.1).
    """
    parts = _components(value, "XCN", 23)
    xcn1 = _get(parts, 1)
    _no_subcomponents(xcn1, "XCN.1 (id number)", value)
    family = _get(parts, 2).split("&")[0]
    given = _get(parts, 3)
    has_id = bool(xcn1.strip())
    has_name = bool(family.strip() or given.strip())
    if not (has_id or has_name):
        raise HL7TypeError(
            f"XCN: an id (XCN.1) or a name (XCN.2/XCN.3) is required: {value!r}"
        )
    aa = _get(parts, 9)
    if aa:
        _check_hd(aa, "XCN.9 (assigning authority)", value)
    elif has_id and not has_name and require_assigning_authority:
        raise HL7TypeError(
            f"XCN: an id without a name needs XCN.9 (assigning authority '&<OID>&ISO'): {value!r}"
        )


# --------------------------------------------------------------------------- XON

def check_xon(value: str) -> None:
    """Validate an organization (authorInstitution, intendedRecipient organization)
    as XON (ITI TF-3 Table 4.2.3.1.7-2).

    XON.1 (organization name) is required. XON.10 (organization identifier) is
    optional: if XON.6 (assigning authority) is empty it must itself be an OID,
    otherwise XON.6 must be ``&<OID>&ISO`` (the identifier then lives in that
    OID's namespace, e.g. DMP ``...^^^^^&1.2.250.1.71.4.2.2&ISO^IDNST^^^1xxxxxxxxx``).
    At most 10 components.
    """
    parts = _components(value, "XON", 10)
    name = _get(parts, 1)
    if not name.strip():
        raise HL7TypeError(f"XON.1 (organization name) is required: {value!r}")
    aa = _get(parts, 6)
    identifier = _get(parts, 10)
    if aa:
        _check_hd(aa, "XON.6 (assigning authority)", value)
    elif identifier and not is_oid(identifier):
        raise HL7TypeError(
            f"XON.10 (organization identifier) {identifier!r} is not an OID and "
            f"XON.6 (assigning authority '&<OID>&ISO') is empty: {value!r}"
        )
    if identifier:
        _no_subcomponents(identifier, "XON.10", value)


# --------------------------------------------------------------------------- XTN

#: HL7 Table 0202 (telecommunication equipment type).
_EQUIPMENT_TYPES = frozenset(
    {"PH", "FX", "MD", "CP", "SAT", "BP", "Internet", "X.400", "TDD", "TTY"})
_EMAIL_RE = re.compile(r"[^@\s]+@[^@\s]+")


def check_xtn(value: str) -> None:
    """Validate an authorTelecommunication XTN (ITI TF-3 Table 4.2.3.1.7-2).

    XTN.3 (equipment type, HL7 Table 0202) is required. ``Internet`` and ``X.400``
    need XTN.4 (address; an e-mail address for Internet); the telephone types need
    XTN.7 (local number) or XTN.12 (unformatted number), XTN.5-7 being numeric.
    """
    parts = _components(value, "XTN", 18)
    kind = _get(parts, 3)
    if not kind:
        raise HL7TypeError(f"XTN.3 (telecommunication equipment type) is required: {value!r}")
    if kind not in _EQUIPMENT_TYPES:
        raise HL7TypeError(
            f"XTN.3 {kind!r} is not an HL7 Table 0202 equipment type "
            f"({', '.join(sorted(_EQUIPMENT_TYPES))}): {value!r}"
        )
    if kind in ("Internet", "X.400"):
        address = _get(parts, 4)
        if not address:
            raise HL7TypeError(f"XTN.4 (address) is required for XTN.3 {kind!r}: {value!r}")
        if kind == "Internet" and not _EMAIL_RE.fullmatch(address):
            raise HL7TypeError(f"XTN.4 {address!r} is not an e-mail address: {value!r}")
        return
    for n, label in ((5, "country code"), (6, "area code"), (7, "local number")):
        component = _get(parts, n)
        if component and not component.isdigit():
            raise HL7TypeError(f"XTN.{n} ({label}) must be numeric, found {component!r}: {value!r}")
    if not (_get(parts, 7) or _get(parts, 12)):
        raise HL7TypeError(
            f"XTN: a telephone number needs XTN.7 (local number) or XTN.12 (unformatted): {value!r}"
        )


# --------------------------------------------------------------------------- DTM

_DTM_LENGTHS = (4, 6, 8, 10, 12, 14)
_MIN_PAD = "0101000000"  # month, day, hour, minute, second


@dataclass(frozen=True, slots=True)
class DTM:
    """An XDS date/time (ITI TF-3 Table 4.2.3.1.7-2, DTM): ``YYYY[MM[DD[hh[mm[ss]]]]]``, UTC.

    ``value`` is the string as received. :meth:`padded_min` / :meth:`padded_max`
    give the first and last second the value covers, as 14-digit integers, for the
    range comparisons of the stored-query time parameters (ITI TF-2a §3.18.4.1.2.3).
    """

    value: str

    def __str__(self) -> str:
        return self.value

    @property
    def precision(self) -> int:
        """Number of digits: 4 (year) to 14 (second)."""
        return len(self.value)

    def padded_min(self) -> int:
        """First second covered: missing parts padded with 01 (month/day) or 00."""
        v = self.value
        return int(v + _MIN_PAD[len(v) - 4:])

    def padded_max(self) -> int:
        """Last second covered: missing parts padded with 12, the last day of the
        month, 23, 59, 59."""
        v = self.value
        year = int(v[0:4])
        month = int(v[4:6]) if len(v) >= 6 else 12
        day = int(v[6:8]) if len(v) >= 8 else calendar.monthrange(year, month)[1]
        hour = v[8:10] if len(v) >= 10 else "23"
        minute = v[10:12] if len(v) >= 12 else "59"
        second = v[12:14] if len(v) >= 14 else "59"
        return int(f"{year:04d}{month:02d}{day:02d}{hour}{minute}{second}")

    def to_datetime(self) -> datetime:
        """The first instant covered, as a naive datetime in UTC."""
        p = f"{self.padded_min():014d}"
        return datetime(int(p[0:4]), int(p[4:6]), int(p[6:8]),
                        int(p[8:10]), int(p[10:12]), int(p[12:14]))


def parse_dtm(value: str) -> DTM:
    """Parse an XDS DTM: 4, 6, 8, 10, 12 or 14 digits forming a valid calendar date
    and time (year 0001-9999, no leap second, no time zone offset, no fraction)."""
    if not isinstance(value, str):
        raise HL7TypeError(f"DTM: expected a string, got {type(value).__name__}")
    if not (value.isascii() and value.isdigit()) or len(value) not in _DTM_LENGTHS:
        raise HL7TypeError(
            f"DTM must be YYYY[MM[DD[hh[mm[ss]]]]] (4 to 14 digits, UTC): {value!r}"
        )
    p = value + _MIN_PAD[len(value) - 4:]
    year, month, day = int(p[0:4]), int(p[4:6]), int(p[6:8])
    hour, minute, second = int(p[8:10]), int(p[10:12]), int(p[12:14])
    if (year < 1 or not 1 <= month <= 12
            or not 1 <= day <= calendar.monthrange(year, month)[1]
            or hour > 23 or minute > 59 or second > 59):
        raise HL7TypeError(f"DTM is not a valid date/time: {value!r}")
    return DTM(value)
