"""CDA R2 validation in three layers, each reported with readable messages:

1. **Schema**: the normative HL7 CDA R2 schema (``schemas/cda-r2/normative/.../CDA.xsd``)
   or, for French documents (realmCode FR or the CI-SIS templateId), the ANS extended
   schema (``schemas/cda-r2-ans-extended/.../CDA_extended.xsd``: IHE lab, pharmacy,
   DICOM and SDTC extensions). lxml, compiled once per process.
2. **Schematron**: the ANS CI-SIS volet schematron of the document's type (CR-BIO,
   LDL-SES, VAC-NOTE, VSM, IPS-FR; ``schematrons/ans/``, vendored unmodified), run
   by SaxonC-HE. Each schematron is compiled once per process (ISO skeleton: include ->
   abstract expansion -> SVRL) and its executable reused. The skeleton is the XSLT 1
   ISO skeleton that lxml ships; see :func:`_compile` for the two adjustments that lets
   Saxon use it for these ``queryBinding="xslt2"`` schematrons.
3. **Header rules for sharing** that the schematrons do not check (our own): the INS in
   recordTarget (INS OID, valid key), an author identified by RPPS/ADELI, the
   custodian, confidentiality, effective time, language, legal authenticator.

Untrusted input: the document is parsed by :func:`cda.document.parse_cda` (no DOCTYPE,
no entities, no network) before Saxon sees it, and Saxon's own parser is configured to
refuse DOCTYPE declarations too.
"""
from __future__ import annotations

import functools
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

from lxml import etree

from .document import (
    CONFIDENTIALITY_SYSTEM,
    INS_OIDS,
    PS_NATIONAL_ID,
    CdaError,
    CdaHeader,
    ins_problem,
    parse_cda,
    read_header,
    ts_valid,
)

ROOT = Path(__file__).resolve().parents[1]
NORMATIVE_XSD = ROOT / "schemas/cda-r2/normative/infrastructure/cda/CDA.xsd"
ANS_XSD = ROOT / "schemas/cda-r2-ans-extended/infrastructure/cda/CDA_extended.xsd"
SCHEMATRON_DIR = ROOT / "schematrons" / "ans"
SVRL = "http://purl.oclc.org/dsdl/svrl"

#: CI-SIS volet templateId (header) -> its volet schematron in schematrons/ans/.
VOLETS: dict[str, tuple[str, str]] = {
    "1.2.250.1.213.1.1.1.55": ("CR-BIO", "CI-SIS_BIO-CR-BIO_2024.01.sch"),
    "1.2.250.1.213.1.1.1.29": ("LDL-SES", "CI-SIS_LDL-SES_2022.01.sch"),
    "1.2.250.1.213.1.1.1.46": ("VAC-NOTE", "CI-SIS_VAC-NOTE_2023.01.sch"),
    "1.2.250.1.213.1.1.1.13": ("VSM", "CI-SIS_VSM_2023.01.sch"),
    "1.2.250.1.213.1.1.1.51": ("IPS-FR", "CI-SIS_IPS-FR_2024.01.sch"),
}

ERROR, WARNING = "error", "warning"


@dataclass(frozen=True, slots=True)
class Finding:
    layer: str          # "parse", "schema", "schematron", "header"
    message: str
    location: str | None = None
    severity: str = ERROR

    def __str__(self) -> str:
        where = f" [{self.location}]" if self.location else ""
        return f"{self.severity} {self.layer}: {self.message}{where}"


@dataclass
class ValidationReport:
    schema: str | None = None          # "CDA.xsd" / "CDA_extended.xsd"
    volet: str | None = None           # "CR-BIO", ... or None when no schematron applies
    findings: list[Finding] = field(default_factory=list)
    header: CdaHeader | None = None

    @property
    def valid(self) -> bool:
        return not any(f.severity == ERROR for f in self.findings)

    def errors(self, layer: str | None = None) -> list[Finding]:
        return [f for f in self.findings if f.severity == ERROR
                and (layer is None or f.layer == layer)]


# ---------------------------------------------------------------------------- schema

@functools.cache
def _xsd(path: Path) -> etree.XMLSchema:
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    return etree.XMLSchema(etree.parse(str(path), parser))


def schema_findings(root: etree._Element, french: bool) -> tuple[str, list[Finding]]:
    path = ANS_XSD if french else NORMATIVE_XSD
    schema = _xsd(path)
    if schema.validate(root):
        return path.name, []
    return path.name, [Finding("schema", e.message, f"line {e.line}")
                       for e in schema.error_log][:50]


# ---------------------------------------------------------------------------- schematron

_DOCTYPE_OFF = ("http://saxon.sf.net/feature/parserFeature?uri="
                "http://apache.org/xml/features/disallow-doctype-decl")
#: Saxon 13.1.1 aborts compiling the skeleton's output with "Bad parent pointer in
#: expression tree" when loop-lifting ("l") is on; every other optimisation is kept.
_OPTIMIZATION = "cfgjkmnrsvwx"
#: parameters of the ISO skeleton (``iso_schematron_skeleton_for_xslt1.xsl``), chosen for
#: speed with the same failed asserts and successful reports (checked on every volet x
#: every corpus CDA, :mod:`benchmarks.cda`):
#:
#: * ``select-contexts=key``: the generated stylesheet declares one ``xsl:key`` over every
#:   rule context and each pattern applies its templates to ``key('M', 'M<n>')``, instead
#:   of walking the whole document once per pattern (``apply-templates`` over every
#:   element, comment and PI, ~20 walks for CR-BIO): Saxon builds the key index in one
#:   pass. Rule firing is unchanged: in its pattern's mode each context node still gets
#:   the highest-priority (first) matching rule;
#: * ``generate-fired-rule=false``: no ``svrl:fired-rule`` element per rule firing (one
#:   per lab result and more, only informational; we read failed asserts and reports).
SKELETON_PARAMETERS = {"select-contexts": "key", "generate-fired-rule": "false"}
_saxon_lock = threading.Lock()
_saxon = None


def _processor():
    global _saxon
    with _saxon_lock:
        if _saxon is None:
            from saxonche import PySaxonProcessor
            proc = PySaxonProcessor(license=False)
            proc.set_configuration_property(_DOCTYPE_OFF, "true")
            proc.set_configuration_property("http://saxon.sf.net/feature/optimizationLevel",
                                            _OPTIMIZATION)
            _saxon = proc
        return _saxon


def _skeleton_dir() -> Path:
    import lxml.isoschematron
    return Path(lxml.isoschematron.__file__).parent / "resources/xsl/iso-schematron-xslt1"


class Schematron:
    """One compiled schematron; :meth:`validate` is serialised (Saxon executables are
    not thread-safe)."""

    def __init__(self, name: str, parameters: dict[str, str] | None = None) -> None:
        self.name = name
        self.lock = threading.Lock()
        self.executable = _compile(name, SKELETON_PARAMETERS if parameters is None
                                   else parameters)

    def validate(self, document: bytes | str) -> list[Finding]:
        return self.run(parse_for_saxon(document))

    def run(self, document) -> list[Finding]:
        """Findings for a document already parsed by Saxon (:func:`parse_for_saxon`)."""
        with self.lock:
            svrl = self.executable.transform_to_string(xdm_node=document)
        return _svrl_findings(svrl)


def parse_for_saxon(document: bytes | str):
    """Saxon's own tree of a document (DOCTYPE refused by the processor's parser).

    Bytes reach Saxon through an anonymous in-memory file (Linux ``memfd_create``, read
    by path): Saxon's parser reads them there faster than from a Python ``str``
    (135 KB CR-BIO 1.5 vs 1.8 ms, 1.5 MB IPS-FR 12 vs 18 ms) and decodes them itself
    per the XML declaration. Text, or bytes where memfd is missing, go as a string."""
    proc = _processor()
    if isinstance(document, (bytes, bytearray)):
        if _MEMFD:
            fd = os.memfd_create("opendmp-cda", os.MFD_CLOEXEC)
            try:
                view = memoryview(document)
                while view:
                    view = view[os.write(fd, view):]
                return proc.parse_xml(xml_file_name=f"/proc/self/fd/{fd}")
            finally:
                os.close(fd)
        document = _as_text(bytes(document))
    return proc.parse_xml(xml_text=document)


_MEMFD = hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd")


def _as_text(data: bytes) -> str:
    if _is_utf8(data):
        return data.decode("utf-8")
    return etree.tostring(parse_cda(data), encoding="unicode")


def _compile(name: str, parameters: dict[str, str]):
    """ISO schematron -> XSLT, with the ISO skeleton run by Saxon.

    The skeleton runs with ``parameters`` (its own documented parameters; by default
    :data:`SKELETON_PARAMETERS`).
    Two adjustments, both in memory (the vendored files stay unmodified): the expanded
    schema's ``queryBinding="xslt2"`` is presented as ``xslt`` to the XSLT 1 skeleton
    (which otherwise refuses it), and the generated stylesheet is declared
    ``version="2.0"`` so Saxon evaluates the ANS XPath 2 expressions with XPath 2
    semantics (as the ANS engine's XSLT 2 skeleton does). The compiled stylesheet gets
    a base URI in ``schematrons/ans/moteur/`` so that the schematrons'
    ``document('../jeuxDeValeurs/...')`` resolves to ``schematrons/ans/jeuxDeValeurs/``.
    """
    proc = _processor()
    xslt = proc.new_xslt30_processor()
    skeleton = _skeleton_dir()
    node = proc.parse_xml(xml_file_name=str(SCHEMATRON_DIR / name))
    for step in ("iso_dsdl_include.xsl", "iso_abstract_expand.xsl"):
        node = xslt.compile_stylesheet(stylesheet_file=str(skeleton / step)) \
            .transform_to_value(xdm_node=node).head
    expanded = re.sub(r'queryBinding="xslt2"', 'queryBinding="xslt"', str(node), count=1)
    node = proc.parse_xml(xml_text=expanded)
    svrl = xslt.compile_stylesheet(stylesheet_file=str(skeleton / "iso_svrl_for_xslt1.xsl"))
    for param, value in parameters.items():
        svrl.set_parameter(param, proc.make_string_value(value))
    node = svrl.transform_to_value(xdm_node=node).head
    stylesheet = re.sub(r'(<xsl:stylesheet\b[^>]*?)\bversion="1.0"', r'\1version="2.0"',
                        str(node), count=1)
    builder = proc.new_document_builder()
    builder.set_base_uri((SCHEMATRON_DIR / "moteur" / (name + ".xsl")).as_uri())
    return xslt.compile_stylesheet(stylesheet_node=builder.parse_xml(xml_text=stylesheet))


_compiled: dict[str, Schematron] = {}
_compile_lock = threading.Lock()


def schematron(name: str) -> Schematron:
    """The compiled schematron ``name`` (compiled on first use, then reused)."""
    with _compile_lock:
        if name not in _compiled:
            _compiled[name] = Schematron(name)
        return _compiled[name]


def _svrl_findings(svrl: str) -> list[Finding]:
    if "failed-assert" not in svrl and "successful-report" not in svrl:
        return []       # the usual case: nothing to read
    root = etree.fromstring(svrl.encode("utf-8"),
                            etree.XMLParser(resolve_entities=False, no_network=True))
    out = []
    for el in root.iter(f"{{{SVRL}}}failed-assert", f"{{{SVRL}}}successful-report"):
        text = " ".join("".join(el.itertext()).split())
        loc = re.sub(r"\*\[local-name\(\)='([^']+)' and namespace-uri\(\)='[^']*'\]", r"\1",
                     el.get("location") or "")
        out.append(Finding("schematron", text, loc or None))
    return out


def volet_of(header: CdaHeader) -> tuple[str, str] | None:
    for tid in header.template_ids:
        if tid in VOLETS:
            return VOLETS[tid]
    return None


# ---------------------------------------------------------------------------- header rules

def header_findings(h: CdaHeader) -> list[Finding]:
    """Our rules for sharing a document in the DMP, which the schematrons do not check."""
    out: list[Finding] = []

    def err(message: str, where: str) -> None:
        out.append(Finding("header", message, where))

    ins_ids = [i for i in h.patient.ids if i.root in INS_OIDS]
    if not ins_ids:
        err("the patient has no INS: recordTarget/patientRole/id needs root "
            f"{' or '.join(INS_OIDS)} (INS-NIR/NIA, test, demo)", "recordTarget/patientRole/id")
    for i in ins_ids:
        problem = ins_problem(i.extension, i.root)
        if problem:
            err(f"the patient's INS is not valid: {problem}", "recordTarget/patientRole/id")
    if not h.authors:
        err("the document has no author", "author")
    elif not any(a.national_id for a in h.authors) and not any(a.device for a in h.authors):
        err(f"no author is identified by a national health-professional id (RPPS/ADELI, "
            f"root {PS_NATIONAL_ID})", "author/assignedAuthor/id")
    for n, a in enumerate(h.authors, 1):
        if not a.time or not ts_valid(a.time):
            err(f"author #{n} has no valid time", f"author[{n}]/time")
    if not h.custodian_ids:
        err("the custodian organization (custodian/assignedCustodian/"
            "representedCustodianOrganization/id) is missing", "custodian")
    c = h.confidentiality
    if c is None or c.code not in ("N", "R", "V") or c.system != CONFIDENTIALITY_SYSTEM:
        got = f"{c.code} ({c.system})" if c else "nothing"
        err(f"confidentialityCode must be N, R or V in {CONFIDENTIALITY_SYSTEM}; found {got}",
            "confidentialityCode")
    if not ts_valid(h.effective_time, min_digits=12):
        err(f"effectiveTime {h.effective_time!r} is not a date and time "
            "(YYYYMMDDHHMM[SS][+ZZZZ])", "effectiveTime")
    if not h.language or not re.fullmatch(r"[a-z]{2,3}(-[A-Z]{2})?", h.language):
        err(f"languageCode {h.language!r} is not a language tag such as fr-FR", "languageCode")
    la = h.legal_authenticator
    if la is None:
        err("the legal authenticator (legalAuthenticator) is missing", "legalAuthenticator")
    else:
        if not la.ids:
            err("the legal authenticator has no id", "legalAuthenticator/assignedEntity/id")
        if not la.time or not ts_valid(la.time):
            err("the legal authenticator has no valid time", "legalAuthenticator/time")
    if h.id is None:
        err("the document has no id (uniqueId)", "id")
    return out


# ---------------------------------------------------------------------------- entry point

def validate(data: bytes, *, schema: bool = True, run_schematron: bool = True,
             header_rules: bool = True) -> ValidationReport:
    """Validate one CDA document; every layer runs even when an earlier one fails."""
    report = ValidationReport()
    try:
        root = parse_cda(data)
        header = read_header(root)
    except CdaError as exc:
        report.findings.append(Finding("parse", str(exc)))
        return report
    report.header = header
    if schema:
        report.schema, found = schema_findings(root, header.is_french)
        report.findings += found
    if run_schematron:
        volet = volet_of(header)
        if volet is not None:
            report.volet = volet[0]
            report.findings += schematron(volet[1]).validate(data)
    if header_rules:
        report.findings += header_findings(header)
    return report


def _is_utf8(data: bytes) -> bool:
    head = data[:200].lower()
    if b"encoding=" in head and not re.search(rb"encoding=[\"']utf-8[\"']", head):
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
