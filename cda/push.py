"""Push CDA documents to a repository (ITI-41 with MTOM) with metadata derived from their
headers: ``opendmp push FILE...`` and :func:`push` for lab systems written in Python.

One ITI-41 transaction per document (so one bad document does not hold back the others
and each result is reported on its own): a SubmissionSet for the document's patient,
authored as the document, with the DocumentEntry of :func:`cda.metadata.document_entry`.
"""
from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from registry import vocabulary as V
from registry.model import Association, Code, Slot, Submission, SubmissionSet
from repository.source import DocumentContent, provide_and_register
from soapstack.client import SoapClient
from soapstack.namespaces import RS

from .document import CdaError, utc_now_dtm
from .metadata import Facility, MetadataError, derive


@dataclass
class PushResult:
    source: str                      # file name or caller's label
    ok: bool
    unique_id: str | None = None
    patient_id: str | None = None
    status: str | None = None        # Success / Failure / PartialSuccess / not sent
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def line(self) -> str:
        what = f"{self.status}" + (f" uniqueId={self.unique_id}" if self.unique_id else "")
        notes = "; ".join(self.errors + [f"warning: {w}" for w in self.warnings])
        return f"{self.source}: {what}" + (f" — {notes}" if notes else "")


def default_source_id() -> str:
    """``OPENDMP_SOURCE_ID``, else an OID stable for this host (2.25 + UUIDv5 of its name)."""
    configured = (os.environ.get("OPENDMP_SOURCE_ID") or "").strip()
    return configured or f"2.25.{uuid.uuid5(uuid.NAMESPACE_DNS, socket.getfqdn()).int}"


def submission_for(data: bytes, facility: Facility | None = None,
                   source_id: str | None = None) -> Submission:
    """The ITI-41 metadata of one CDA document (raises MetadataError / CdaError)."""
    _, de = derive(data, facility)
    ss = SubmissionSet(
        id=f"urn:uuid:{uuid.uuid4()}",
        unique_id=f"2.25.{uuid.uuid4().int}",
        source_id=source_id or default_source_id(),
        patient_id=de.patient_id,
        submission_time=utc_now_dtm(),
        content_type_code=Code(de.type_code.code, de.type_code.scheme, list(de.type_code.display)),
        authors=list(de.authors[:1]),
    )
    link = Association(id=f"urn:uuid:{uuid.uuid4()}", type=V.HAS_MEMBER, source=ss.id,
                       target=de.id, extra_slots=[Slot("SubmissionSetStatus", ["Original"])])
    return Submission(submission_sets=[ss], documents=[de], associations=[link])


def push_one(client: SoapClient, data: bytes, label: str = "document",
             facility: Facility | None = None, source_id: str | None = None,
             validate: bool = False, signer=None) -> PushResult:
    """Derive, (optionally) validate, (optionally) sign the submission set with
    ``signer`` (a :class:`xua.dsg.Signer`: IHE DSG, XAdES), send; never raises for a
    document problem."""
    if validate:
        from .validation import validate as run_validation
        report = run_validation(data)
        if not report.valid:
            return PushResult(label, False, status="not sent",
                              errors=[str(f) for f in report.errors()][:10])
    try:
        sub = submission_for(data, facility, source_id)
    except (MetadataError, CdaError) as exc:
        return PushResult(label, False, status="not sent", errors=[str(exc)])
    de = sub.documents[0]
    contents = {de.id: DocumentContent.of(data, "text/xml")}
    if signer is not None:
        from xua.dsg import sign_submission

        sig, signature = sign_submission(sub, {de.id: data}, signer)
        contents[sig.id] = DocumentContent.of(signature, "text/xml")
    try:
        reply = provide_and_register(client, sub, contents)
    except Exception as exc:  # noqa: BLE001 - transport problems are reported per document
        return PushResult(label, False, de.unique_id, de.patient_id, "not sent",
                          [f"{type(exc).__name__}: {exc}"])
    try:
        response = reply.payload
        if response.tag != f"{{{RS}}}RegistryResponse":
            response = response.find(f".//{{{RS}}}RegistryResponse")
        status = (response.get("status") or "").rsplit(":", 1)[-1]
        errors, warnings = [], []
        for e in response.iter(f"{{{RS}}}RegistryError"):
            text = f"{e.get('errorCode')}: {e.get('codeContext')}"
            (warnings if (e.get("severity") or "").endswith("Warning") else errors).append(text)
    finally:
        reply.close()
    return PushResult(label, status == "Success", de.unique_id, de.patient_id, status,
                      errors, warnings)


def push(url: str, documents: Iterable[tuple[str, bytes]], facility: Facility | None = None,
         source_id: str | None = None, validate: bool = False,
         progress: Callable[[int, PushResult], None] | None = None,
         signer=None) -> list[PushResult]:
    """Push ``(label, bytes)`` documents to the repository at ``url`` (its ITI-41
    endpoint, e.g. ``http://127.0.0.1:8080/xds/repository``); with ``signer`` each
    submission set is signed (:func:`xua.dsg.sign_submission`)."""
    client = SoapClient(url)
    results = []
    try:
        for n, (label, data) in enumerate(documents, 1):
            result = push_one(client, data, label, facility, source_id, validate, signer)
            results.append(result)
            if progress is not None:
                progress(n, result)
    finally:
        client.close()
    return results


def push_files(url: str, paths: list[str | Path], **kw) -> list[PushResult]:
    return push(url, ((str(p), Path(p).read_bytes()) for p in paths), **kw)
