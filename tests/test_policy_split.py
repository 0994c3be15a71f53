"""The access policy (opendmp/policy.py) in a split deployment: a repository in front of
a remote registry (``OPENDMP_REGISTRY_URL``). Its own registry tables know none of the
documents; ITI-43 under a VIHF assertion naming a patient (resource-id) is decided by the
patient the repository's index recorded at ITI-41, followed through the PIX merges this
node knows. Real servers (registry node, repository node with its MLLP PIX listener),
SQLite and PostgreSQL.
"""
from __future__ import annotations

import factory as F
import pytest
from harness.postgres import free_port
from lxml import etree
from pixclient import LOCAL, NIA, NIR, adt, cx, new_ins, new_local, send1
from test_pix_server import _wait_listening
from test_policy_server import _refused, _retrieve
from xds import NS, find_documents, status

from registry.hl7types import parse_cx
from repository.source import DocumentContent, provide_and_register
from soapstack.client import SoapClient
from xua.idp import VihfClaims, issue


@pytest.fixture(scope="module")
def split(module_server_factory):
    """(registry node, repository node whose registry is the first's)."""
    registry_node = module_server_factory()
    mllp = free_port("127.0.0.1")
    repository_node = module_server_factory(env={
        "OPENDMP_REGISTRY_URL": registry_node.url("/xds/registry"),
        "OPENDMP_MLLP_PORT": str(mllp),
        "OPENDMP_PIX_DOMAINS": f"HOSP&{LOCAL}&ISO",
    })
    repository_node.mllp_port = mllp
    _wait_listening(mllp)
    return registry_node, repository_node


def _store(registry_node, repository_node, patient: str) -> tuple[str, bytes]:
    """ITI-41 at the repository node (no assertion): (uniqueId, bytes); the document is
    registered at the registry node only."""
    content = f"<doc>{patient}</doc>".encode()
    sub = F.submission(patient, content=content)
    de = sub.documents[0]
    de.hash = de.size = de.repository_unique_id = None
    reply = provide_and_register(SoapClient(repository_node.url("/xds/repository")), sub,
                                 {de.id: DocumentContent.of(content, "text/xml")})
    try:
        assert status(reply.payload) == "Success", etree.tostring(reply.payload)[:1000]
    finally:
        reply.close()
    canonical = parse_cx(patient).canonical
    assert find_documents(registry_node, canonical).xpath("//rim:ExtrinsicObject", namespaces=NS)
    return de.unique_id, content


def _assertion(node, ins: str, oid: str):
    return issue(node.home, VihfClaims(ins=ins, ins_oid=oid))


def _for(node, patient: str):
    ins, _, _, authority = patient.split("^")[:4]
    return _assertion(node, ins, authority.split("&")[1])


def test_iti43_through_a_remote_registry_serves_the_patients_documents_only(split):
    registry_node, repo = split
    mine, other = F.new_ins(), F.new_ins()
    for p in (mine, other):
        assert registry_node.run_cli(["patient", "add", p]).returncode == 0
    my_uid, my_bytes = _store(registry_node, repo, mine)
    their_uid, their_bytes = _store(registry_node, repo, other)
    # the repository node's own registry does not know the documents: before the index
    # recorded the patient, every patient-scoped retrieve here was refused
    assert not find_documents(repo, parse_cx(mine).canonical).xpath("//rim:ExtrinsicObject",
                                                                    namespaces=NS)
    assertion = _for(repo, mine)
    assert _retrieve(repo, assertion, [my_uid]) == ("Success", [my_bytes])
    fault = _refused(lambda: _retrieve(repo, assertion, [their_uid]))
    assert fault.subcode.endswith("FailedAuthentication") and "another patient" in fault.reason
    assert other.split("^")[0] not in fault.reason
    fault = _refused(lambda: _retrieve(repo, assertion, [my_uid, their_uid]))
    assert fault.subcode.endswith("FailedAuthentication")
    # the other patient's own assertion reaches their document
    assert _retrieve(repo, _for(repo, other), [their_uid]) == ("Success", [their_bytes])
    # unknown document: still XDSDocumentUniqueIdError, not a refusal
    assert _retrieve(repo, assertion, [F.new_oid()]) == ("Failure", [])


def test_iti43_through_a_remote_registry_follows_a_pix_merge_this_node_knows(split):
    """NIA replaced by the NIR (ITI-8 A40) after the document was stored under the NIA:
    the survivor's assertion reaches it, the subsumed identifier's no longer does — as
    the registry answers after the same merge (registry.store.merge_patient)."""
    registry_node, repo = split
    nia = new_ins(sex="F", year=1990, month=7, nia=True)
    nir = new_ins(sex="F", year=1990, month=7)
    nia_cx = f"{nia}^^^&{NIA}&ISO^NH"
    assert registry_node.run_cli(["patient", "add", nia_cx]).returncode == 0
    fed = send1(repo.mllp_port, adt("A01", f"{cx(new_local(), LOCAL, 'HOSP')}~{cx(nia, NIA)}",
                                    name="ROUX^LEA^^^^^L", dob="19900704", sex="F"))
    assert fed.msa == "AA", fed
    uid, content = _store(registry_node, repo, nia_cx)
    assert _retrieve(repo, _assertion(repo, nia, NIA), [uid]) == ("Success", [content])
    assert _refused(lambda: _retrieve(repo, _assertion(repo, nir, NIR), [uid])) \
        .subcode.endswith("FailedAuthentication")
    merged = send1(repo.mllp_port, adt("A40", cx(nir, NIR), mrg=cx(nia, NIA),
                                       name="ROUX^LEA^^^^^L", dob="19900704", sex="F"))
    assert merged.msa == "AA", merged
    assert _retrieve(repo, _assertion(repo, nir, NIR), [uid]) == ("Success", [content])
    fault = _refused(lambda: _retrieve(repo, _assertion(repo, nia, NIA), [uid]))
    assert fault.subcode.endswith("FailedAuthentication")
