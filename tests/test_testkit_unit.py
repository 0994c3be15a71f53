"""Unit tests of the NIST XDS Toolkit runner (``testkit``): plan parsing, linkage and
placeholder substitution, ebRIM 2.1 -> 3.0 conversion, expectation checking against
canned responses, and the runner end to end against a small fake SOAP endpoint (so a
PASS is shown to require what the plan expects, and a misbehaving endpoint FAILs).
"""
from __future__ import annotations

import argparse
import base64
import socket
import sys
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from lxml import etree

from testkit import cli as tk_cli
from testkit.context import (DE_PATIENT_ID, DE_UNIQUE_ID, SS_PATIENT_ID, SS_UNIQUE_ID,
                             DependencyError, FeedOutcome,
                             LinkageError, PatientIds, RunContext, StepRecord, assign_patient_id,
                             assign_unique_ids, assign_uuids, find_placeholders, replace_in_tree)
from testkit.ebrim21 import (LCM3, RIM3, ConversionError, convert_submit_objects_request,
                             is_ebrim21)
from testkit.expect import (Outcome, check_error_codes, check_error_messages,
                            check_expected_contents, check_schema, check_status,
                            evaluate_assertions, outcome_from_payload, schema_path)
from testkit.plan import (UseId, UseReport, load_test, order_with_dependencies, parse_testplan,
                          referenced_tests)
from testkit.report import Summary, format_line
from testkit.steps import CommandFeed, Endpoints, MllpFeed, Runner, StepResult, parse_feed_spec

REPO = Path(__file__).resolve().parents[1]
CORPUS_TESTS = REPO.parent / "shared" / "corpus" / "messages" / "nist-testkit" / "tests"
SCHEMA = schema_path()

RS = "urn:oasis:names:tc:ebxml-regrep:xsd:rs:3.0"
QUERY = "urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0"
SUCCESS = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Success"
FAILURE = "urn:oasis:names:tc:ebxml-regrep:ResponseStatusType:Failure"
APPROVED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Approved"
DEPRECATED = "urn:oasis:names:tc:ebxml-regrep:StatusType:Deprecated"
HAS_MEMBER = "urn:oasis:names:tc:ebxml-regrep:AssociationType:HasMember"
AA = "1.3.6.1.4.1.21367.2005.13.20.1000"

needs_corpus = pytest.mark.skipif(not CORPUS_TESTS.is_dir(), reason="../shared/corpus not available")


def xml(text: str) -> etree._Element:
    return etree.fromstring(text.encode())


# ------------------------------------------------------------------ fixtures: tiny tests

V21_SINGLE_DOC = """<rs:SubmitObjectsRequest xmlns:rs="urn:oasis:names:tc:ebxml-regrep:registry:xsd:2.1">
 <rim:LeafRegistryObjectList xmlns:rim="urn:oasis:names:tc:ebxml-regrep:rim:xsd:2.1">
  <rim:ObjectRef id="urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd"/>
  <rim:ExtrinsicObject id="Document01" objectType="urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1" mimeType="text/plain">
   <rim:Name><rim:LocalizedString value="DocA"/></rim:Name>
   <rim:Description/>
   <rim:Slot name="creationTime"><rim:ValueList><rim:Value>20061224</rim:Value></rim:ValueList></rim:Slot>
   <rim:Classification classificationScheme="urn:uuid:41a5887f-8865-4c09-adf7-e362475b143a" nodeRepresentation="X">
    <rim:Name><rim:LocalizedString value="x"/></rim:Name>
    <rim:Slot name="codingScheme"><rim:ValueList><rim:Value>1.2.3</rim:Value></rim:ValueList></rim:Slot>
   </rim:Classification>
   <rim:ExternalIdentifier value="$patientid$" identificationScheme="urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427">
    <rim:Name><rim:LocalizedString value="XDSDocumentEntry.patientId"/></rim:Name>
   </rim:ExternalIdentifier>
   <rim:ExternalIdentifier value="Document01" identificationScheme="urn:uuid:2e82c1f6-a085-4c72-9da3-8640a32e42ab">
    <rim:Name><rim:LocalizedString value="XDSDocumentEntry.uniqueId"/></rim:Name>
   </rim:ExternalIdentifier>
  </rim:ExtrinsicObject>
  <rim:RegistryPackage id="SubmissionSet01">
   <rim:Name><rim:LocalizedString value="SS"/></rim:Name>
   <rim:Slot name="submissionTime"><rim:ValueList><rim:Value>20041225235050</rim:Value></rim:ValueList></rim:Slot>
   <rim:ExternalIdentifier value="SubmissionSet01" identificationScheme="urn:uuid:96fdda7c-d067-4183-912e-bf5ee74998a8">
    <rim:Name><rim:LocalizedString value="XDSSubmissionSet.uniqueId"/></rim:Name>
   </rim:ExternalIdentifier>
   <rim:ExternalIdentifier value="1.3.6.1.4.1.21367.2008.1.2.178" identificationScheme="urn:uuid:554ac39e-e3fe-47fe-b233-965d2a147832">
    <rim:Name><rim:LocalizedString value="XDSSubmissionSet.sourceId"/></rim:Name>
   </rim:ExternalIdentifier>
   <rim:ExternalIdentifier value="$patientid$" identificationScheme="urn:uuid:6b5aea1a-874d-4603-a4bc-96a0a7b38446">
    <rim:Name><rim:LocalizedString value="XDSSubmissionSet.patientId"/></rim:Name>
   </rim:ExternalIdentifier>
  </rim:RegistryPackage>
  <rim:Classification classifiedObject="SubmissionSet01" classificationNode="urn:uuid:a54d6aa5-d40d-43f9-88c5-b4633d873bdd"/>
  <rim:Association targetObject="Document01" sourceObject="SubmissionSet01" associationType="HasMember">
   <rim:Slot name="SubmissionSetStatus"><rim:ValueList><rim:Value>Original</rim:Value></rim:ValueList></rim:Slot>
  </rim:Association>
 </rim:LeafRegistryObjectList>
</rs:SubmitObjectsRequest>
"""

SS_QUERY = """<query:AdhocQueryRequest xmlns:query="urn:oasis:names:tc:ebxml-regrep:xsd:query:3.0">
 <query:ResponseOption returnComposedObjects="true" returnType="LeafClass"/>
 <rim:AdhocQuery xmlns:rim="urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0" id="urn:uuid:e8e3cb2c-e39c-46b9-99e4-c12f57260b91">
  <rim:Slot name="$XDSSubmissionSetUniqueId"><rim:ValueList><rim:Value>'$ssuid$'</rim:Value></rim:ValueList></rim:Slot>
 </rim:AdhocQuery>
</query:AdhocQueryRequest>
"""


def write_test(root: Path, name: str, sections: dict[str, tuple[str, dict[str, str]]],
               collections: str = "") -> Path:
    """Create a toolkit test directory: {section: (testplan body, {file: content})}."""
    tdir = root / name
    tdir.mkdir(parents=True)
    (tdir / "index.idx").write_text("\n".join(sections) + "\n")
    if collections:
        (tdir / "collections.txt").write_text(collections + "\n")
    for sec, (plan, files) in sections.items():
        (tdir / sec).mkdir()
        (tdir / sec / "testplan.xml").write_text(f"<TestPlan><Test>{name}/{sec}</Test>{plan}</TestPlan>")
        for fname, content in files.items():
            (tdir / sec / fname).write_text(content)
    return tdir


PIF_PLAN = """<TestStep id="step"><ExpectedStatus>Success</ExpectedStatus>
 <PatientIdentityFeedTransaction><XDSb/><NoMetadata/></PatientIdentityFeedTransaction></TestStep>"""

REG_SUBMIT = """<TestStep id="submit"><ExpectedStatus>Success</ExpectedStatus>
 <RegisterTransaction><XDSb/>
  <UseReport reportName="$patientid$" test="PIF" section="pif" step="step" useAs="$patientid$"/>
  <AssignUuids/>
  <MetadataFile>single_doc.xml</MetadataFile>
  <Report name="ssuid" section="InputMetadata">
   //*[local-name()='RegistryPackage']/*[local-name()='ExternalIdentifier'][@identificationScheme='urn:uuid:96fdda7c-d067-4183-912e-bf5ee74998a8']/@value
  </Report>
 </RegisterTransaction></TestStep>"""

REG_EVAL = """<TestStep id="by_uid"><ExpectedStatus>Success</ExpectedStatus>
 <StoredQueryTransaction><XDSb/>
  <UseId testdir="../submit" id="SubmissionSet01" symbol="$ssuid$" step="submit" section="AssignedUids"/>
  <MetadataFile>query.xml</MetadataFile>
  <ExpectedContents><SSwithOneDoc/><DocApp/></ExpectedContents>
 </StoredQueryTransaction></TestStep>
 <TestStep id="verify"><NullTransaction>
  <UseReport reportName="ssuid" section="submit" step="submit" useAs="the_ssuid"/>
  <Assertions><DataRef file="THIS" as="output"/>
   <Assert id="approved">//*[local-name()='ExtrinsicObject']/@status = 'urn:oasis:names:tc:ebxml-regrep:StatusType:Approved'</Assert>
   <Assert id="ss_uid">//TestStep[@id='by_uid']//*[local-name()='RegistryPackage']/*[local-name()='ExternalIdentifier']/@value = 'the_ssuid'</Assert>
  </Assertions>
 </NullTransaction></TestStep>"""


@pytest.fixture()
def testkit_root(tmp_path: Path) -> Path:
    root = tmp_path / "tests"
    write_test(root, "PIF", {"pif": (PIF_PLAN, {})})
    write_test(root, "REG", {
        "submit": (REG_SUBMIT, {"single_doc.xml": V21_SINGLE_DOC}),
        "eval": (REG_EVAL, {"query.xml": SS_QUERY}),
    }, collections="reg")
    return root


# ------------------------------------------------------------------ fake XDS.b registry

class FakeRegistry:
    """Answers ITI-42 with Success and ITI-18 with the objects of the last submission
    (status Approved added).  Knobs make it misbehave in one way at a time."""

    def __init__(self) -> None:
        self.objects: list[etree._Element] = []
        self.requests: list[etree._Element] = []
        self.drop_associations = False
        self.wrong_action = False
        self.html_500 = False
        self.fault = False
        self.register_status = SUCCESS
        self.register_errors: list[tuple[str, str, str]] = []
        self.retrieve_documents: dict[str, bytes] = {}
        self.mtom = False
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/xds"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                env = etree.fromstring(body)
                ns = {"s": "http://www.w3.org/2003/05/soap-envelope", "a": "http://www.w3.org/2005/08/addressing"}
                action = env.findtext("s:Header/a:Action", namespaces=ns)
                payload = env.find("s:Body", ns)[0]
                fake.requests.append(payload)
                if fake.html_500:
                    return self._send(500, b"<html><body>Internal error</body></html>", "text/html")
                if fake.fault:
                    return self._envelope("http://www.w3.org/2005/08/addressing/soap/fault",
                                          '<env:Fault><env:Code><env:Value>env:Sender</env:Value></env:Code>'
                                          '<env:Reason><env:Text xml:lang="en">refused</env:Text></env:Reason>'
                                          '</env:Fault>', status=400)
                if action == "urn:ihe:iti:2007:RegisterDocumentSet-b":
                    rol = payload.find(f"{{{RIM3}}}RegistryObjectList")
                    fake.objects = [o for o in rol if isinstance(o.tag, str)]
                    errs = "".join(f'<rs:RegistryError errorCode="{c}" codeContext="{t}" severity="'
                                   f'urn:oasis:names:tc:ebxml-regrep:ErrorSeverityType:{s}"/>'
                                   for c, t, s in fake.register_errors)
                    errs = f"<rs:RegistryErrorList>{errs}</rs:RegistryErrorList>" if errs else ""
                    return self._envelope("urn:ihe:iti:2007:RegisterDocumentSet-bResponse",
                                          f'<rs:RegistryResponse xmlns:rs="{RS}" status="{fake.register_status}">'
                                          f"{errs}</rs:RegistryResponse>")
                if action == "urn:ihe:iti:2007:RegistryStoredQuery":
                    resp = etree.Element(f"{{{QUERY}}}AdhocQueryResponse", status=SUCCESS,
                                         nsmap={"query": QUERY, "rim": RIM3})
                    rol = etree.SubElement(resp, f"{{{RIM3}}}RegistryObjectList")
                    for o in fake.objects:
                        o = etree.fromstring(etree.tostring(o))
                        if fake.drop_associations and etree.QName(o).localname == "Association":
                            continue
                        if etree.QName(o).localname in ("ExtrinsicObject", "RegistryPackage", "Association"):
                            o.set("status", APPROVED)
                        rol.append(o)
                    action = "urn:wrong" if fake.wrong_action else "urn:ihe:iti:2007:RegistryStoredQueryResponse"
                    return self._envelope(action, etree.tostring(resp).decode())
                if action == "urn:ihe:iti:2007:RetrieveDocumentSet":
                    return self._retrieve(payload)
                return self._send(404, b"", "text/plain")

            def _retrieve(self, payload):
                xdsb = "urn:ihe:iti:xds-b:2007"
                parts, responses = {}, []
                for req in payload:
                    uid = req.findtext(f"{{{xdsb}}}DocumentUniqueId")
                    rep = req.findtext(f"{{{xdsb}}}RepositoryUniqueId")
                    data = fake.retrieve_documents.get(uid)
                    if data is None:
                        continue
                    if fake.mtom:
                        cid = f"doc{len(parts)}@example.org"
                        parts[cid] = data
                        content = f'<xop:Include xmlns:xop="http://www.w3.org/2004/08/xop/include" href="cid:{cid}"/>'
                    else:
                        content = base64.b64encode(data).decode()
                    responses.append(f"<xdsb:DocumentResponse><xdsb:RepositoryUniqueId>{rep}</xdsb:RepositoryUniqueId>"
                                     f"<xdsb:DocumentUniqueId>{uid}</xdsb:DocumentUniqueId>"
                                     f"<xdsb:mimeType>text/plain</xdsb:mimeType>"
                                     f"<xdsb:Document>{content}</xdsb:Document></xdsb:DocumentResponse>")
                body = (f'<xdsb:RetrieveDocumentSetResponse xmlns:xdsb="{xdsb}" xmlns:rs="{RS}">'
                        f'<rs:RegistryResponse status="{SUCCESS}"/>{"".join(responses)}'
                        f"</xdsb:RetrieveDocumentSetResponse>")
                env = self._envelope_bytes("urn:ihe:iti:2007:RetrieveDocumentSetResponse", body)
                if not fake.mtom:
                    return self._send(200, env, "application/soap+xml")
                boundary = "MIMEBoundary_" + uuid.uuid4().hex
                out = [f"--{boundary}\r\nContent-Type: application/xop+xml; type=\"application/soap+xml\"\r\n"
                       f"Content-ID: <root@example.org>\r\n\r\n".encode() + env + b"\r\n"]
                for cid, data in parts.items():
                    out.append(f"--{boundary}\r\nContent-Type: application/octet-stream\r\n"
                               f"Content-Transfer-Encoding: binary\r\nContent-ID: <{cid}>\r\n\r\n".encode()
                               + data + b"\r\n")
                out.append(f"--{boundary}--\r\n".encode())
                ctype = (f'multipart/related; boundary="{boundary}"; type="application/xop+xml"; '
                         f'start="<root@example.org>"; start-info="application/soap+xml"')
                return self._send(200, b"".join(out), ctype)

            def _envelope_bytes(self, action, body) -> bytes:
                return (f'<env:Envelope xmlns:env="http://www.w3.org/2003/05/soap-envelope" '
                        f'xmlns:wsa="http://www.w3.org/2005/08/addressing"><env:Header>'
                        f"<wsa:Action>{action}</wsa:Action></env:Header><env:Body>{body}</env:Body>"
                        f"</env:Envelope>").encode()

            def _envelope(self, action, body, status=200):
                return self._send(status, self._envelope_bytes(action, body), "application/soap+xml")

            def _send(self, status, data, ctype):
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler


def run_tests(root: Path, names: list[str], registry: str, repository: str | None = None,
              feed=None, **patients) -> list[StepResult]:
    ctx = RunContext(PatientIds(feed or (lambda cx: FeedOutcome(True, True, "fed")), AA, **patients))
    runner = Runner(ctx, Endpoints(registry, repository, timeout=10))
    try:
        results = []
        for n in names:
            results += runner.run_test(load_test(root / n))
        return results
    finally:
        runner.close()


def by_label(results: list[StepResult]) -> dict[str, StepResult]:
    return {r.label: r for r in results}


# ------------------------------------------------------------------ plan parsing

def test_plan_reads_steps_instructions_and_expectations(tmp_path: Path):
    plan = tmp_path / "testplan.xml"
    plan.write_text("""<TestPlan><Test>T/s</Test>
      <TestStep id="a"><Goal>g</Goal><ExpectedStatus>Failure</ExpectedStatus>
        <ExpectedErrorCode>XDSRegistryMetadataError</ExpectedErrorCode>
        <ExpectedErrorMessage>XDSPatientIdDoesNotMatch</ExpectedErrorMessage>
        <RegisterTransaction><XDSb/><NoPatientId/><NoAssignUids id="Document01"/><AssignUuids/>
          <UseId testdir="../x" id="Document01" symbol="$d$" step="s1" section="AssignedUuids"/>
          <UseReport reportName="r" test="15817" section="pif" step="step" useAs="$p$"/>
          <MetadataFile>m.xml</MetadataFile>
          <Report name="docid" section="InputMetadata"> //*[local-name()='ExtrinsicObject']/@id </Report>
          <WaitBefore>10</WaitBefore><Bogus/>
        </RegisterTransaction></TestStep>
      <TestStep id="b"><StoredQueryTransaction><XDSb/><MetadataFile>q.xml</MetadataFile>
        <ExpectedContents><Documents count="2"/></ExpectedContents>
        <Assertions><DataRef file="THIS" as="output"/><Assert id="x">1 = 1</Assert></Assertions>
      </StoredQueryTransaction></TestStep></TestPlan>""")
    sec = parse_testplan(plan, "T", "s")
    a, b = sec.steps
    assert a.expected_status == ["Failure"]
    assert a.expected_error_codes == ["XDSRegistryMetadataError"]
    assert a.expected_error_messages == ["XDSPatientIdDoesNotMatch"]
    tx = a.transaction
    assert tx.kind == "RegisterTransaction" and tx.xds_version == "b"
    assert not tx.assign_patient_id and tx.assign_uuids
    assert tx.assign_uids and tx.no_assign_uid_to == "Document01"
    assert tx.use_ids == [UseId("$d$", "Document01", "s1", "AssignedUuids", "../x")]
    assert tx.use_reports == [UseReport("r", "$p$", "pif", "step", "15817")]
    assert tx.reports[0].name == "docid" and tx.reports[0].xpath == "//*[local-name()='ExtrinsicObject']/@id"
    assert tx.wait_before_ms == 10
    assert tx.unknown == ["Bogus"]          # kept so the executor can refuse to PASS
    assert b.expected_status == ["Success"]  # the toolkit's default
    assert b.transaction.expected_contents is not None
    assert len(b.transaction.asserts) == 1 and len(b.transaction.data_refs) == 1


def test_load_test_follows_index_order_and_reports_missing_sections(tmp_path: Path):
    write_test(tmp_path, "T", {"b": (PIF_PLAN, {}), "a": (PIF_PLAN, {})})
    (tmp_path / "T" / "index.idx").write_text("b\n\na\nmissing\n")
    t = load_test(tmp_path / "T")
    assert [s.name for s in t.sections] == ["b", "a", "missing"]
    assert t.sections[2].error and "missing" in t.sections[2].error


@needs_corpus
def test_load_test_nist_12346_sections_in_index_order():
    t = load_test(CORPUS_TESTS / "12346")
    assert [s.name for s in t.sections] == ["single_doc", "doc_w_fol", "two_doc_w_fol", "doc_for_rplc", "rplc"]
    step = t.sections[0].steps[0]
    assert step.id == "submit_doc" and step.transaction.assign_uuids
    assert step.transaction.use_reports[0].test == "15818"


@needs_corpus
def test_dependencies_of_sq_test_put_loader_and_feed_first():
    assert referenced_tests(load_test(CORPUS_TESTS / "11898")) == ["12346"]
    order = [p.name for p in order_with_dependencies(["11898", "11990"], [CORPUS_TESTS])]
    assert order == ["15818", "12346", "11898", "15817", "11990"]


# ------------------------------------------------------------------ linkage and placeholders

def test_replace_in_tree_changes_text_tails_attributes_but_not_instructions_or_documents():
    root = xml('<r a="x$s$y"><v>$s$</v>tail $s$<Report>$s$</Report>'
               '<d:Document xmlns:d="urn:ihe:iti:xds-b:2007">$s$</d:Document></r>')
    replace_in_tree(root, "$s$", "V")
    assert root.get("a") == "xVy" and root.findtext("v") == "V"
    assert root.find("v").tail == "tail V"
    assert root.findtext("Report") == "$s$"
    assert root.findtext("{urn:ihe:iti:xds-b:2007}Document") == "$s$"
    assert find_placeholders(root) == ["$s$"]   # only inside Report (not a Document)


def test_find_placeholders_ignores_stored_query_parameter_names():
    root = xml('<Slot name="$XDSDocumentEntryPatientId"><Value>\'$pid$\'</Value></Slot>')
    assert find_placeholders(root) == ["$pid$"]


def _converted_single_doc() -> etree._Element:
    return convert_submit_objects_request(xml(V21_SINGLE_DOC))


def test_assign_patient_unique_ids_and_uuids_like_the_toolkit():
    root = _converted_single_doc()
    pid = f"P1^^^&{AA}&ISO"
    assert assign_patient_id(root, pid) == {"Document01": pid, "SubmissionSet01": pid}
    uids = assign_unique_ids(root, spare=None)
    assert set(uids) == {"Document01", "SubmissionSet01"}
    assert all(u.startswith("2.25.") and len(u) <= 64 for u in uids.values())
    uuids = assign_uuids(root)
    assert set(uuids) == {"Document01", "SubmissionSet01"}
    assoc = root.find(f".//{{{RIM3}}}Association")
    assert assoc.get("sourceObject") == uuids["SubmissionSet01"]
    assert assoc.get("targetObject") == uuids["Document01"]
    for ei in root.iter(f"{{{RIM3}}}ExternalIdentifier"):
        assert ei.get("registryObject").startswith("urn:uuid:")
        if ei.get("identificationScheme") in (DE_PATIENT_ID, SS_PATIENT_ID):
            assert ei.get("value") == pid


def test_no_assign_uids_id_spares_that_object():
    root = _converted_single_doc()
    uids = assign_unique_ids(root, spare="Document01")
    assert list(uids) == ["SubmissionSet01"]
    de_uid = [ei for ei in root.iter(f"{{{RIM3}}}ExternalIdentifier")
              if ei.get("identificationScheme") == DE_UNIQUE_ID][0]
    assert de_uid.get("value") == "Document01"


def test_assign_uuids_rejects_reference_to_undefined_symbol():
    root = _converted_single_doc()
    root.find(f".//{{{RIM3}}}Association").set("targetObject", "Nowhere")
    with pytest.raises(LinkageError, match="Nowhere"):
        assign_uuids(root)


def test_use_id_and_use_report_resolution_and_dependency_messages(tmp_path: Path):
    ctx = RunContext(PatientIds(lambda cx: FeedOutcome(True, True, "fed")))
    sec_a, sec_b = tmp_path / "T" / "a", tmp_path / "T" / "b"
    ctx.register_test("T", tmp_path / "T", [("a", sec_a), ("b", sec_b)])
    ctx.begin_section("T", "a")
    ctx.add_record(StepRecord("T", "a", "s1", "RegisterTransaction", "PASS", True,
                              assigned={"AssignedUuids": {"Document01": "urn:uuid:1"}},
                              reports={"docid": "urn:uuid:1"}))
    ctx.add_record(StepRecord("T", "a", "bad", "RegisterTransaction", "FAIL", False))
    ctx.add_record(StepRecord("T", "a", "skipped", "MuTransaction", "SKIP", False))
    use = UseId("$d$", "Document01", "s1", "AssignedUuids", "../a")
    assert ctx.resolve_use_id(use, sec_b, "T", "b") == "urn:uuid:1"
    assert ctx.resolve_use_report(UseReport("docid", "$d$", "a", "s1"), "T", "b") == "urn:uuid:1"
    assert ctx.resolve_use_report(UseReport("docid", "$d$", "THIS", "s1"), "T", "a") == "urn:uuid:1"
    with pytest.raises(DependencyError, match="depends on 15817/pif/step which has not run"):
        ctx.resolve_use_report(UseReport("$patientid$", "$p$", "pif", "step", "15817"), "T", "b")
    with pytest.raises(DependencyError, match="T/a/bad which failed"):
        ctx.resolve_use_report(UseReport("x", "$x$", "a", "bad"), "T", "b")
    with pytest.raises(DependencyError, match="which was skipped") as exc:
        ctx.resolve_use_report(UseReport("x", "$x$", "a", "skipped"), "T", "b")
    assert exc.value.skipped
    with pytest.raises(DependencyError, match="has no id 'Nope'"):
        ctx.resolve_use_id(UseId("$d$", "Nope", "s1", "AssignedUuids", "../a"), sec_b, "T", "b")
    with pytest.raises(DependencyError, match="12346/single_doc which has not run"):
        (tmp_path / "12346" / "single_doc").mkdir(parents=True)
        (tmp_path / "12346" / "index.idx").write_text("single_doc\n")
        ctx.resolve_use_id(UseId("$p$", "SubmissionSet01", "submit_doc", "AssignedPatientId",
                                 "../../12346/single_doc"), sec_b, "T", "b")


def test_patient_ids_fresh_per_feed_test_fed_once_and_overridable():
    fed = []
    ids = PatientIds(lambda cx: fed.append(cx) or FeedOutcome(True, True, "ok"), AA,
                     per_test={"15818": "SQ^^^&1.2&ISO"})
    a = ids.for_feed_test("15817")
    b = ids.for_feed_test("15817b")
    assert a != b and a.endswith(f"^^^&{AA}&ISO")
    assert ids.for_feed_test("15818") == "SQ^^^&1.2&ISO"
    ids.ensure_fed(a)
    ids.ensure_fed(a)
    assert fed == [a]
    pid, outcome = ids.for_test("11995")          # test without its own feed step
    assert outcome is not None and fed[-1] == pid
    assert ids.for_test("11995") == (pid, None)


# ------------------------------------------------------------------ ebRIM 2.1 conversion

def test_ebrim21_conversion_maps_types_ids_and_order():
    out = _converted_single_doc()
    assert out.tag == f"{{{LCM3}}}SubmitObjectsRequest"
    assert not is_ebrim21(out)
    rol = out.find(f"{{{RIM3}}}RegistryObjectList")
    kinds = [etree.QName(c).localname for c in rol]
    assert "ObjectRef" not in kinds      # reference to a well-known XDS node dropped
    eo = rol.find(f"{{{RIM3}}}ExtrinsicObject")
    order = [etree.QName(c).localname for c in eo]
    assert order == ["Slot", "Name", "Classification", "ExternalIdentifier", "ExternalIdentifier"]
    assoc = rol.find(f"{{{RIM3}}}Association")
    assert assoc.get("associationType") == HAS_MEMBER and assoc.get("id").startswith("urn:uuid:")
    cl = eo.find(f"{{{RIM3}}}Classification")
    assert cl.get("classifiedObject") == "Document01" and cl.get("id").startswith("urn:uuid:")


def test_ebrim21_conversion_of_rplc_status_and_kept_object_ref():
    src = xml('<rs:SubmitObjectsRequest xmlns:rs="urn:oasis:names:tc:ebxml-regrep:registry:xsd:2.1">'
              '<rim:LeafRegistryObjectList xmlns:rim="urn:oasis:names:tc:ebxml-regrep:rim:xsd:2.1">'
              '<rim:ExtrinsicObject id="D" objectType="urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1" '
              'mimeType="text/plain" status="Approved"/>'
              '<rim:Association sourceObject="D" targetObject="urn:uuid:x" associationType="RPLC"/>'
              '<rim:ObjectRef id="urn:uuid:x"/></rim:LeafRegistryObjectList></rs:SubmitObjectsRequest>')
    out = convert_submit_objects_request(src)
    rol = out.find(f"{{{RIM3}}}RegistryObjectList")
    assert rol.find(f"{{{RIM3}}}ExtrinsicObject").get("status") == APPROVED
    assert rol.find(f"{{{RIM3}}}Association").get("associationType") == "urn:ihe:iti:2007:AssociationType:RPLC"
    assert rol.find(f"{{{RIM3}}}ObjectRef").get("id") == "urn:uuid:x"


def test_ebrim21_unconvertible_inputs_raise():
    with pytest.raises(ConversionError, match="SQL"):
        convert_submit_objects_request(xml('<q:AdhocQueryRequest xmlns:q="urn:oasis:names:tc:ebxml-regrep:query:xsd:2.1"/>'))
    with pytest.raises(ConversionError, match="Organization"):
        convert_submit_objects_request(xml(
            '<rs:SubmitObjectsRequest xmlns:rs="urn:oasis:names:tc:ebxml-regrep:registry:xsd:2.1">'
            '<rim:LeafRegistryObjectList xmlns:rim="urn:oasis:names:tc:ebxml-regrep:rim:xsd:2.1">'
            '<rim:Organization id="o"/></rim:LeafRegistryObjectList></rs:SubmitObjectsRequest>'))


@needs_corpus
@pytest.mark.skipif(SCHEMA is None, reason="schemas missing")
def test_every_nist_ebrim21_file_converts_to_schema_valid_ebrim30():
    schema = etree.XMLSchema(etree.parse(str(SCHEMA)))
    files = [f for f in CORPUS_TESTS.rglob("*.xml") if b"xsd:2.1" in f.read_bytes()]
    assert len(files) > 200
    for f in files:
        out = convert_submit_objects_request(etree.parse(str(f)).getroot())
        assert schema.validate(out), f"{f}: {schema.error_log.last_error}"


# ------------------------------------------------------------------ expectations

def response(status=SUCCESS, errors=(), objects="") -> etree._Element:
    errs = "".join(f'<rs:RegistryError errorCode="{c}" codeContext="{t}" '
                   f'severity="urn:oasis:names:tc:ebxml-regrep:ErrorSeverityType:{s}"/>' for c, t, s in errors)
    errs = f"<rs:RegistryErrorList>{errs}</rs:RegistryErrorList>" if errs else ""
    return xml(f'<query:AdhocQueryResponse xmlns:query="{QUERY}" xmlns:rs="{RS}" xmlns:rim="{RIM3}" '
               f'status="{status}">{errs}<rim:RegistryObjectList>{objects}</rim:RegistryObjectList>'
               f"</query:AdhocQueryResponse>")


def eo(ident: str, status=APPROVED) -> str:
    return (f'<rim:ExtrinsicObject id="{ident}" status="{status}" mimeType="text/plain" '
            f'objectType="urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1"/>')


def ss(ident: str, status=APPROVED) -> str:
    return (f'<rim:RegistryPackage id="{ident}" status="{status}">'
            f'<rim:ExternalIdentifier id="urn:uuid:e{ident[-4:]}" registryObject="{ident}" '
            f'identificationScheme="{SS_UNIQUE_ID}" value="1.2.{len(ident)}"/></rim:RegistryPackage>')


def fol(ident: str, status=APPROVED) -> str:
    return (f'<rim:RegistryPackage id="{ident}" status="{status}"><rim:Classification id="urn:uuid:c{ident[-4:]}" '
            f'classifiedObject="{ident}" classificationNode="urn:uuid:d9d542f3-6cc4-48b6-8870-ea235fbc94c2"/>'
            f"</rim:RegistryPackage>")


def assoc(ident: str, src: str, tgt: str, kind=HAS_MEMBER) -> str:
    return f'<rim:Association id="{ident}" sourceObject="{src}" targetObject="{tgt}" associationType="{kind}"/>'


def contents(spec: str) -> etree._Element:
    return xml(f"<ExpectedContents>{spec}</ExpectedContents>")


def test_status_success_passes_and_error_or_bare_status_fails():
    assert check_status(["Success"], outcome_from_payload(response())) == []
    assert "status Failure" in check_status(["Success"], outcome_from_payload(response(FAILURE)))[0]
    err = outcome_from_payload(response(errors=[("XDSRegistryError", "boom", "Error")]))
    assert "severity Error" in check_status(["Success"], err)[0]
    warn = outcome_from_payload(response(errors=[("XDSExtraMetadataNotSaved", "x", "Warning")]))
    assert check_status(["Success"], warn) == []
    bare = outcome_from_payload(response("Success"))
    assert "not a ResponseStatusType URN" in check_status(["Success"], bare)[0]


def test_expected_fault_needs_a_real_fault():
    assert check_status(["Fault"], Outcome(fault="Sender: refused")) == []
    assert "expected a SOAP Fault" in check_status(["Fault"], outcome_from_payload(response()))[0]
    assert "SOAP Fault" in check_status(["Success"], Outcome(fault="Receiver: x"))[0]


def test_expected_error_code_and_message():
    out = outcome_from_payload(response(FAILURE, [("XDSPatientIdDoesNotMatch", "pid differs", "Error")]))
    assert check_status(["Failure"], out) == []
    assert check_error_codes(["XDSPatientIdDoesNotMatch"], out) == []
    assert "expected errorCode XDSUnknownPatientId" in check_error_codes(["XDSUnknownPatientId"], out)[0]
    assert check_error_messages(["XDSPatientIdDoesNotMatch"], out) == []
    assert check_error_messages(["pid differs"], out) == []
    assert check_error_messages(["other"], out)


def test_expected_contents_ss_with_one_doc_and_counts():
    good = outcome_from_payload(response(objects=eo("urn:uuid:d1") + ss("urn:uuid:s1")
                                         + assoc("urn:uuid:a1", "urn:uuid:s1", "urn:uuid:d1")))
    spec = contents('<SSwithOneDoc/><DocApp/><Documents count="1"/><SubmissionSets count="1"/>'
                    '<Associations count="1"/><Folders count="0"/>')
    assert check_expected_contents(spec, good) == ([], [])
    no_assoc = outcome_from_payload(response(objects=eo("urn:uuid:d1") + ss("urn:uuid:s1")))
    errors, _ = check_expected_contents(contents("<SSwithOneDoc/>"), no_assoc)
    assert any("found 0 Associations instead of 1" in e for e in errors)
    errors, _ = check_expected_contents(contents('<SubmissionSets count="5"/>'), good)
    assert errors == ["found 1 SubmissionSets instead of 5"]
    dep = outcome_from_payload(response(objects=eo("urn:uuid:d1", DEPRECATED)))
    assert check_expected_contents(contents("<DocDep/>"), dep)[0] == []
    assert check_expected_contents(contents("<DocApp/>"), dep)[0]


def test_expected_contents_folder_patterns_none_object_refs_and_unknown():
    objs = (eo("urn:uuid:d1") + ss("urn:uuid:s1") + fol("urn:uuid:f1")
            + assoc("urn:uuid:a1", "urn:uuid:s1", "urn:uuid:d1") + assoc("urn:uuid:a2", "urn:uuid:s1", "urn:uuid:f1")
            + assoc("urn:uuid:a3", "urn:uuid:f1", "urn:uuid:d1") + assoc("urn:uuid:a4", "urn:uuid:s1", "urn:uuid:a3"))
    out = outcome_from_payload(response(objects=objs))
    assert check_expected_contents(contents("<SSwithOneDocOneFol/><FolApp/>"), out) == ([], [])
    missing_ss_fd = outcome_from_payload(response(objects=objs.replace(
        assoc("urn:uuid:a4", "urn:uuid:s1", "urn:uuid:a3"), "")))
    assert check_expected_contents(contents("<SSwithOneDocOneFol/>"), missing_ss_fd)[0]
    empty = outcome_from_payload(response())
    assert check_expected_contents(contents("<None/>"), empty) == ([], [])
    refs = outcome_from_payload(response(objects='<rim:ObjectRef id="urn:uuid:1"/><rim:ObjectRef id="urn:uuid:2"/>'))
    assert check_expected_contents(contents('<ObjectRefs count="2"/>'), refs) == ([], [])
    assert check_expected_contents(contents('<ObjectRefs count="3"/>'), refs)[0]
    assert check_expected_contents(contents("<Mystery/>"), empty) == ([], ["Mystery"])


def test_expected_contents_document_entries_must_only_include():
    out = outcome_from_payload(response(objects=eo("urn:uuid:d1") + eo("urn:uuid:d2")))
    spec = contents('<DocumentEntries><MustOnlyInclude><DocumentEntry><UseId id="D" symbol="$x$"/>'
                    '<DocumentEntryType>urn:uuid:7edca82f-054d-47f2-a032-9b2a5b5186c1</DocumentEntryType>'
                    '</DocumentEntry></MustOnlyInclude></DocumentEntries>')
    errors, _ = check_expected_contents(spec, out, lambda use: "urn:uuid:d1")
    assert errors == ["response has 2 DocumentEntries, 1 of them expected"]
    single = outcome_from_payload(response(objects=eo("urn:uuid:d1")))
    assert check_expected_contents(spec, single, lambda use: "urn:uuid:d1") == ([], [])


def test_assertions_on_section_log_with_substitutions_date_and_simulator_plugins(tmp_path: Path):
    log = xml("<TestResults><TestStep id='q'><StoredQueryTransaction><Result>"
              f"{etree.tostring(response(objects=eo('urn:uuid:d1'))).decode()}"
              "</Result></StoredQueryTransaction></TestStep></TestResults>")
    asserts = [xml("<Assert id='a'>//TestStep[@id='q']//*[local-name()='ExtrinsicObject']/@id = 'DOC'</Assert>"),
               xml("<Assert id='b'>count(//*[local-name()='ExtrinsicObject']) = 2</Assert>"),
               xml("<Assert id='c'>string-length('$DATE$') = 8</Assert>"),
               xml("<Assert id='sim'><SimReference id='x'/><Validations type='SOAP'/></Assert>")]
    refs = [xml("<DataRef file='THIS' as='output'/>")]
    res = evaluate_assertions(asserts, refs, log, [tmp_path], [("DOC", "urn:uuid:d1")])
    assert res.checked == 3
    assert len(res.failures) == 1 and res.failures[0].startswith("assertion b is false")
    assert res.unchecked == ["sim(simulator validation: SimReference,Validations)"]
    missing = evaluate_assertions(asserts[:1], [xml("<DataRef file='nope.xml' as='x'/>")], log, [tmp_path], [])
    assert missing.checked == 0 and missing.unchecked


@pytest.mark.skipif(SCHEMA is None, reason="schemas missing")
def test_schema_check_flags_invalid_response():
    assert check_schema(response()) == ([], True)
    bad = xml(f'<query:AdhocQueryResponse xmlns:query="{QUERY}" status="{SUCCESS}"><oops/></query:AdhocQueryResponse>')
    errors, checked = check_schema(bad)
    assert checked and errors and "not schema-valid" in errors[0]


# ------------------------------------------------------------------ the runner against a fake endpoint

def test_runner_passes_a_conforming_registry_and_ids_flow_between_tests(testkit_root: Path):
    with FakeRegistry() as fake:
        results = run_tests(testkit_root, ["PIF", "REG"], fake.url)
    by = by_label(results)
    assert [r.status for r in results] == ["PASS"] * 4, [format_line(r) for r in results]
    assert by["REG/submit/submit"].ebrim21 == "converted"
    submitted = fake.requests[0]
    assert submitted.tag == f"{{{LCM3}}}SubmitObjectsRequest"
    pid_values = {ei.get("value") for ei in submitted.iter(f"{{{RIM3}}}ExternalIdentifier")
                  if ei.get("identificationScheme") in (DE_PATIENT_ID, SS_PATIENT_ID)}
    assert len(pid_values) == 1 and pid_values.pop().endswith(f"&{AA}&ISO")
    ss_uid = [ei.get("value") for ei in submitted.iter(f"{{{RIM3}}}ExternalIdentifier")
              if ei.get("identificationScheme") == SS_UNIQUE_ID][0]
    query = fake.requests[1]
    assert f"'{ss_uid}'" in etree.tostring(query).decode()     # UseId AssignedUids flowed
    assert find_placeholders(query) == []


def test_runner_fails_when_expected_contents_do_not_hold(testkit_root: Path):
    with FakeRegistry() as fake:
        fake.drop_associations = True
        results = run_tests(testkit_root, ["PIF", "REG"], fake.url)
    by = by_label(results)
    assert by["REG/eval/by_uid"].status == "FAIL"
    assert any("Associations" in r for r in by["REG/eval/by_uid"].reasons)


def test_runner_fails_on_wrong_response_action(testkit_root: Path):
    with FakeRegistry() as fake:
        fake.wrong_action = True
        results = run_tests(testkit_root, ["PIF", "REG"], fake.url)
    r = by_label(results)["REG/eval/by_uid"]
    assert r.status == "FAIL" and "wsa:Action" in r.reasons[0]


def test_runner_expected_failure_needs_failure_status_and_error_code(tmp_path: Path):
    plan = REG_SUBMIT.replace("<ExpectedStatus>Success</ExpectedStatus>",
                              "<ExpectedStatus>Failure</ExpectedStatus>"
                              "<ExpectedErrorCode>XDSRegistryMetadataError</ExpectedErrorCode>")
    root = tmp_path / "tests"
    write_test(root, "PIF", {"pif": (PIF_PLAN, {})})
    write_test(root, "NEG", {"submit": (plan, {"single_doc.xml": V21_SINGLE_DOC})})
    with FakeRegistry() as fake:        # accepts everything: must FAIL
        assert by_label(run_tests(root, ["PIF", "NEG"], fake.url))["NEG/submit/submit"].status == "FAIL"
    with FakeRegistry() as fake:        # rejects with the expected code: PASS
        fake.register_status = FAILURE
        fake.register_errors = [("XDSRegistryMetadataError", "bad", "Error")]
        assert by_label(run_tests(root, ["PIF", "NEG"], fake.url))["NEG/submit/submit"].status == "PASS"
    with FakeRegistry() as fake:        # rejects with another code: FAIL
        fake.register_status = FAILURE
        fake.register_errors = [("XDSRegistryError", "bad", "Error")]
        r = by_label(run_tests(root, ["PIF", "NEG"], fake.url))["NEG/submit/submit"]
        assert r.status == "FAIL" and "XDSRegistryMetadataError" in r.reasons[0]


def test_runner_expected_fault_is_not_satisfied_by_an_http_error_page(tmp_path: Path):
    plan = REG_SUBMIT.replace("<ExpectedStatus>Success</ExpectedStatus>", "<ExpectedStatus>Fault</ExpectedStatus>")
    root = tmp_path / "tests"
    write_test(root, "PIF", {"pif": (PIF_PLAN, {})})
    write_test(root, "FLT", {"submit": (plan, {"single_doc.xml": V21_SINGLE_DOC})})
    with FakeRegistry() as fake:
        fake.html_500 = True
        r = by_label(run_tests(root, ["PIF", "FLT"], fake.url))["FLT/submit/submit"]
        assert r.status == "FAIL" and "transport error" in r.reasons[0]
    with FakeRegistry() as fake:
        fake.fault = True
        assert by_label(run_tests(root, ["PIF", "FLT"], fake.url))["FLT/submit/submit"].status == "PASS"


def test_runner_missing_dependency_fails_and_skips_propagate(testkit_root: Path, tmp_path: Path):
    with FakeRegistry() as fake:
        results = run_tests(testkit_root, ["REG"], fake.url)       # PIF not run
    by = by_label(results)
    assert by["REG/submit/submit"].status == "FAIL"
    assert by["REG/submit/submit"].reasons == ["depends on PIF/pif/step which has not run"]
    assert "REG/submit/submit which failed" in by["REG/eval/by_uid"].reasons[0]
    # an unsupported state-changing step makes the rest of its test SKIP, not FAIL
    root = tmp_path / "mu"
    write_test(root, "PIF", {"pif": (PIF_PLAN, {})})
    write_test(root, "MU", {
        "submit": (REG_SUBMIT, {"single_doc.xml": V21_SINGLE_DOC}),
        "update": ('<TestStep id="u"><MuTransaction><XDSb/><MetadataFile>x.xml</MetadataFile></MuTransaction></TestStep>', {}),
        "eval": (REG_EVAL, {"query.xml": SS_QUERY}),
    })
    with FakeRegistry() as fake:
        by = by_label(run_tests(root, ["PIF", "MU"], fake.url))
    assert by["MU/update/u"].status == "SKIP" and "not supported" in by["MU/update/u"].reasons[0]
    assert by["MU/eval/by_uid"].status == "SKIP" and "follows skipped step MU/update/u" in by["MU/eval/by_uid"].reasons[0]


def test_runner_unchecked_assertions_are_named_on_a_pass(tmp_path: Path):
    plan = REG_EVAL.replace("<DocApp/>", "<DocApp/><Mystery/>")
    root = tmp_path / "tests"
    write_test(root, "PIF", {"pif": (PIF_PLAN, {})})
    write_test(root, "REG", {"submit": (REG_SUBMIT, {"single_doc.xml": V21_SINGLE_DOC}),
                             "eval": (plan, {"query.xml": SS_QUERY})})
    with FakeRegistry() as fake:
        r = by_label(run_tests(root, ["PIF", "REG"], fake.url))["REG/eval/by_uid"]
    assert r.status == "PASS" and r.unchecked == ["Mystery"]
    assert "(1 assertion not checked: Mystery)" in format_line(r)
    summary = Summary([r])
    assert summary.unchecked == 1 and summary.passed_with_unchecked == 1


def test_runner_repository_steps_skip_without_repository(tmp_path: Path):
    root = tmp_path / "tests"
    plan = ('<TestStep id="submit"><ExpectedStatus>Success</ExpectedStatus><ProvideAndRegisterTransaction>'
            '<XDSb/><MetadataFile>m.xml</MetadataFile><Document id="Document01">d.txt</Document>'
            '</ProvideAndRegisterTransaction></TestStep>')
    write_test(root, "PNR", {"submit": (plan, {"m.xml": V21_SINGLE_DOC, "d.txt": "hello"})})
    with FakeRegistry() as fake:
        r = run_tests(root, ["PNR"], fake.url)[0]
    assert r.status == "SKIP" and r.reasons == ["repository not configured (--repository)"]


@pytest.mark.parametrize("mtom", [False, True])
def test_retrieve_reads_plain_and_mtom_answers_and_compares_documents(tmp_path: Path, mtom: bool):
    root = tmp_path / "tests"
    request = ('<xdsb:RetrieveDocumentSetRequest xmlns:xdsb="urn:ihe:iti:xds-b:2007"><xdsb:DocumentRequest>'
               '<xdsb:RepositoryUniqueId>1.2.3</xdsb:RepositoryUniqueId>'
               '<xdsb:DocumentUniqueId>$uid$</xdsb:DocumentUniqueId></xdsb:DocumentRequest>'
               '</xdsb:RetrieveDocumentSetRequest>')
    plan = ('<TestStep id="r"><ExpectedStatus>Success</ExpectedStatus><RetrieveTransaction><XDSb/>'
            '<UseId symbol="$uid$" value="1.2.3.4"/><MetadataFile>q.xml</MetadataFile>'
            '<ExpectedMimeType>text/plain</ExpectedMimeType>'
            '<ReferenceDocument uid="$uid$">doc.txt</ReferenceDocument></RetrieveTransaction></TestStep>')
    write_test(root, "RET", {"retrieve": (plan, {"q.xml": request, "doc.txt": "the content\n"})})
    with FakeRegistry() as fake:
        fake.mtom = mtom
        fake.retrieve_documents["1.2.3.4"] = b"the content\n"
        assert run_tests(root, ["RET"], fake.url, repository=fake.url)[0].status == "PASS"
        fake.retrieve_documents["1.2.3.4"] = b"other content"
        r = run_tests(root, ["RET"], fake.url, repository=fake.url)[0]
        assert r.status == "FAIL" and "differs from doc.txt" in r.reasons[0]


# ------------------------------------------------------------------ patient feeds

def test_command_feed_runs_without_shell_and_reports_exit_status(tmp_path: Path):
    out = tmp_path / "fed.txt"
    ok = CommandFeed(f"{sys.executable} -c 'import sys; open(sys.argv[1], \"w\").write(sys.argv[2])' {out} {{cx}}")
    cx = f"X^^^&{AA}&ISO"
    assert ok(cx).ok and out.read_text() == cx          # & and ^ reach the command intact
    bad = CommandFeed(f"{sys.executable} -c 'import sys; sys.exit(3)' {{cx}}")
    result = bad(cx)
    assert result.sent and not result.ok and "exited 3" in result.message
    with pytest.raises(ValueError):
        CommandFeed("opendmp patient add")              # no {cx}


def test_feed_spec_parsing():
    assert parse_feed_spec("none").describe().startswith("none")
    assert isinstance(parse_feed_spec("mllp://127.0.0.1:2575"), MllpFeed)
    with pytest.raises(ValueError):
        parse_feed_spec("http://x")


def test_mllp_feed_sends_a01_with_the_patient_id_and_reads_the_ack():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    received = []

    def serve():
        conn, _ = srv.accept()
        data = b""
        while b"\x1c\r" not in data:
            data += conn.recv(4096)
        received.append(data)
        conn.sendall(b"\x0bMSH|^~\\&|PIX|X|||20240101||ACK^A01|1|P|2.3\rMSA|AA|1\r\x1c\r")
        conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    feed = MllpFeed("127.0.0.1", srv.getsockname()[1])
    cx = f"ABC^^^&{AA}&ISO"
    outcome = feed(cx)
    t.join(5)
    srv.close()
    assert outcome.ok, outcome.message
    msg = received[0].decode()
    assert "ADT^A01" in msg and f"PID|||{cx}|" in msg and "$pid$" not in msg


def test_mllp_feed_connection_refused_is_a_failed_feed():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    outcome = MllpFeed("127.0.0.1", port)("X^^^&1.2&ISO")
    assert outcome.sent and not outcome.ok and "cannot connect" in outcome.message


# ------------------------------------------------------------------ command line

def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="opendmp")
    sub = parser.add_subparsers(dest="command", required=True)
    tk_cli.register(sub)
    return parser.parse_args(argv)


def test_cli_run_exit_codes_and_lines(testkit_root: Path, capsys):
    with FakeRegistry() as fake:
        args = _parse(["testkit", "run", str(testkit_root / "PIF"), str(testkit_root / "REG"),
                       "--registry", fake.url, "--patient-feed", f"cmd:{sys.executable} -c pass {{cx}}"])
        assert args.func(args) == 0
        out = capsys.readouterr().out
        assert "PASS  REG/eval/by_uid  StoredQueryTransaction" in out
        assert "Summary: 4 steps: 4 passed, 0 failed, 0 skipped" in out
        fake.drop_associations = True
        args = _parse(["testkit", "run", "REG", "--testkit", str(testkit_root), "--with-dependencies",
                       "--registry", fake.url, "--patient-feed", "none"])
        assert args.func(args) == 1
        out = capsys.readouterr().out
        assert "SKIP  PIF/pif/step  PatientIdentityFeedTransaction  patient feed disabled" in out
        assert "FAIL  REG/eval/by_uid" in out


def test_cli_collection_and_usage_errors(testkit_root: Path, capsys):
    with FakeRegistry() as fake:
        args = _parse(["testkit", "run", "--testkit", str(testkit_root), "--collection", "reg",
                       "--registry", fake.url, "--patient-id", f"PIF=FIXED^^^&{AA}&ISO"])
        assert args.func(args) == 0
        assert fake.requests and f"FIXED^^^&amp;{AA}&amp;ISO" in etree.tostring(fake.requests[0]).decode()
    capsys.readouterr()
    assert tk_cli.run(_parse(["testkit", "run", "nope", "--registry", "http://x"])) == 2
    assert tk_cli.run(_parse(["testkit", "run", str(testkit_root / "REG")])) == 2
