"""ITI-41: a CDA document must tell the same story as its DocumentEntry.

The repository (``repository/iti41.py``) gives every document to :class:`Intake` while
it streams it into the store. Documents whose mimeType is not XML are not looked at
(one string comparison); XML documents are read as they arrive by
:class:`cda.stream.CdaStream`: if the root is ``ClinicalDocument``, only its header is
parsed (safe settings; a header over ``OPENDMP_CDA_HEADER_MAX_BYTES``, 1 MiB, is
refused), whatever the document's size, and compared with the metadata: patient,
uniqueId, typeCode, creationTime, confidentiality, author. A disagreement is
``XDSRepositoryMetadataError`` naming it (``OPENDMP_CDA_CHECK=strict``, the default), a
warning in the RegistryResponse (``warn``), or nothing (``off``).

After a successful registration the intake also files the document's structured facts
in the patient summary (:mod:`cda.summary`): they are collected while a structured body
streams in, entry by entry, up to ``OPENDMP_CDA_SUMMARY_MAX_BYTES`` (16 MiB); a
nonXMLBody is never parsed.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Mapping


from registry import errors as E
from registry.hl7types import HL7TypeError, parse_cx
from registry.model import DocumentEntry

from .document import CdaError, CdaHeader, ts_to_dtm
from .stream import HEADER_LIMIT, SUMMARY_LIMIT, CdaStream

log = logging.getLogger("opendmp.cda")

STRICT, WARN, OFF = "strict", "warn", "off"
REPOSITORY_METADATA_ERROR = "XDSRepositoryMetadataError"
_XML_TYPES = ("text/xml", "application/xml", "application/hl7-v3+xml")


def mode_from_env(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    mode = (env.get("OPENDMP_CDA_CHECK") or STRICT).strip().lower()
    if mode not in (STRICT, WARN, OFF):
        raise ValueError(f"OPENDMP_CDA_CHECK={mode!r}: expected strict, warn or off")
    return mode


# ---------------------------------------------------------------------------- comparison

def disagreements(header: CdaHeader, de: DocumentEntry) -> list[str]:
    """What the DocumentEntry says that the CDA header contradicts (readable, one per field)."""
    out = []
    ins = header.patient.ins
    if de.patient_id:
        try:
            submitted = parse_cx(de.patient_id)
        except HL7TypeError:
            submitted = None
        ids = {(i.extension, i.root) for i in header.patient.ids}
        if submitted is not None and (submitted.id, submitted.universal_id) not in ids:
            shown = f"{ins.extension} ({ins.root})" if ins else "no INS"
            out.append(f"patient: metadata {submitted.canonical} is not the document's "
                       f"recordTarget ({shown})")
    if header.unique_id and de.unique_id and de.unique_id != header.unique_id:
        out.append(f"uniqueId: metadata {de.unique_id} is not the document's id "
                   f"{header.unique_id}")
    if header.code is not None and de.type_code is not None and \
            (de.type_code.code, de.type_code.scheme) != (header.code.code, header.code.system):
        out.append(f"typeCode: metadata {de.type_code.code} ({de.type_code.scheme}) is not the "
                   f"document's code {header.code.code} ({header.code.system})")
    created = ts_to_dtm(header.effective_time)
    if created and de.creation_time:
        n = min(len(created), len(de.creation_time))
        if de.creation_time[:n] != created[:n]:
            out.append(f"creationTime: metadata {de.creation_time} is not the document's "
                       f"effectiveTime {header.effective_time} (UTC {created})")
    conf = header.confidentiality
    if conf is not None and de.confidentiality_codes and \
            conf.code not in {c.code for c in de.confidentiality_codes}:
        out.append(f"confidentialityCode: metadata "
                   f"{', '.join(c.code for c in de.confidentiality_codes)} does not include the "
                   f"document's {conf.code}")
    doc_authors = {a.national_id.extension for a in header.authors if a.national_id}
    meta_authors = {(a.person or "").split("^")[0] for a in de.authors if a.person}
    meta_authors.discard("")
    if doc_authors and meta_authors and not (doc_authors & meta_authors):
        out.append(f"author: metadata author(s) {', '.join(sorted(meta_authors))} are not the "
                   f"document's author(s) {', '.join(sorted(doc_authors))}")
    return out


# ---------------------------------------------------------------------------- the ITI-41 hook

class Sniffer:
    """One XML document's bytes, read as they are stored (:class:`cda.stream.CdaStream`):
    the header of a ``ClinicalDocument`` only, plus the summary facts of a structured
    body; anything else is let through after its prolog."""

    __slots__ = ("entry", "stream")

    def __init__(self, entry: DocumentEntry, stream: CdaStream) -> None:
        self.entry, self.stream = entry, stream

    def feed(self, chunk: bytes) -> None:
        self.stream.feed(chunk)

    def result(self) -> tuple[CdaHeader | None, list | None]:
        """(header, summary facts); header None when the document is not a CDA. Raises
        :class:`CdaError` when the CDA's header cannot be read safely."""
        return self.stream.result()


@dataclass
class Intake:
    """Per ITI-41 request: cross-checks CDA documents, collects warnings, and files
    summaries after registration."""

    mode: str = STRICT
    header_limit: int = HEADER_LIMIT
    summary_limit: int = SUMMARY_LIMIT
    warnings: list = field(default_factory=list)
    documents: list = field(default_factory=list)  # (DocumentEntry, CdaHeader, facts | None)
    summaries: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Intake":
        env = os.environ if env is None else env
        try:
            mode = mode_from_env(env)
        except ValueError as exc:
            log.error("%s; checking strictly", exc)
            mode = STRICT
        return cls(mode=mode,
                   header_limit=int(env.get("OPENDMP_CDA_HEADER_MAX_BYTES", HEADER_LIMIT)),
                   summary_limit=int(env.get("OPENDMP_CDA_SUMMARY_MAX_BYTES", SUMMARY_LIMIT)),
                   summaries=(env.get("OPENDMP_CDA_SUMMARY", "on").lower() != "off"))

    def sniffer(self, de: DocumentEntry) -> Sniffer | None:
        """A collector for ``de``'s bytes, or None (non-XML, or nothing to do)."""
        if self.mode == OFF and not self.summaries:
            return None
        mime = (de.mime_type or "").split(";")[0].strip().lower()
        if mime not in _XML_TYPES:
            return None
        return Sniffer(de, CdaStream(self.header_limit, self.summary_limit, self.summaries))

    def check(self, sniffer: Sniffer | None) -> list[E.XdsError]:
        """Errors (strict) for one stored document; warnings are kept for the response."""
        if sniffer is None:
            return []
        de = sniffer.entry
        try:
            header, facts = sniffer.result()
        except CdaError as exc:
            if self.mode == OFF:
                return []
            message = f"DocumentEntry {de.id}: the CDA document cannot be read safely: {exc}"
            if self.mode == WARN:
                self.warnings.append(E.XdsError(REPOSITORY_METADATA_ERROR, message,
                                                de.unique_id, E.SEVERITY_WARNING))
                return []
            return [E.XdsError(REPOSITORY_METADATA_ERROR, message, de.unique_id)]
        if header is None:
            return []       # not a CDA: nothing to compare
        self.documents.append((de, header, facts))
        if self.mode == OFF:
            return []
        problems = disagreements(header, de)
        if not problems:
            return []
        message = (f"DocumentEntry {de.id}: the CDA header contradicts the metadata: "
                   + "; ".join(problems))
        if self.mode == WARN:
            log.warning("%s", message)
            self.warnings.append(E.XdsError(REPOSITORY_METADATA_ERROR, message, de.unique_id,
                                            E.SEVERITY_WARNING))
            return []
        return [E.XdsError(REPOSITORY_METADATA_ERROR, message, de.unique_id)]

    def after_register(self, engine, conn=None, fresh: set[str] | None = None) -> None:
        """File the registered CDA documents' facts in the patient summary.

        With ``conn``, the repository's registration transaction: the rows of the
        documents new to the repository (``fresh``: the uniqueIds it just indexed; the
        same bytes submitted again already have theirs) are inserted in that
        transaction, so a document and its summary commit together or not at all.
        Without it (a remote registry, after its Success), each document's rows are
        replaced in a transaction of its own, best effort: the documents are registered
        whatever happens here."""
        if not self.summaries or not self.documents:
            return
        from .summary import store_summary
        for de, header, facts in self.documents:
            if not header.structured:
                continue
            if facts is None:
                log.info("document %s: structured body not summarised (too large or "
                         "unreadable)", de.unique_id)
                continue
            uid = de.unique_id or header.unique_id
            if conn is not None:
                if fresh is None or uid in fresh:
                    store_summary(engine, header, uid, facts, conn, replace=False)
                continue
            try:
                store_summary(engine, header, uid, facts)
            except Exception:  # noqa: BLE001 - the registration stands; log and go on
                log.exception("cannot file the summary of document %s", de.unique_id)
