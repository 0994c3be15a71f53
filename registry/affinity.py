"""The XDS Affinity Domain configuration: patient identity domain and value sets.

ITI TF-1 Section 10 leaves to the XDS Affinity Domain the choice of the patient
identification domain (the assigning authority of every patientId, ITI TF-3
§4.2.3.1.7, Table 4.2.3.1.7-2 CX) and of the vocabularies of the coded attributes
(ITI TF-3 §4.2.3, Tables 4.2.3.2-1, 4.2.3.3-1, 4.2.3.4-1: classCode, typeCode, ...).
A Document Registry refuses an ITI-42 submission whose codes are outside them with
XDSRegistryMetadataError and whose patient is outside the domain with
XDSUnknownPatientId (ITI TF-2b §3.42.4.1.3).

For the French DMP the domain is the INS (NIR/NIA, ``1.2.250.1.213.1.4.8``/``.9``)
and the value sets are the ANS NOS ones (JDV_J57 classCode, JDV_J66 typeCode,
JDV_J58 confidentialityCode, JDV_J60/J10 formatCode, JDV_J02 facility type,
JDV_J04 practice setting), vendored unmodified under ``valuesets/dmp/`` (see
``valuesets/SOURCES.md``). For the NIST XDS Toolkit the value sets are the toolkit's
``codes.xml`` (``valuesets/nist/codes.xml``).

Everything here is pure and immutable; files are read once per process (cached).
"""
from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from lxml import etree

from .hl7types import HL7TypeError, is_oid, parse_cx

__all__ = [
    "ATTRIBUTES",
    "AffinityDomain",
    "ConfigurationError",
    "Concept",
    "PatientIdDomain",
    "ValueSet",
    "ValueSetError",
    "ValueSets",
    "VALUESETS_DIR",
    "SYSTEM_TO_CODING_SCHEME",
    "INS_NIR",
    "INS_NIA",
    "INS_NIR_TEST",
    "INS_NIR_DEMO",
    "dmp_availability_statuses",
    "dmp_value_sets",
    "load_fhir_valueset",
    "load_nist_codes_xml",
    "load_svs_valueset",
    "load_value_sets",
    "nist_value_sets",
]

#: Repository-relative directory of the vendored value sets.
VALUESETS_DIR = Path(__file__).resolve().parents[1] / "valuesets"
_DMP = VALUESETS_DIR / "dmp"

#: XDS metadata attributes whose values come from an affinity-domain vocabulary
#: (ITI TF-3 Tables 4.2.3.2-1 DocumentEntry, 4.2.3.3-1 SubmissionSet, 4.2.3.4-1 Folder).
ATTRIBUTES: tuple[str, ...] = (
    "classCode",
    "typeCode",
    "formatCode",
    "confidentialityCode",
    "healthcareFacilityTypeCode",
    "practiceSettingCode",
    "eventCodeList",
    "contentTypeCode",
    "folderCodeList",
    "mimeType",
)

# INS assigning authorities (ANS; research/anchors.md §b "Identifiers / OIDs").
INS_NIR = "1.2.250.1.213.1.4.8"
INS_NIA = "1.2.250.1.213.1.4.9"
INS_NIR_TEST = "1.2.250.1.213.1.4.10"
INS_NIR_DEMO = "1.2.250.1.213.1.4.11"

_MOS = "https://mos.esante.gouv.fr/NOS/"

#: FHIR ``system`` of the ANS terminologies (TRE_) -> XDS ``codingScheme`` slot value.
#: Taken from the per-concept ``designation`` (use OID) that the NOS builds of
#: J57/J58/J66/J10 carry; used for the files that lack it (J06, J52, J60). TRE_A10
#: and TRE_A12 are not OIDs: the designation says ``urn:oid:URN`` / ``urn:oid:ASTM``
#: and the SVS J07 file says ``codeSystem="ASTM"``, i.e. the XDS scheme is the literal
#: ``URN`` / ``ASTM`` (the XAdES signature DocumentEntry). The availability statuses
#: (TRE_R269/R270) are ebRIM status URNs, not coded values: no scheme.
SYSTEM_TO_CODING_SCHEME: Mapping[str, str | None] = {
    _MOS + "TRE_A03-ClasseDocument/FHIR/TRE-A03-ClasseDocument": "1.2.250.1.213.1.1.4.1",
    _MOS + "TRE_A05-TypeDocComplementaire/FHIR/TRE-A05-TypeDocComplementaire": "1.2.250.1.213.1.1.4.12",
    _MOS + "TRE_A06-FormatCodeComplementaire/FHIR/TRE-A06-FormatCodeComplementaire": "1.2.250.1.213.1.1.4.2.282",
    _MOS + "TRE_A07-StatutVisibiliteDocument/FHIR/TRE-A07-StatutVisibiliteDocument": "1.2.250.1.213.1.1.4.13",
    _MOS + "TRE_A08-HL7Confidentiality/FHIR/TRE-A08-HL7Confidentiality": "2.16.840.1.113883.5.25",
    _MOS + "TRE_A09-DICOMuidRegistry/FHIR/TRE-A09-DICOMuidRegistry": "1.2.840.10008.2.6.1",
    _MOS + "TRE_A10-NomenclatureURN/FHIR/TRE-A10-NomenclatureURN": "URN",
    _MOS + "TRE_A11-IheFormatCode/FHIR/TRE-A11-IheFormatCode": "1.3.6.1.4.1.19376.1.2.3",
    _MOS + "TRE_A12-NomenclatureASTM/FHIR/TRE-A12-NomenclatureASTM": "ASTM",
    _MOS + "TRE_R269-AvailabilityStatusProvenanceOasis/FHIR/TRE-R269-AvailabilityStatusProvenanceOasis": None,
    _MOS + "TRE_R270-AvailabilityStatus/FHIR/TRE-R270-AvailabilityStatus": None,
    "http://loinc.org": "2.16.840.1.113883.6.1",
}


class ValueSetError(ValueError):
    """A value-set file cannot be read or is not in the expected form."""


class ConfigurationError(ValueError):
    """An ``OPENDMP_*`` affinity-domain setting is invalid; the message names it."""


# --------------------------------------------------------------------------- value sets

@dataclass(frozen=True, slots=True)
class Concept:
    """One allowed code: ``code`` in coding scheme ``scheme`` (the XDS codingScheme
    slot of a coded attribute, ITI TF-3 Table 4.2.3.1.7-2 "Code"; None for mime
    types), with its display name."""

    code: str
    scheme: str | None
    display: str | None = None


@dataclass(frozen=True)
class ValueSet:
    """A set of allowed (code, codingScheme) pairs with display names.

    Membership is exact on both code and scheme: a code is only meaningful within
    its coding scheme (ITI TF-3 §4.2.3, the codingScheme slot of coded attributes).
    """

    name: str
    concepts: tuple[Concept, ...]
    _index: dict[tuple[str, str | None], Concept] = field(
        init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {(c.code, c.scheme): c for c in self.concepts})

    @classmethod
    def of(cls, name: str, concepts: Iterable[Concept]) -> ValueSet:
        """Build from any iterable; duplicates (same code and scheme) keep the first."""
        seen: dict[tuple[str, str | None], Concept] = {}
        for c in concepts:
            seen.setdefault((c.code, c.scheme), c)
        return cls(name, tuple(seen.values()))

    def contains(self, code: str, scheme: str | None = None) -> bool:
        return (code, scheme) in self._index

    def __contains__(self, pair: object) -> bool:
        """``(code, scheme) in value_set``."""
        return isinstance(pair, tuple) and pair in self._index

    def display(self, code: str, scheme: str | None = None) -> str | None:
        """Display name of a member, None when unknown or not a member."""
        c = self._index.get((code, scheme))
        return c.display if c else None

    def union(self, other: ValueSet, name: str | None = None) -> ValueSet:
        return ValueSet.of(name or f"{self.name} + {other.name}", (*self.concepts, *other.concepts))

    def __len__(self) -> int:
        return len(self.concepts)

    def __iter__(self) -> Iterator[Concept]:
        return iter(self.concepts)


@dataclass(frozen=True, eq=False)
class ValueSets:
    """The affinity domain's vocabularies, keyed by XDS attribute name (:data:`ATTRIBUTES`).

    An attribute without a value set accepts any code (ITI TF-3 §4.2.3 leaves each
    vocabulary to the affinity domain; leaving one open is legitimate).
    """

    sets: Mapping[str, ValueSet] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.sets) - set(ATTRIBUTES)
        if unknown:
            raise ValueError(f"unknown XDS coded attributes: {sorted(unknown)}")
        object.__setattr__(self, "sets", MappingProxyType(dict(self.sets)))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ValueSets) and dict(self.sets) == dict(other.sets)

    def __hash__(self) -> int:
        return hash(frozenset(self.sets.items()))

    def check(self, attribute: str, code: str, scheme: str | None = None) -> bool:
        """True when ``code``/``scheme`` is allowed for ``attribute``.

        Raises ValueError for an attribute name outside :data:`ATTRIBUTES`
        (a programming error, not a metadata error).
        """
        if attribute not in ATTRIBUTES:
            raise ValueError(f"not an XDS coded attribute: {attribute!r}")
        vs = self.sets.get(attribute)
        return vs is None or vs.contains(code, scheme)

    def get(self, attribute: str) -> ValueSet | None:
        return self.sets.get(attribute)

    def __getitem__(self, attribute: str) -> ValueSet:
        return self.sets[attribute]

    def __contains__(self, attribute: object) -> bool:
        return attribute in self.sets

    @property
    def constrained(self) -> tuple[str, ...]:
        """Attributes that have a value set, in :data:`ATTRIBUTES` order."""
        return tuple(a for a in ATTRIBUTES if a in self.sets)


# --------------------------------------------------------------------------- loaders

def _strip_urn_oid(value: str) -> str:
    return value[len("urn:oid:"):] if value.lower().startswith("urn:oid:") else value


def _designation_scheme(concept: Mapping) -> str | None:
    for d in concept.get("designation") or ():
        use = d.get("use") or {}
        if use.get("code") == "OID" and d.get("value"):
            return _strip_urn_oid(d["value"])
    return None


def load_fhir_valueset(path: str | os.PathLike) -> ValueSet:
    """Load a FHIR R4 ValueSet JSON that enumerates its codes
    (``compose.include[].concept[]``).

    The XDS codingScheme of each concept is its ``designation`` with use ``OID``
    (``urn:oid:`` stripped) when present, else :data:`SYSTEM_TO_CODING_SCHEME`
    for the include's ``system``, else the system itself if it is ``urn:oid:<OID>``.
    Includes by filter or by other value set, and excludes, are refused.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueSetError(f"{path}: cannot read FHIR ValueSet: {exc}") from None
    if data.get("resourceType") != "ValueSet":
        raise ValueSetError(
            f"{path}: not a FHIR ValueSet (resourceType={data.get('resourceType')!r})")
    compose = data.get("compose") or {}
    if compose.get("exclude"):
        raise ValueSetError(f"{path}: compose.exclude is not supported")
    concepts: list[Concept] = []
    for inc in compose.get("include") or ():
        system = inc.get("system")
        if inc.get("filter") or inc.get("valueSet") or "concept" not in inc:
            raise ValueSetError(f"{path}: include of {system!r} does not enumerate its concepts")
        for c in inc["concept"]:
            scheme = _designation_scheme(c)
            if scheme is None:
                if system in SYSTEM_TO_CODING_SCHEME:
                    scheme = SYSTEM_TO_CODING_SCHEME[system]
                elif system and system.startswith("urn:oid:") and is_oid(system[8:]):
                    scheme = system[8:]
                else:
                    raise ValueSetError(
                        f"{path}: no XDS codingScheme known for system {system!r} "
                        f"(add it to SYSTEM_TO_CODING_SCHEME)"
                    )
            concepts.append(Concept(c["code"], scheme, c.get("display")))
    return ValueSet.of(data.get("name") or data.get("id") or path.stem, concepts)


_SVS_NS = "urn:ihe:iti:svs:2008"


def _parse_xml_file(path: Path) -> etree._Element:
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    try:
        return etree.parse(str(path), parser).getroot()
    except (OSError, etree.XMLSyntaxError) as exc:
        raise ValueSetError(f"{path}: cannot read XML: {exc}") from None


def load_svs_valueset(path: str | os.PathLike) -> ValueSet:
    """Load an IHE SVS RetrieveValueSetResponse (ITI-48, ITI TF-2b §3.48): every
    ``ValueSet/ConceptList/Concept`` (code, codeSystem, displayName)."""
    path = Path(path)
    root = _parse_xml_file(path)
    if etree.QName(root).namespace != _SVS_NS:
        raise ValueSetError(f"{path}: not an IHE SVS document ({root.tag})")
    concepts = [
        Concept(c.get("code"), c.get("codeSystem"), c.get("displayName"))
        for c in root.iter(f"{{{_SVS_NS}}}Concept")
        if c.getparent() is not None and etree.QName(c.getparent()).localname == "ConceptList"
    ]
    vs = root.find(f"{{{_SVS_NS}}}ValueSet")
    name = path.stem
    if vs is not None:
        name = (vs.get("displayName") or name).removesuffix(".tabs")
    if not concepts:
        raise ValueSetError(f"{path}: SVS document has no ConceptList/Concept")
    return ValueSet.of(name, concepts)


def load_nist_codes_xml(path: str | os.PathLike) -> ValueSets:
    """Load the NIST XDS Toolkit affinity-domain codes (``environment/<env>/codes.xml``):
    ``<CodeType name=... classScheme=...><Code code= codingScheme= display=/>``.

    CodeType names that are :data:`ATTRIBUTES` are kept (``associationDocumentation``
    is not an XDS coded attribute and is ignored); ``mimeType`` codes have no scheme.
    """
    path = Path(path)
    root = _parse_xml_file(path)
    sets: dict[str, ValueSet] = {}
    for ct in root.iter("CodeType"):
        name = ct.get("name")
        if name not in ATTRIBUTES:
            continue
        concepts = [
            Concept(c.get("code"), None if name == "mimeType" else c.get("codingScheme"),
                    c.get("display"))
            for c in ct.iter("Code")
        ]
        vs = ValueSet.of(f"NIST {name}", concepts)
        sets[name] = sets[name].union(vs, vs.name) if name in sets else vs
    if not sets:
        raise ValueSetError(f"{path}: no CodeType for an XDS coded attribute")
    return ValueSets(sets)


# --------------------------------------------------------------------------- shipped sets

@functools.cache
def dmp_value_sets() -> ValueSets:
    """The French DMP vocabularies (ANS NOS), from ``valuesets/dmp/``:

    classCode JDV_J57, typeCode JDV_J66, confidentialityCode JDV_J58 (HL7 N/R/V
    and the TRE_A07 visibility codes), formatCode JDV_J60 ∪ JDV_J10 (J60 is the
    2024-02 build, J10 adds the 2024 formats), healthcareFacilityTypeCode JDV_J02,
    practiceSettingCode JDV_J04. eventCodeList, contentTypeCode, folderCodeList and
    mimeType are unconstrained.
    """
    return ValueSets({
        "classCode": load_fhir_valueset(_DMP / "ValueSet-JDV-J57-ClassCode-DMP.json"),
        "typeCode": load_fhir_valueset(_DMP / "ValueSet-JDV-J66-TypeCode-DMP.json"),
        "confidentialityCode": load_fhir_valueset(
            _DMP / "ValueSet-JDV-J58-ConfidentialityCode-DMP.json"),
        "formatCode": load_fhir_valueset(_DMP / "ValueSet-JDV-J60-FormatCode-DMP.json").union(
            load_fhir_valueset(_DMP / "ValueSet-JDV-J10-XdsFormatCode-CISIS.json"),
            "JDV_J60 + JDV_J10"),
        "healthcareFacilityTypeCode": load_svs_valueset(
            _DMP / "JDV_J02_XdsHealthcareFacilityTypeCode_CISIS.xml"),
        "practiceSettingCode": load_svs_valueset(_DMP / "JDV_J04_XdsPracticeSettingCode_CISIS.xml"),
    })


@functools.cache
def dmp_availability_statuses() -> frozenset[str]:
    """availabilityStatus values of the DMP (JDV_J52): ebRIM Approved/Deprecated and
    CI-SIS ``urn:asip:ci-sis:2010:StatusType:Archived``/``Deleted``."""
    vs = load_fhir_valueset(_DMP / "ValueSet-JDV-J52-AvailabilityStatus-CISIS.json")
    return frozenset(c.code for c in vs)


@functools.cache
def _codes_xml(resolved: str) -> ValueSets:
    return load_nist_codes_xml(resolved)


def nist_value_sets() -> ValueSets:
    """The NIST XDS Toolkit vocabularies (``valuesets/nist/codes.xml``), cached."""
    return _codes_xml(str(VALUESETS_DIR / "nist" / "codes.xml"))


def load_value_sets(spec: str) -> ValueSets:
    """Value sets named by an ``OPENDMP_VALUE_SETS`` setting: ``dmp``, ``nist``,
    ``none`` (accept any code) or the path of a NIST-format ``codes.xml``. Cached."""
    key = spec.strip()
    lowered = key.lower()
    if lowered == "dmp":
        return dmp_value_sets()
    if lowered == "nist":
        return nist_value_sets()
    if lowered == "none":
        return ValueSets()
    path = Path(key).expanduser()
    if not path.is_file():
        raise ConfigurationError(
            f"OPENDMP_VALUE_SETS={spec!r}: expected 'dmp', 'nist', 'none' "
            f"or the path of a codes.xml file"
        )
    try:
        return _codes_xml(str(path.resolve()))
    except ValueSetError as exc:
        raise ConfigurationError(f"OPENDMP_VALUE_SETS={spec!r}: {exc}") from None


# --------------------------------------------------------------------------- patient domain

@dataclass(frozen=True)
class PatientIdDomain:
    """The assigning authorities of the affinity domain's patient identifiers
    (ITI TF-1 Section 10; ITI TF-3 Table 4.2.3.1.7-2 CX).

    Default: INS-NIR and INS-NIA (production). The test and demo INS-NIR OIDs
    (:data:`INS_NIR_TEST`, :data:`INS_NIR_DEMO`) are accepted only when configured.
    """

    assigning_authorities: frozenset[str] = frozenset({INS_NIR, INS_NIA})

    def __post_init__(self) -> None:
        authorities = frozenset(self.assigning_authorities)
        bad = sorted(a for a in authorities if not is_oid(a))
        if bad:
            raise ValueError(f"assigning authorities must be OIDs: {bad}")
        if not authorities:
            raise ValueError("a patient identity domain needs at least one assigning authority")
        object.__setattr__(self, "assigning_authorities", authorities)

    def accepts(self, cx: str) -> bool:
        """True when ``cx`` is a valid XDS CX (``id^^^&OID&ISO``, CX.5 such as the
        DMP's ``NH`` tolerated) whose CX.4 universal id is one of this domain's."""
        try:
            parsed = parse_cx(cx)
        except HL7TypeError:
            return False
        return parsed.universal_id in self.assigning_authorities


# --------------------------------------------------------------------------- affinity domain

@dataclass(frozen=True)
class AffinityDomain:
    """The XDS Affinity Domain policy the registry enforces (ITI TF-1 Section 10).

    ``home_community_id`` (``urn:oid:<OID>``) is returned as ``home`` on query
    results (ITI TF-2a §3.18, homeCommunityId); ``max_query_results`` bounds a
    stored-query answer (a registry may refuse larger ones with
    XDSTooManyResults, ITI TF-2a §3.18.4.1.3).
    """

    patient_domain: PatientIdDomain
    value_sets: ValueSets
    home_community_id: str | None = None
    max_query_results: int = 5000

    def __post_init__(self) -> None:
        hc = self.home_community_id
        if hc is not None and not (hc.startswith("urn:oid:") and is_oid(hc[8:])):
            raise ValueError(f"home_community_id must be 'urn:oid:<OID>', got {hc!r}")
        if self.max_query_results < 1:
            raise ValueError(f"max_query_results must be positive, got {self.max_query_results}")

    @classmethod
    def from_settings(cls, mapping: Mapping[str, str] | None = None) -> AffinityDomain:
        """Build from settings (``os.environ`` when ``mapping`` is None):

        ``OPENDMP_PATIENT_DOMAINS``   comma-separated assigning-authority OIDs
                                      (default: INS-NIR and INS-NIA, production)
        ``OPENDMP_VALUE_SETS``        ``dmp`` (default), ``nist``, ``none``, or a codes.xml path
        ``OPENDMP_HOME_COMMUNITY_ID`` ``urn:oid:<OID>`` (a bare OID gets the prefix); unset: none
        ``OPENDMP_MAX_QUERY_RESULTS`` positive integer (default 5000)

        Empty values count as unset. Raises :class:`ConfigurationError`.
        """
        env = os.environ if mapping is None else mapping

        def setting(name: str) -> str | None:
            value = env.get(name)
            return value.strip() if value and value.strip() else None

        domains = setting("OPENDMP_PATIENT_DOMAINS")
        if domains is None:
            patient_domain = PatientIdDomain()
        else:
            oids = [_strip_urn_oid(d.strip()) for d in domains.split(",") if d.strip()]
            bad = [o for o in oids if not is_oid(o)]
            if bad or not oids:
                raise ConfigurationError(
                    f"OPENDMP_PATIENT_DOMAINS={domains!r}: expected comma-separated OIDs"
                    + (f", not {bad}" if bad else "")
                )
            patient_domain = PatientIdDomain(frozenset(oids))

        value_sets = load_value_sets(setting("OPENDMP_VALUE_SETS") or "dmp")

        home = setting("OPENDMP_HOME_COMMUNITY_ID")
        if home is not None:
            oid = _strip_urn_oid(home)
            if not is_oid(oid):
                raise ConfigurationError(
                    f"OPENDMP_HOME_COMMUNITY_ID={home!r}: expected 'urn:oid:<OID>'")
            home = "urn:oid:" + oid

        raw_max = setting("OPENDMP_MAX_QUERY_RESULTS")
        max_results = 5000
        if raw_max is not None:
            try:
                max_results = int(raw_max)
            except ValueError:
                max_results = 0
            if max_results < 1:
                raise ConfigurationError(
                    f"OPENDMP_MAX_QUERY_RESULTS={raw_max!r}: expected a positive integer")

        return cls(patient_domain, value_sets, home, max_results)
