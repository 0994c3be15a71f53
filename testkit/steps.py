"""Executors: one per toolkit transaction type, plus the patient feeds.

Supported transactions (SOAP 1.2 + WS-Addressing, ITI TF-2x Appendix V):

``RegisterTransaction`` (ITI-42)
    ``urn:ihe:iti:2007:RegisterDocumentSet-b``, body ``lcm:SubmitObjectsRequest``,
    sent to ``--registry``.
``StoredQueryTransaction`` (ITI-18)
    ``urn:ihe:iti:2007:RegistryStoredQuery``, body ``query:AdhocQueryRequest``,
    sent to ``--registry``.
``ProvideAndRegisterTransaction`` (ITI-41)
    ``urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b``, body
    ``xdsb:ProvideAndRegisterDocumentSetRequest`` with the documents inline
    (base64 ``xdsb:Document id=``, no MTOM), sent to ``--repository``.
``RetrieveTransaction`` (ITI-43)
    ``urn:ihe:iti:2007:RetrieveDocumentSet``, body ``xdsb:RetrieveDocumentSetRequest``,
    sent to ``--repository``; plain and MTOM/XOP (``multipart/related``) answers are
    read; ``ReferenceDocument`` contents and ``ReferenceMetadata`` mimeType/hash/size
    are compared with what came back.
``PatientIdentityFeedTransaction``
    announces the test's patient id through ``--patient-feed``: ``cmd:TEMPLATE``
    (the template is split like a shell command line, ``{cx}`` is replaced in each
    word, no shell is involved; a non-zero exit is a failed feed), ``mllp://host:port``
    (HL7 v2 ADT^A01 from the toolkit's ``adt-templates/A01.txt`` over MLLP; the ACK
    must be AA/CA) or ``none`` (ids are assumed known; the step is SKIP but its
    patient id is still published for later steps).
``NullTransaction``
    only assertions (``Assertions``) on the section log.

Every response must carry the expected ``wsa:Action`` and top element and be
schema-valid before the plan's own expectations are looked at (see
:mod:`testkit.expect`).  An answer that is not SOAP at all (HTTP error page, empty
body) is a transport failure, never a SOAP Fault, so it cannot satisfy an expected
``Fault``.

SKIPped with a reason: ``MuTransaction``, ``RemoveMetadataTransaction``,
``PatientMoveTransaction``, ``XDRProvideAndRegisterTransaction``, ``RdTransaction``,
``HttpTransaction`` and any other transaction ("not supported by this runner yet");
XDS.a (``XDSa``) and asynchronous (``ASync``) steps; tests of the ``*_xua`` collections
(their SAML assertions come from the toolkit's STS at run time); ITI-41/43 without
``--repository`` ("repository not configured"); steps whose ebRIM 2.1 metadata cannot
be converted; steps depending on a skipped step.
"""
from __future__ import annotations

import base64
import copy
import datetime as _dt
import email.parser
import email.policy
import hashlib
import shlex
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from lxml import etree

from soapstack.client import SoapClient, build_envelope, parse_reply
from soapstack.envelope import SoapFault
from soapstack.xml import XmlRejected, parse_xml

from . import context as ctxmod
from .context import (DependencyError, FeedOutcome, LinkageError, RunContext, StepRecord,
                      find_placeholders, replace_in_tree)
from .ebrim21 import ConversionError, convert_submit_objects_request, is_ebrim21
from .expect import (Outcome, ResponseMetadata, check_error_codes, check_error_messages,
                     check_expected_contents, check_schema, check_status, evaluate_assertions,
                     outcome_from_payload)
from .plan import KNOWN_TRANSACTIONS, READ_ONLY_TRANSACTIONS, Section, Step, TestDef, Transaction, UseId

XDSB = "urn:ihe:iti:xds-b:2007"
LCM = "urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0"
RIM = "urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0"
RS = "urn:oasis:names:tc:ebxml-regrep:xsd:rs:3.0"
QUERY = "urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0"
XOP = "http://www.w3.org/2004/08/xop/include"
SOAP12 = "http://www.w3.org/2003/05/soap-envelope"

ITI42 = ("urn:ihe:iti:2007:RegisterDocumentSet-b", "urn:ihe:iti:2007:RegisterDocumentSet-bResponse",
         f"{{{RS}}}RegistryResponse")
ITI18 = ("urn:ihe:iti:2007:RegistryStoredQuery", "urn:ihe:iti:2007:RegistryStoredQueryResponse",
         f"{{{QUERY}}}AdhocQueryResponse")
ITI41 = ("urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b",
         "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-bResponse", f"{{{RS}}}RegistryResponse")
ITI43 = ("urn:ihe:iti:2007:RetrieveDocumentSet", "urn:ihe:iti:2007:RetrieveDocumentSetResponse",
         f"{{{XDSB}}}RetrieveDocumentSetResponse")

UNSUPPORTED_REASON = "not supported by this runner yet"

_SAFE_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)


# ------------------------------------------------------------------ results

@dataclass
class StepResult:
    """Outcome of one step as printed on its report line."""

    test: str
    section: str
    step: str
    kind: str
    status: str                                   # PASS, FAIL or SKIP
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)
    #: "" | "converted" | "unconvertible": the step's metadata was ebRIM 2.1
    ebrim21: str = ""
    checks: int = 0
    seconds: float = 0.0
    request: etree._Element | None = None
    response: etree._Element | None = None

    @property
    def label(self) -> str:
        return f"{self.test}/{self.section}/{self.step}"


class TransportError(Exception):
    """No SOAP answer at all (connection refused, HTTP error page, unreadable body)."""


class PlanProblem(Exception):
    """The test plan itself is unusable (missing file, malformed metadata): SKIP."""


class FeedFailed(Exception):
    """A patient id could not be fed to the system under test: FAIL."""


class Skip(Exception):
    """The step cannot be run by this runner (reason in the message)."""

    def __init__(self, message: str, ebrim21: bool = False) -> None:
        super().__init__(message)
        self.ebrim21 = ebrim21


# ------------------------------------------------------------------ patient feeds

class NoFeed:
    """``--patient-feed none``: patient ids are assumed known to the system under test."""

    def describe(self) -> str:
        return "none (patient ids assumed known)"

    def __call__(self, cx: str) -> FeedOutcome:
        return FeedOutcome(sent=False, ok=True, message="not sent (--patient-feed none)")


class CommandFeed:
    """``cmd:TEMPLATE``: run a local command per patient id, ``{cx}`` replaced in each word."""

    def __init__(self, template: str, timeout: float = 120.0) -> None:
        self.template = template
        self.argv = shlex.split(template)
        if not self.argv:
            raise ValueError("empty patient feed command")
        if not any("{cx}" in a for a in self.argv):
            raise ValueError("patient feed command must contain {cx}")
        self.timeout = timeout

    def describe(self) -> str:
        return f"command {self.template!r}"

    def __call__(self, cx: str) -> FeedOutcome:
        argv = [a.replace("{cx}", cx) for a in self.argv]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=self.timeout,
                                  stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return FeedOutcome(True, False, f"feed command failed: {exc}")
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            return FeedOutcome(True, False, f"feed command exited {proc.returncode}: {' | '.join(tail)}")
        return FeedOutcome(True, True, f"fed by command (exit 0)")


class MllpFeed:
    """``mllp://host:port``: ITI-8 ADT^A01 (toolkit template) over MLLP via python-hl7."""

    def __init__(self, host: str, port: int, template: Path | None = None, timeout: float = 30.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.template = template

    def describe(self) -> str:
        return f"MLLP ADT^A01 to {self.host}:{self.port}"

    def message(self, cx: str) -> str:
        if self.template is not None and self.template.exists():
            text = self.template.read_text(encoding="utf-8")
        else:
            text = ("MSH|^~\\&|EPICADT|DH|LABADT|DH|201301011226||ADT^A01|HL7MSG00001|P|2.3|\n"
                    "PID|||$pid$||APPLESEED^JOHN^A^III||19710101|M||C|1^CATALYZE STREET^^MADISON^WI^53005-1020"
                    "|GL|(414)379-1212|(414)271-3434||S||MRN12345001^2^M10|123456789|987654^NC|\n")
        now = _dt.datetime.now().strftime("%Y%m%d%H%M%S")
        segments = []
        for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
            if not line.strip():
                continue
            if line.startswith("MSH|"):
                fields = line.split("|")
                if len(fields) > 9:
                    fields[6] = now                       # MSH-7 date/time of message
                    fields[9] = uuid.uuid4().hex[:20]     # MSH-10 message control id
                line = "|".join(fields)
            segments.append(line.replace("$pid$", cx))
        return "\r".join(segments) + "\r"

    def __call__(self, cx: str) -> FeedOutcome:
        try:
            from hl7.client import MLLPClient
        except ImportError as exc:   # pragma: no cover - hl7 is a dependency
            return FeedOutcome(True, False, f"python-hl7 unavailable: {exc}")
        try:
            client = MLLPClient(self.host, self.port)
        except OSError as exc:
            return FeedOutcome(True, False, f"cannot connect to PIX manager {self.host}:{self.port}: {exc}")
        try:
            client.socket.settimeout(self.timeout)
            data = client.send_message(self.message(cx))
            while b"\x1c" not in data:
                more = client.socket.recv(65536)
                if not more:
                    break
                data += more
        except OSError as exc:
            return FeedOutcome(True, False, f"MLLP exchange with {self.host}:{self.port} failed: {exc}")
        finally:
            client.close()
        text = data.strip(b"\x0b\x1c\r\n").decode("utf-8", errors="replace")
        for seg in text.replace("\n", "\r").split("\r"):
            if seg.startswith("MSA|"):
                code = seg.split("|")[1] if len(seg.split("|")) > 1 else ""
                if code in ("AA", "CA"):
                    return FeedOutcome(True, True, f"ADT^A01 acknowledged ({code})")
                return FeedOutcome(True, False, f"ADT^A01 rejected: {seg}")
        return FeedOutcome(True, False, f"no MSA segment in the answer: {text[:200]!r}")


def parse_feed_spec(spec: str | None, template: Path | None = None):
    """``none`` | ``cmd:TEMPLATE`` | ``mllp://host:port`` -> a feed callable."""
    if spec is None or spec.strip().lower() in ("", "none"):
        return NoFeed()
    if spec.startswith("cmd:"):
        return CommandFeed(spec[4:])
    if spec.startswith("mllp://"):
        rest = spec[len("mllp://"):].rstrip("/")
        host, _, port = rest.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"bad MLLP address {spec!r} (mllp://host:port)")
        return MllpFeed(host.strip("[]"), int(port), template)
    raise ValueError(f"unknown patient feed {spec!r} (none, cmd:TEMPLATE or mllp://host:port)")


# ------------------------------------------------------------------ SOAP transport

@dataclass
class SoapAnswer:
    payload: etree._Element | None
    action: str | None
    fault: SoapFault | None
    http_status: int
    attachments: dict[str, bytes] = field(default_factory=dict)


def _split_multipart(content_type: str, body: bytes) -> tuple[bytes, dict[str, bytes]]:
    """MTOM/XOP (``multipart/related``): (root part, {content-id: bytes})."""
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body)
    if not msg.is_multipart():
        raise TransportError("multipart/related answer without parts")
    start = msg.get_param("start")
    parts = list(msg.iter_parts())
    root = None
    attachments: dict[str, bytes] = {}
    for part in parts:
        cid = (part.get("Content-ID") or "").strip().strip("<>")
        data = part.get_payload(decode=True) or b""
        if root is None and (start is None or start.strip("<>") == cid):
            root = data
        else:
            attachments[cid] = data
    if root is None:
        raise TransportError("multipart/related answer: root part not found")
    return root, attachments


def _resolve_xop(payload: etree._Element, attachments: dict[str, bytes]) -> None:
    """Replace ``xop:Include href="cid:..."`` by the base64 of the part (in place)."""
    for inc in list(payload.iter(f"{{{XOP}}}Include")):
        href = inc.get("href", "")
        cid = href[4:] if href.startswith("cid:") else href
        from urllib.parse import unquote
        data = attachments.get(cid) or attachments.get(unquote(cid))
        if data is None:
            raise TransportError(f"xop:Include {href} names no MIME part")
        parent = inc.getparent()
        parent.remove(inc)
        parent.text = base64.b64encode(data).decode("ascii")


def soap_call(client: SoapClient, action: str, body: etree._Element,
              headers: list[etree._Element] | None = None) -> SoapAnswer:
    """POST a SOAP 1.2 request built by :func:`soapstack.client.build_envelope` and read
    the answer (plain or MTOM).  Non-SOAP answers raise :class:`TransportError`."""
    data = build_envelope(action, client.url, copy.deepcopy(body), headers)
    try:
        response = client.http.post(
            client.url, content=data,
            headers={"Content-Type": f'application/soap+xml; charset=UTF-8; action="{action}"'})
    except httpx.HTTPError as exc:
        raise TransportError(f"{type(exc).__name__}: {exc}") from None
    ctype = response.headers.get("content-type", "")
    content = response.content
    attachments: dict[str, bytes] = {}
    if ctype.lower().startswith("multipart/related"):
        content, attachments = _split_multipart(ctype, content)
    if not content.strip():
        raise TransportError(f"HTTP {response.status_code} with an empty body")
    try:
        root = parse_xml(content)
    except XmlRejected as exc:
        raise TransportError(f"HTTP {response.status_code}, not a SOAP message ({ctype or 'no content type'}): "
                             f"{exc}") from None
    # only a real SOAP 1.2 envelope may count as an answer (a Fault included): an HTML
    # error page that happens to be well-formed XML must not satisfy an expected Fault
    if root.tag != f"{{{SOAP12}}}Envelope" or root.find(f"{{{SOAP12}}}Body") is None:
        raise TransportError(f"HTTP {response.status_code}, not a SOAP 1.2 envelope: "
                             f"<{etree.QName(root).localname}> ({ctype or 'no content type'})")
    try:
        reply = parse_reply(response.status_code, content)
    except SoapFault as fault:
        return SoapAnswer(None, None, fault, response.status_code, attachments)
    try:
        payload = reply.payload
    except StopIteration:
        raise TransportError(f"HTTP {response.status_code}: empty SOAP Body") from None
    if attachments:
        _resolve_xop(payload, attachments)
    return SoapAnswer(payload, reply.action, None, response.status_code, attachments)


def _clean_params(root: etree._Element) -> None:
    """``CleanParams``: drop query parameter values still holding a ``$placeholder$``
    (and slots left empty), as the toolkit's StoredQueryTransaction does."""
    for slot in list(root.iter(f"{{{RIM}}}Slot")):
        vl = slot.find(f"{{{RIM}}}ValueList")
        if vl is None:
            continue
        for v in list(vl):
            if isinstance(v.tag, str) and ctxmod.PLACEHOLDER.search(v.text or ""):
                vl.remove(v)
        if not len(vl):
            slot.getparent().remove(slot)


# ------------------------------------------------------------------ the runner

@dataclass
class Endpoints:
    registry: str | None
    repository: str | None = None
    timeout: float = 60.0
    verify: bool | str = True
    cert: tuple[str, str] | None = None


@dataclass
class Prepared:
    """A request ready to send and the bookkeeping it produced."""

    request: etree._Element | None
    assigned: dict[str, dict[str, str]] = field(default_factory=dict)
    reports: dict[str, str] = field(default_factory=dict)
    substitutions: list[tuple[str, str]] = field(default_factory=list)
    uuid_map: dict[str, str] = field(default_factory=dict)
    ebrim21: str = ""
    notes: list[str] = field(default_factory=list)


XUA_COLLECTION_SUFFIX = "_xua"


class Runner:
    """Runs tests in order, sharing one :class:`RunContext` so ids flow between them."""

    def __init__(self, ctx: RunContext, endpoints: Endpoints, on_result=None) -> None:
        self.ctx = ctx
        self.endpoints = endpoints
        self.on_result = on_result or (lambda r: None)
        self._http = httpx.Client(timeout=endpoints.timeout, verify=endpoints.verify,
                                  cert=endpoints.cert)
        self.registry = SoapClient(endpoints.registry, client=self._http) if endpoints.registry else None
        self.repository = (SoapClient(endpoints.repository, client=self._http)
                           if endpoints.repository else None)
        #: wall-clock time of the last submission sent (see ``$now$``)
        self._last_submission = 0.0

    def close(self) -> None:
        self._http.close()

    # ---- tests and sections

    def run_test(self, test: TestDef) -> list[StepResult]:
        self.ctx.register_test(test.name, test.path, [(s.name, s.path) for s in test.sections])
        results: list[StepResult] = []
        xua = any(c.endswith(XUA_COLLECTION_SUFFIX) for c in test.collections)
        #: first skipped step that would have changed the system under test: the steps
        #: after it (same test) expect its effects, so they are skipped too
        blocked_by: str | None = None
        for sec in test.sections:
            self.ctx.begin_section(test.name, sec.name)
            if sec.error:
                r = StepResult(test.name, sec.name, "-", "TestPlan", "SKIP",
                               [f"test plan unusable: {sec.error}"])
                results.append(r)
                self.on_result(r)
                blocked_by = blocked_by or r.label
                continue
            for step in sec.steps:
                if xua:
                    r = self._skip_record(test, sec, step, "XUA test: its SAML assertion is produced "
                                          "by the toolkit STS at run time (not supported)")
                elif blocked_by is not None:
                    r = self._skip_record(test, sec, step, f"follows skipped step {blocked_by} "
                                          "(its changes to the system under test are missing)")
                else:
                    r = self.run_step(test, sec, step)
                    if r.status == "SKIP" and r.kind not in READ_ONLY_TRANSACTIONS:
                        blocked_by = r.label
                results.append(r)
                self.on_result(r)
        return results

    def _skip_record(self, test: TestDef, sec: Section, step: Step, reason: str,
                     kind: str | None = None, ebrim21: str = "") -> StepResult:
        kind = kind or (step.transaction.kind if step.transaction else "TestStep")
        self.ctx.add_record(StepRecord(test.name, sec.name, step.id, kind, "SKIP", False))
        return StepResult(test.name, sec.name, step.id, kind, "SKIP", [reason], ebrim21=ebrim21)

    def run_step(self, test: TestDef, sec: Section, step: Step) -> StepResult:
        t0 = time.monotonic()
        tx = step.transaction
        kind = tx.kind if tx else "TestStep"
        try:
            if tx is None:
                result = self._no_transaction(test, sec, step)
            elif tx.kind not in KNOWN_TRANSACTIONS:
                raise Skip(UNSUPPORTED_REASON)
            elif tx.unknown:
                raise Skip(f"instruction(s) {', '.join(sorted(set(tx.unknown)))} {UNSUPPORTED_REASON}")
            elif tx.xds_version == "a":
                raise Skip("XDS.a transaction (XDSa) not supported: XDS.b endpoints only")
            elif tx.is_async:
                raise Skip("asynchronous web services (ASync) not supported")
            else:
                if tx.wait_before_ms > 0:
                    time.sleep(tx.wait_before_ms / 1000.0)
                handler = {
                    "RegisterTransaction": self._register,
                    "StoredQueryTransaction": self._stored_query,
                    "ProvideAndRegisterTransaction": self._provide_and_register,
                    "RetrieveTransaction": self._retrieve,
                    "PatientIdentityFeedTransaction": self._patient_feed,
                    "NullTransaction": self._null,
                }[tx.kind]
                result = handler(test, sec, step, tx)
        except Skip as s:
            result = self._skip_record(test, sec, step, str(s), kind,
                                       ebrim21="unconvertible" if s.ebrim21 else "")
        except DependencyError as d:
            if d.skipped:
                result = self._skip_record(test, sec, step, str(d), kind)
            else:
                result = self._fail_record(test, sec, step, kind, [str(d)])
        except (PlanProblem, LinkageError) as p:
            result = self._skip_record(test, sec, step, f"test plan problem: {p}", kind)
        except FeedFailed as f:
            result = self._fail_record(test, sec, step, kind, [str(f)])
        except Exception as exc:   # noqa: BLE001 - a runner bug must not abort the run
            result = self._fail_record(test, sec, step, kind,
                                       [f"internal runner error (please report): {type(exc).__name__}: {exc}"])
        result.seconds = time.monotonic() - t0
        return result

    def _fail_record(self, test, sec, step, kind, reasons, prepared: Prepared | None = None,
                     **extra) -> StepResult:
        self.ctx.add_record(StepRecord(test.name, sec.name, step.id, kind, "FAIL", False,
                                       assigned=prepared.assigned if prepared else {},
                                       request=prepared.request if prepared else None))
        return StepResult(test.name, sec.name, step.id, kind, "FAIL", reasons,
                          ebrim21=prepared.ebrim21 if prepared else "", **extra)

    def _no_transaction(self, test: TestDef, sec: Section, step: Step) -> StepResult:
        if "NewPatientId" in step.step_instructions:
            pid = self.ctx.patients.generate()
            self.ctx.patients.establish(test.name, pid)
            fed = self.ctx.patients.ensure_fed(pid)
            status = "PASS" if fed.ok else "FAIL"
            if not fed.sent:
                status = "SKIP"
            self.ctx.add_record(StepRecord(test.name, sec.name, step.id, "NewPatientId", status,
                                           fed.ok, reports={"$patientid$": pid}))
            msg = [f"new patient id {pid}: {fed.message}"]
            return StepResult(test.name, sec.name, step.id, "NewPatientId", status,
                              [] if status == "PASS" else msg, msg if status == "PASS" else [])
        raise Skip("step without a transaction")

    # ---- metadata preparation (BasicTransaction.prepareMetadata)

    def _load_metadata(self, sec: Section, tx: Transaction) -> etree._Element:
        if tx.inline_metadata is not None:
            return copy.deepcopy(tx.inline_metadata)
        if not tx.metadata_file:
            raise PlanProblem(f"{tx.kind} without MetadataFile")
        path = sec.path / tx.metadata_file
        if not path.is_file():
            raise PlanProblem(f"metadata file {path} is missing")
        try:
            return etree.parse(str(path), _SAFE_PARSER).getroot()
        except etree.XMLSyntaxError as exc:
            raise PlanProblem(f"metadata file {path} is not XML: {exc}") from None

    def _apply_use_reports(self, root: etree._Element | None, test: TestDef, sec: Section,
                           tx: Transaction, prep: Prepared) -> str | None:
        """Resolve UseReport values, apply them; returns a patient id they established."""
        forced_pid = None
        for ur in tx.use_reports:
            value = self.ctx.resolve_use_report(ur, test.name, sec.name)
            prep.substitutions.append((ur.use_as, value))
            if root is not None:
                replace_in_tree(root, ur.use_as, value)
            if ur.report_name == "$patientid$" and ur.use_as in ("$patientid$", "$patient_id$"):
                forced_pid = value
        if forced_pid is not None:
            self.ctx.patients.establish(test.name, forced_pid)
        return forced_pid

    def _apply_use_ids(self, root: etree._Element | None, test: TestDef, sec: Section,
                       tx: Transaction, prep: Prepared) -> None:
        for use in tx.use_ids:
            value = self.ctx.resolve_use_id(use, sec.path, test.name, sec.name)
            prep.substitutions.append((use.symbol, value))
            if root is not None:
                replace_in_tree(root, use.symbol, value)

    def _apply_other_linkage(self, root: etree._Element, test: TestDef, sec: Section,
                             tx: Transaction, prep: Prepared) -> None:
        for ux in tx.use_xpaths:
            if ux.file:
                path = sec.path / ux.file
                if not path.is_file():
                    raise PlanProblem(f"UseXPath file {path} is missing")
                src = etree.parse(str(path), _SAFE_PARSER).getroot()
            else:
                t, s = self.ctx.resolve_testdir(ux.testdir, sec.path, test.name, sec.name)
                rec = self.ctx.record(t, s, ux.step)
                src = ctxmod.step_log_element(rec)
            try:
                value = ctxmod.xpath_string(src, ux.xpath)
            except etree.XPathError as exc:
                raise PlanProblem(f"UseXPath {ux.symbol}: bad XPath: {exc}") from None
            prep.substitutions.append((ux.symbol, value))
            replace_in_tree(root, ux.symbol, value)
        for uo in tx.use_object_refs:
            t, s = self.ctx.resolve_testdir(uo.testdir, sec.path, test.name, sec.name)
            rec = self.ctx.record(t, s, uo.step)
            refs = ResponseMetadata(rec.result).object_refs
            if not 0 <= uo.index < len(refs):
                raise DependencyError(f"{rec.label} returned {len(refs)} ObjectRefs, "
                                      f"{uo.symbol} needs index {uo.index}")
            value = refs[uo.index].get("id", "")
            prep.substitutions.append((uo.symbol, value))
            replace_in_tree(root, uo.symbol, value)
        for ur in tx.use_repository_unique_ids:
            t, s = self.ctx.resolve_testdir(ur.testdir, sec.path, test.name, sec.name)
            rec = self.ctx.record(t, s, ur.step)
            values = set()
            for eo in ResponseMetadata(rec.result).extrinsic_objects:
                for slot in eo.iter(f"{{{RIM}}}Slot"):
                    if slot.get("name") == "repositoryUniqueId":
                        values.update((v.text or "").strip() for v in slot.iter(f"{{{RIM}}}Value"))
            if len(values) != 1:
                raise DependencyError(f"{rec.label}: expected one repositoryUniqueId, found {sorted(values)}")
            value = values.pop()
            prep.substitutions.append((ur.symbol, value))
            replace_in_tree(root, ur.symbol, value)
        if "$now$" in etree.tostring(root, encoding="unicode"):
            # Time ranges of stored queries are half-open (ITI TF-2a 3.18.4.1.2.3.6): an
            # object registered in this very second would fall outside "$now$".  The
            # toolkit's users run queries long after loading data; at machine speed we
            # wait for the clock to leave the second of the last submission instead.
            while int(time.time()) <= int(self._last_submission):
                time.sleep(0.05)
        for token, value in (("$now$", ctxmod.hl7_now()), ("$lastyear$", ctxmod.hl7_now(-365))):
            replace_in_tree(root, token, value)
            prep.substitutions.append((token, value))

    def _prepare(self, test: TestDef, sec: Section, tx: Transaction, submission: bool) -> Prepared:
        prep = Prepared(request=None)
        root = self._load_metadata(sec, tx)
        forced_pid = self._apply_use_reports(root, test, sec, tx, prep)
        if is_ebrim21(root):
            if not submission:
                raise Skip("ebRIM 2.1 (XDS.a) request: only SubmitObjectsRequest files are converted",
                           ebrim21=True)
            if tx.no_convert:
                raise Skip("ebRIM 2.1 metadata with NoConvert (sent as XDS.a by the toolkit)",
                           ebrim21=True)
            try:
                root = convert_submit_objects_request(root)
            except ConversionError as exc:
                raise Skip(f"ebRIM 2.1 metadata could not be converted: {exc}", ebrim21=True) from None
            prep.ebrim21 = "converted"
        if submission and tx.parse_metadata:
            if tx.assign_patient_id:
                pid = forced_pid
                if pid is None:
                    pid, fed = self.ctx.patients.for_test(test.name)
                    if fed is not None and fed.sent and not fed.ok:
                        raise FeedFailed(f"patient feed of new patient id {pid} failed: {fed.message}")
                prep.assigned["AssignedPatientId"] = ctxmod.assign_patient_id(root, pid)
            self._apply_use_ids(root, test, sec, tx, prep)
            if tx.assign_uids:
                uids = ctxmod.assign_unique_ids(root, tx.no_assign_uid_to)
                prep.assigned["AssignedUids"] = uids
                prep.reports.update({f"{k}_uid": v for k, v in uids.items()})
            prep.assigned["AssignedSourceId"] = ctxmod.source_ids(root)
            if tx.assign_uuids:
                uuids = ctxmod.assign_uuids(root)
                prep.assigned["AssignedUuids"] = uuids
                prep.uuid_map = uuids
                prep.reports.update({f"{k}_uuid": v for k, v in uuids.items()})
        else:
            self._apply_use_ids(root, test, sec, tx, prep)
        self._apply_other_linkage(root, test, sec, tx, prep)
        if tx.clean_params:
            _clean_params(root)
        left = find_placeholders(root)
        if left:
            # nothing in the plan defines them (the toolkit would send them verbatim):
            # the answer could not say anything about the system under test
            raise Skip(f"test plan leaves placeholder(s) {', '.join(left)} in {tx.metadata_file} "
                       "unresolved")
        prep.request = root
        return prep

    # ---- shared response evaluation

    def _evaluate(self, test: TestDef, sec: Section, step: Step, tx: Transaction, prep: Prepared,
                  answer: SoapAnswer | None, spec: tuple[str, str, str],
                  extra_checks=None) -> StepResult:
        expected_action, top = spec[1], spec[2]
        reasons: list[str] = []
        unchecked: list[str] = []
        checks = 0
        if answer.fault is not None:
            outcome = Outcome(fault=f"{answer.fault.code}: {answer.fault.reason}")
        else:
            outcome = outcome_from_payload(answer.payload, answer.action)
        reasons += check_status(step.expected_status, outcome)
        reasons += check_error_codes(step.expected_error_codes, outcome)
        reasons += check_error_messages(step.expected_error_messages, outcome)
        checks += 1 + len(step.expected_error_codes) + len(step.expected_error_messages)
        if answer.fault is None:
            if answer.action != expected_action:
                reasons.append(f"wsa:Action {answer.action!r}, expected {expected_action!r} "
                               "(ITI TF-2x V.3.2.1)")
            if answer.payload.tag != top:
                reasons.append(f"response element {answer.payload.tag}, expected {top}")
            else:
                schema_errors, schema_checked = check_schema(answer.payload)
                reasons += schema_errors
                if schema_checked:
                    checks += 1
                else:
                    unchecked.append("response schema (schemas/ihe-iti missing)")
            checks += 2
        if tx.expected_contents is not None and "Fault" not in step.expected_status:
            def resolve(use_el: etree._Element) -> str:
                use = UseId(symbol=use_el.get("symbol", ""), id=use_el.get("id"),
                            step=use_el.get("step"), section=use_el.get("section"),
                            testdir=use_el.get("testdir"), value=use_el.get("value"))
                return self.ctx.resolve_use_id(use, sec.path, test.name, sec.name)
            if answer.fault is None:
                errs, unc = check_expected_contents(tx.expected_contents, outcome, resolve)
                reasons += errs
                unchecked += unc
                checks += sum(1 for c in tx.expected_contents if isinstance(c.tag, str)) - len(unc)
        if extra_checks is not None and answer.fault is None and not reasons:
            more, more_unchecked, n = extra_checks(outcome)
            reasons += more
            unchecked += more_unchecked
            checks += n
        # reports (only a passing step publishes them, as in the toolkit)
        reports = dict(prep.reports)
        for rep in tx.reports:
            src = prep.request if rep.section == "InputMetadata" else (
                answer.payload if rep.section == "Result" else None)
            if src is None:
                if rep.section not in ("InputMetadata", "Result"):
                    prep.notes.append(f"Report {rep.name}: section {rep.section} not supported")
                continue
            try:
                reports[rep.name] = ctxmod.xpath_string(src, rep.xpath)
            except etree.XPathError as exc:
                prep.notes.append(f"Report {rep.name}: bad XPath ({exc})")
        pid = self.ctx.patients.current(test.name)
        if pid is not None:
            # the toolkit reports its run parameters ($patientid$) from every step
            reports.setdefault("$patientid$", pid)
        record = StepRecord(test.name, sec.name, step.id, tx.kind, "PASS", True,
                            assigned=prep.assigned, reports=reports,
                            request=prep.request, result=answer.payload)
        # assertions see the section log including this step
        if tx.asserts:
            res = self._assertions(test, sec, tx, prep, pending=record)
            reasons += res.failures
            unchecked += res.unchecked
            checks += res.checked
        status = "FAIL" if reasons else "PASS"
        record.status = status
        record.usable = status == "PASS"
        if status == "FAIL":
            record.reports = {}
        self.ctx.add_record(record)
        notes = list(prep.notes)
        if status == "PASS":
            warnings = [e for e in outcome.errors if not e.is_error]
            if warnings:
                notes.append(f"warnings: {Outcome(errors=warnings).error_summary()}")
            codes = ""
            if outcome.errors and outcome.short_status != "Success":
                counted = {c: outcome.error_codes.count(c) for c in dict.fromkeys(outcome.error_codes)}
                codes = " " + ", ".join(c if n == 1 else f"{c} x{n}" for c, n in counted.items())
            notes.insert(0, f"status {outcome.short_status}{codes}; {checks} checks")
        return StepResult(test.name, sec.name, step.id, tx.kind, status, reasons, notes, unchecked,
                          ebrim21=prep.ebrim21, checks=checks, request=prep.request,
                          response=answer.payload)

    def _assertions(self, test: TestDef, sec: Section, tx: Transaction, prep: Prepared,
                    pending: StepRecord | None = None):
        log = self.ctx.section_log(test.name, sec.name)
        if pending is not None:
            log.append(ctxmod.step_log_element(pending))
        asserts = [copy.deepcopy(a) for a in tx.asserts]
        return evaluate_assertions(asserts, tx.data_refs, log, [sec.path, sec.path.parent],
                                   prep.substitutions)

    def _send(self, client: SoapClient, spec, body: etree._Element, tx: Transaction) -> SoapAnswer:
        headers = [copy.deepcopy(h) for h in tx.soap_headers] or None
        try:
            return soap_call(client, spec[0], body, headers)
        finally:
            if spec in (ITI42, ITI41):
                self._last_submission = time.time()

    def _transport_fail(self, test, sec, step, tx, prep, exc) -> StepResult:
        return self._fail_record(test, sec, step, tx.kind,
                                 [f"transport error ({(self._endpoint_of(tx))}): {exc}"], prep,
                                 request=prep.request)

    def _endpoint_of(self, tx: Transaction) -> str:
        if tx.kind in ("ProvideAndRegisterTransaction", "RetrieveTransaction"):
            return self.endpoints.repository or "-"
        return self.endpoints.registry or "-"

    # ---- transactions

    def _register(self, test, sec, step, tx) -> StepResult:
        if self.registry is None:
            raise Skip("registry not configured (--registry)")
        prep = self._prepare(test, sec, tx, submission=True)
        body = prep.request
        if etree.QName(body).localname != "SubmitObjectsRequest" or etree.QName(body).namespace != LCM:
            raise PlanProblem(f"RegisterTransaction file {tx.metadata_file} holds {body.tag}, "
                              "not an lcm:SubmitObjectsRequest")
        try:
            answer = self._send(self.registry, ITI42, body, tx)
        except TransportError as exc:
            return self._transport_fail(test, sec, step, tx, prep, exc)
        return self._evaluate(test, sec, step, tx, prep, answer, ITI42)

    def _stored_query(self, test, sec, step, tx) -> StepResult:
        if self.registry is None:
            raise Skip("registry not configured (--registry)")
        prep = self._prepare(test, sec, tx, submission=False)
        body = prep.request
        if etree.QName(body).localname != "AdhocQueryRequest" or etree.QName(body).namespace != QUERY:
            raise PlanProblem(f"StoredQueryTransaction file {tx.metadata_file} holds {body.tag}, "
                              "not a query:AdhocQueryRequest")
        try:
            answer = self._send(self.registry, ITI18, body, tx)
        except TransportError as exc:
            return self._transport_fail(test, sec, step, tx, prep, exc)
        return self._evaluate(test, sec, step, tx, prep, answer, ITI18)

    def _provide_and_register(self, test, sec, step, tx) -> StepResult:
        if self.repository is None:
            raise Skip("repository not configured (--repository)")
        prep = self._prepare(test, sec, tx, submission=True)
        meta = prep.request
        if etree.QName(meta).localname == "ProvideAndRegisterDocumentSetRequest":
            body = meta  # the plan's <Document> elements are added below, as the toolkit does
        else:
            if etree.QName(meta).localname != "SubmitObjectsRequest":
                raise PlanProblem(f"ProvideAndRegisterTransaction file {tx.metadata_file} holds {meta.tag}")
            body = etree.Element(f"{{{XDSB}}}ProvideAndRegisterDocumentSetRequest", nsmap={"xdsb": XDSB})
            body.append(meta)
        for doc in tx.documents:
            path = sec.path / doc.file
            if not path.is_file():
                raise PlanProblem(f"document file {path} is missing")
            el = etree.SubElement(body, f"{{{XDSB}}}Document",
                                  id=prep.uuid_map.get(doc.id, doc.id))
            el.text = base64.b64encode(path.read_bytes()).decode("ascii")
        prep.request = body
        try:
            answer = self._send(self.repository, ITI41, body, tx)
        except TransportError as exc:
            return self._transport_fail(test, sec, step, tx, prep, exc)
        return self._evaluate(test, sec, step, tx, prep, answer, ITI41)

    def _retrieve(self, test, sec, step, tx) -> StepResult:
        if self.repository is None:
            raise Skip("repository not configured (--repository)")
        prep = self._prepare(test, sec, tx, submission=False)
        body = prep.request
        if etree.QName(body).localname != "RetrieveDocumentSetRequest":
            raise PlanProblem(f"RetrieveTransaction file {tx.metadata_file} holds {body.tag}")
        ref_metadata = []
        for rm in tx.reference_metadata:
            t, s = self.ctx.resolve_testdir(rm.testdir, sec.path, test.name, sec.name)
            ref_metadata.append(self.ctx.record(t, s, rm.step))
        try:
            answer = self._send(self.repository, ITI43, body, tx)
        except TransportError as exc:
            return self._transport_fail(test, sec, step, tx, prep, exc)

        def documents_check(outcome: Outcome):
            return self._check_documents(test, sec, tx, prep, outcome, ref_metadata)

        return self._evaluate(test, sec, step, tx, prep, answer, ITI43, extra_checks=documents_check)

    def _check_documents(self, test, sec, tx, prep, outcome: Outcome, ref_metadata):
        failures: list[str] = []
        checks = 0
        docs: dict[str, tuple[bytes, str]] = {}
        for dr in outcome.payload.iter(f"{{{XDSB}}}DocumentResponse"):
            uid = (dr.findtext(f"{{{XDSB}}}DocumentUniqueId") or "").strip()
            raw = dr.findtext(f"{{{XDSB}}}Document") or ""
            try:
                content = base64.b64decode("".join(raw.split()), validate=True)
            except ValueError:
                failures.append(f"document {uid}: content is not base64")
                continue
            docs[uid] = (content, (dr.findtext(f"{{{XDSB}}}mimeType") or "").strip())
        for mime in tx.expected_mime_types:
            checks += 1
            wrong = sorted({m for _, m in docs.values() if m != mime})
            if not docs:
                failures.append(f"no document returned (ExpectedMimeType {mime})")
            elif wrong:
                failures.append(f"mimeType {', '.join(wrong)}, expected {mime}")
        for ref in tx.reference_documents:
            uid = ref.uid
            for old, new in prep.substitutions:
                uid = uid.replace(old, new)
            candidates = [sec.path / ref.file, sec.path.parent / ref.file]
            path = next((p for p in candidates if p.is_file()), None)
            if path is None:
                raise PlanProblem(f"ReferenceDocument {ref.file} is missing")
            checks += 1
            if uid not in docs:
                failures.append(f"document {uid} not returned")
            elif docs[uid][0] != path.read_bytes():
                failures.append(f"document {uid} differs from {ref.file} "
                                f"({len(docs[uid][0])} bytes returned, {path.stat().st_size} expected)")
        for rec in ref_metadata:
            m = ResponseMetadata(rec.result)
            for eo in m.extrinsic_objects:
                uid = next((ei.get("value") for ei in eo.iter(f"{{{RIM}}}ExternalIdentifier")
                            if ei.get("identificationScheme") == ctxmod.DE_UNIQUE_ID), None)
                if uid not in docs:
                    continue
                content, mime = docs[uid]
                checks += 1
                if eo.get("mimeType") and mime != eo.get("mimeType"):
                    failures.append(f"document {uid}: mimeType {mime}, metadata says {eo.get('mimeType')}")
                slots = {s.get("name"): (s.findtext(f"{{{RIM}}}ValueList/{{{RIM}}}Value") or "").strip()
                         for s in eo.findall(f"{{{RIM}}}Slot")}
                if slots.get("hash") and slots["hash"].lower() != hashlib.sha1(content).hexdigest():
                    failures.append(f"document {uid}: SHA-1 differs from the metadata hash")
                if slots.get("size") and slots["size"] != str(len(content)):
                    failures.append(f"document {uid}: size {len(content)}, metadata says {slots['size']}")
        return failures, [], checks

    def _patient_feed(self, test, sec, step, tx) -> StepResult:
        pid = tx.patient_id or self.ctx.patients.for_feed_test(test.name, tx.create_new_patient_id)
        self.ctx.patients.establish(test.name, pid)
        outcome = self.ctx.patients.ensure_fed(pid)
        reports = {"$patientid$": pid}
        if not outcome.sent:
            self.ctx.add_record(StepRecord(test.name, sec.name, step.id, tx.kind, "SKIP", True,
                                           reports=reports))
            return StepResult(test.name, sec.name, step.id, tx.kind, "SKIP",
                              [f"patient feed disabled (--patient-feed none); {pid} assumed known"])
        got = "Success" if outcome.ok else "Failure"
        ok = got in step.expected_status
        status = "PASS" if ok else "FAIL"
        self.ctx.add_record(StepRecord(test.name, sec.name, step.id, tx.kind, status, ok,
                                       reports=reports if ok else {}))
        msg = f"{pid}: {outcome.message}"
        if ok:
            return StepResult(test.name, sec.name, step.id, tx.kind, "PASS", [], [msg], checks=1)
        return StepResult(test.name, sec.name, step.id, tx.kind, "FAIL",
                          [f"feed {got}, expected {' or '.join(step.expected_status)}: {msg}"])

    def _null(self, test, sec, step, tx) -> StepResult:
        prep = Prepared(request=None)
        self._apply_use_reports(None, test, sec, tx, prep)
        self._apply_use_ids(None, test, sec, tx, prep)
        res = self._assertions(test, sec, tx, prep)
        if not res.failures and not res.checked and res.unchecked:
            # nothing this runner can evaluate: not a PASS
            raise Skip(f"no assertion could be checked: {', '.join(res.unchecked)}")
        status = "FAIL" if res.failures else "PASS"
        notes = [f"{res.checked} assertion(s) hold"] if res.checked else ["nothing to check"]
        self.ctx.add_record(StepRecord(test.name, sec.name, step.id, tx.kind, status, status == "PASS"))
        return StepResult(test.name, sec.name, step.id, tx.kind, status, res.failures, notes,
                          res.unchecked, checks=res.checked)
