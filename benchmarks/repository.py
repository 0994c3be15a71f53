"""Document Repository benchmark: ITI-41 and ITI-43 through the real server.

    python -m benchmarks.repository [--seconds 10] [--clients 4] [--db sqlite|postgresql]
        [--workers 2] [--threads 4] [--large 50,200] [--json FILE] [--profile DIR]
        [--generator wrk|httpx|wrk,httpx]

Starts the real server (gunicorn, tests/harness ServerProcess) on a durable PostgreSQL
(benchmarks.pg, the registry benchmark's cluster: fsync and synchronous_commit on) or
on SQLite, pre-registers patients, and measures for three documents:

- 10 KB: a real ANS CDA (VAC-NOTE_2023.01.xml) without its comments and last entries;
- 140 KB: the median French CDA size: a real ANS CDA
  (BIO-CR-BIO_2024.01_Glycemie_deux_unites_principales_mole_masse.xml, 136,412 bytes)
  with an XML comment up to 140 KiB;
- 5 MB: a real ANS CDA level 1 (DOC_NON_STRUCTURE_CDA-R2-N1.xml, an embedded base64
  PDF) whose base64 text is padded with random base64 up to 5 MiB.

Each is a template: its ``id`` becomes the DocumentEntry uniqueId and its recordTarget
the submission's patient, and the DocumentEntry takes the header's typeCode,
effectiveTime, confidentialityCode and author, so header and metadata agree (the
repository may cross-check them). No hash is sent (the repository computes it).

1. ITI-41 documents/s: one document per submission, MTOM, sent by the product's source
   (``repository.source.provide_and_register_request`` + ``SoapClient.call``, i.e.
   ``provide_and_register`` with the timer started once the metadata is built), one
   keep-alive httpx client per client, a random pre-registered patient per submission;
   first 1 client (latency), then ``--clients`` concurrent clients (throughput);
2. ITI-43 retrieves/s of random documents among those stored in (1), same two runs,
   with ``repository.source.retrieve``;
3. the floor of ITI-41 for the same bytes, in-process, in the same run: lxml parse of the
   request's root SOAP part + SHA-1 of the document + AES-256-GCM of the document
   (cryptography AESGCM, one call) + write and one fsync of a file of that size in the
   server's home + one ``registry.store.insert_objects`` of the submission's rows (its
   DocumentEntry, SubmissionSet and HasMember) in one transaction on the same database;
   the table gives the mean ITI-41 latency (1 client) divided by the floor. The floor is
   measured in two halves, before the size's ITI-41 runs and right after its 1-client
   run (after ``sync``: the run's documents are written back first), so that both
   sides of the ratio see the machine in the same state (this VM's speed drifts from
   one minute to the next; both halves are logged);
4. peak RSS of the gunicorn worker for a 50 MB and a 200 MB document in (ITI-41) and
   out (ITI-43), the server restarted with one worker (benchmarks/rss.py: VmHWM reset
   before each request and VmRSS polled every 20 ms).

The load generator is wrk when installed (``apt-get install wrk``; benchmarks/wrk.py:
one C thread, one keep-alive connection per client, the requests of (1) and (2) captured
once from the Python path below and rendered per request from templates in LuaJIT), else
forked Python processes running the product's client as described in (1) and (2)
(``--generator httpx``); closed loop either way, on the same machine. CPU is read from /proc at both ends of each window (server process
group, PostgreSQL, clients, and other processes); a run during which other processes
took more than 10 % of the machine, or whose connections all went to one gunicorn
worker (the kernel picks the worker that accepts; the run would measure a one-worker
server), is measured again (``--retries``). Prints one markdown
table and the machine facts; asserts nothing about timings. Where the server's time goes:
``python -m benchmarks.repository_inprocess --breakdown``. See benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import json
import os
import random
import re
import shutil
import signal
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from lxml import etree

import benchmarks  # noqa: F401  (tests/ on sys.path)
from benchmarks import settle_file_system, work_dir
import factory as F
from harness import ServerProcess, free_port
from opendmp.db import make_engine, migrate, write_transaction
from registry import store
from registry import vocabulary as V
from registry.hl7types import parse_cx
from registry.iti42 import assign_uuids
from registry.model import Association
from repository.source import (
    ITI41_ACTION,
    ITI43_ACTION,
    DocumentContent,
    provide_and_register_request,
    retrieve,
    retrieve_request,
)
from soapstack.client import SoapClient, build_envelope
from soapstack.mtom import xop_attachment
from soapstack.namespaces import RS, XDSB

from . import client as C
from . import profile as P
from . import rss
from . import wrk as W
from .registry import machine_facts

KIB, MIB = 1024, 1024 * 1024
CORPUS = benchmarks.ROOT.parent / "shared" / "corpus" / "messages" / "cda" / "ans-ci-sis"
TARGETS = ">= 300 ITI-41/s (10 KB), >= 1,200 ITI-43/s, ITI-41 / floor < 3, " \
          "worker RSS < 64 MB and flat with document size"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.repository", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=10, help="measured seconds per phase")
    p.add_argument("--warmup", type=float, default=1, help="unmeasured seconds before each phase")
    p.add_argument("--clients", type=int, default=4,
                   help="concurrent client processes of the throughput runs (default 4)")
    p.add_argument("--db", choices=("postgresql", "sqlite"), default="postgresql")
    p.add_argument("--workers", type=int, default=2, help="gunicorn workers (product default 2)")
    p.add_argument("--threads", type=int, default=4, help="threads per worker (product default 4)")
    p.add_argument("--patients", type=int, default=200, help="pre-registered patients")
    p.add_argument("--sizes", default="10 KB,140 KB,5 MB",
                   help="which of the three documents to measure (default all)")
    p.add_argument("--large", default="50,200",
                   help="document sizes in MB (MiB) of the worker-RSS runs (default 50,200)")
    p.add_argument("--floor-seconds", type=float, default=3,
                   help="time spent measuring the floor per size, half before the size's "
                        "ITI-41 runs and half right after its 1-client run (at least 3 "
                        "repetitions each)")
    p.add_argument("--retries", type=int, default=2,
                   help="re-run a measurement during which other processes used more than "
                        f"{FOREIGN_LIMIT:g}%% of the machine, up to this many times (default 2)")
    p.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                   help="extra environment of the server, for A/B comparisons (e.g. "
                        "OPENDMP_CDA_CHECK=off, OPENDMP_AUDIT_REPOSITORIES=none); repeatable")
    p.add_argument("--generator", metavar="wrk|httpx|wrk,httpx",
                   help="load generator: wrk (C + LuaJIT, the default when installed: "
                        f"{W.INSTALL_HINT}) or httpx (forked Python processes, the product's "
                        "SoapClient, the fallback); a list measures each document with each, "
                        "one after the other on the same server; see benchmarks/README.md")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", help="also write the results as JSON to this file")
    p.add_argument("--profile", metavar="DIR",
                   help="record py-spy profiles of the workers during the throughput runs "
                        "into DIR (needs py-spy; see benchmarks/profile.py)")
    p.add_argument("--keep", action="store_true", help="keep the server home (documents, "
                   "log) at the end; PostgreSQL is stopped either way")
    a = p.parse_args(argv)
    a.large = [int(x) for x in a.large.split(",") if x.strip()]
    a.sizes = [x.strip() for x in a.sizes.split(",") if x.strip()]
    try:
        a.server_env = dict(x.split("=", 1) for x in a.server_env)
    except ValueError:
        p.error("--server-env takes NAME=VALUE")
    a.wrk = W.wrk_path()
    a.generator_note = ""
    if a.generator is None:
        a.generators = ["wrk" if a.wrk else "httpx"]
        if not a.wrk:
            a.generator_note = f"wrk not installed ({W.INSTALL_HINT}): httpx generator used"
            log(a.generator_note)
    else:
        a.generators = [x.strip() for x in a.generator.split(",") if x.strip()]
        if not a.generators or set(a.generators) - {"wrk", "httpx"}:
            p.error("--generator takes wrk, httpx or a list of them")
        if "wrk" in a.generators and not a.wrk:
            p.error(f"--generator wrk: wrk not found ({W.INSTALL_HINT})")
    if a.profile and P.py_spy() is None:
        p.error("--profile needs py-spy on PATH or PY_SPY=/path/to/py-spy")
    return a


# ----------------------------------------------------------------- documents


V3 = "urn:hl7-org:v3"
_NS = {"v3": V3}
INS_NIR = F.INS_NIR
#: written into the CDA templates, replaced per submission (patient INS, document id)
SENTINEL_NIR = "199129999999940"
SENTINEL_DOC_OID = "1.2.250.1.999.123456789.987654321.1"


@dataclass
class Document:
    """A real ANS CDA turned into a template: its recordTarget id is the submission's
    patient (INS-NIR) and its ``id`` the DocumentEntry uniqueId, so the header agrees with
    the metadata (which the repository may cross-check); everything else is the original.
    ``render`` gives the chunks of one instance without copying the body."""

    label: str
    parts: tuple[bytes, bytes, bytes]     # before the document id, between, after the patient
    mime_type: str
    origin: str
    kind: dict                            # classCode/typeCode/formatCode for tests/factory
    creation_time: str                    # the header's effectiveTime in UTC (DTM)
    confidentiality: tuple[str, str]
    author_id: str | None

    def render(self, nir: str, unique_id: str) -> list[bytes]:
        a, b, c = self.parts
        return [a, unique_id.encode(), b, nir.encode(), c]

    @property
    def size(self) -> int:
        return sum(map(len, self.parts)) + len(SENTINEL_NIR) + len(SENTINEL_DOC_OID)

    @property
    def content(self) -> bytes:
        """One instance (the sentinels' lengths: the nominal size)."""
        return b"".join(self.render(SENTINEL_NIR, SENTINEL_DOC_OID))

    def entry_fields(self) -> dict:
        """DocumentEntry attributes taken from the CDA header (tests/factory overrides)."""
        code, scheme = self.confidentiality
        out = dict(kind=self.kind, creation_time=self.creation_time,
                   confidentiality_codes=[F.code(code, scheme, code)])
        if self.author_id:
            a = F.author()
            a.person = f"{self.author_id}^{a.person.split('^', 1)[1]}"
            out["authors"] = [a]
        return out


def _utc_dtm(ts: str) -> str:
    """HL7 TS with a zone offset (``20240401171000+0100``) -> UTC DTM (``20240401161000``)."""
    if len(ts) > 14 and ts[-5] in "+-":
        when = dt.datetime.strptime(ts[:14], "%Y%m%d%H%M%S")
        sign = 1 if ts[-5] == "+" else -1
        when -= sign * dt.timedelta(hours=int(ts[-4:-2]), minutes=int(ts[-2:]))
        return when.strftime("%Y%m%d%H%M%S")
    return ts[:14]


def _trim(root: etree._Element, size: int) -> None:
    """Drop comments, then clinical entries from the end, until the document fits ``size``."""
    for c in root.xpath("//comment()"):
        if c.getparent() is not None:
            c.getparent().remove(c)
    while len(etree.tostring(root)) > size - 300:
        entries = root.xpath("//v3:entry", namespaces=_NS) or root.xpath(
            "v3:component/v3:structuredBody/v3:component", namespaces=_NS)
        if not entries:
            break
        entries[-1].getparent().remove(entries[-1])


def cda_template(path: Path, label: str, size: int | None, kind: dict, origin: str,
                 rng: random.Random) -> Document:
    """``path`` as a template of about ``size`` bytes (None: as it is); smaller by dropping
    comments and entries, larger by random base64 in its nonXMLBody text."""
    root = etree.fromstring(path.read_bytes(), etree.XMLParser(resolve_entities=False,
                                                               no_network=True))
    tree = root.getroottree()
    if size is not None and size < len(etree.tostring(tree, xml_declaration=True,
                                                      encoding="UTF-8")):
        _trim(root, size)
    doc_id = root.find("v3:id", _NS)
    doc_id.attrib.clear()
    doc_id.set("root", SENTINEL_DOC_OID)
    role = root.find("v3:recordTarget/v3:patientRole", _NS)
    for old in role.findall("v3:id", _NS):
        role.remove(old)
    ins = etree.Element(f"{{{V3}}}id", root=INS_NIR, extension=SENTINEL_NIR)
    role.insert(0, ins)
    author = root.find("v3:author/v3:assignedAuthor/v3:id", _NS)
    data = etree.tostring(tree, xml_declaration=True, encoding="UTF-8")
    if size is not None and len(data) < size:
        missing = size - len(data)
        if root.find("v3:component/v3:nonXMLBody/v3:text", _NS) is not None:
            at = data.index(b"</text>")
            data = data[:at] + base64.b64encode(rng.randbytes(missing))[:missing] + data[at:]
        else:
            at = data.rindex(b"</ClinicalDocument>")
            data = data[:at] + b"<!--" + b"." * max(0, missing - 7) + b"-->" + data[at:]
    nir_at, uid_at = data.find(SENTINEL_NIR.encode()), data.find(SENTINEL_DOC_OID.encode())
    assert data.count(SENTINEL_NIR.encode()) == 1 and data.count(SENTINEL_DOC_OID.encode()) == 1
    if not uid_at < nir_at:  # the CDA order: the document id, then recordTarget
        raise ValueError(f"{path.name}: expected the document id before the recordTarget")
    a = data[:uid_at]
    b = data[uid_at + len(SENTINEL_DOC_OID):nir_at]
    c = data[nir_at + len(SENTINEL_NIR):]
    eff = root.find("v3:effectiveTime", _NS).get("value")
    conf = root.find("v3:confidentialityCode", _NS)
    return Document(label, (a, b, c), "text/xml", origin, kind, _utc_dtm(eff),
                    (conf.get("code"), conf.get("codeSystem")),
                    author.get("extension") if author is not None else None)


def documents(seed: int) -> list[Document]:
    rng = random.Random(seed)
    median = "BIO-CR-BIO_2024.01_Glycemie_deux_unites_principales_mole_masse.xml"
    vac = dict(F.VACCINATION, class_code=F.code("52", "1.2.250.1.213.1.1.4.1",
                                                "Certificat, déclaration"))
    pdf = dict(F.CR_BIO, format_code=F.code("urn:ihe:iti:xds-sd:pdf:2008",
                                            "1.3.6.1.4.1.19376.1.2.3",
                                            "Document à corps non structuré en Pdf/A-1"))
    return [
        cda_template(CORPUS / "VAC-NOTE_2023.01.xml", "10 KB", 10 * KIB, vac,
                     "ANS VAC-NOTE_2023.01.xml without its comments and last entries",
                     rng),
        cda_template(CORPUS / median, "140 KB", 140 * KIB, F.CR_BIO,
                     f"ANS {median} (136,412 bytes) + an XML comment up to 140 KiB", rng),
        cda_template(CORPUS / "DOC_NON_STRUCTURE_CDA-R2-N1.xml", "5 MB", 5 * MIB, pdf,
                     "ANS DOC_NON_STRUCTURE_CDA-R2-N1.xml (CDA level 1, base64 PDF) padded "
                     "to 5 MiB in its nonXMLBody", rng),
    ]


def submission(patient: str, unique_id: str, ss_unique_id: str, size: int | None,
               mime_type: str, doc: Document | None = None):
    """One DocumentEntry + its SubmissionSet + HasMember (tests/factory), with the given
    uniqueIds and, for a CDA, the header's codes, time and author; no hash (the repository
    computes it), ``size`` when given."""
    fields = doc.entry_fields() if doc is not None else {}
    sub = F.submission(patient, content=b"", hash=None, size=None if size is None else str(size),
                       mime_type=mime_type, repository_unique_id=None, **fields)
    sub.documents[0].unique_id = unique_id
    sub.submission_set.unique_id = ss_unique_id
    return sub


def registry_error(response: etree._Element) -> str | None:
    """None for a Success RegistryResponse, else its status and error codes."""
    status = response.get("status") or ""
    if status.endswith(":Success"):
        return None
    errors = list(response.iter(f"{{{RS}}}RegistryError"))
    codes = sorted({e.get("errorCode") or "?" for e in errors})
    first = (errors[0].get("codeContext") or "")[:300] if errors else ""
    return f"{status.rsplit(':', 1)[-1] or 'no status'}: {', '.join(codes)} ({first})"


# ----------------------------------------------------------------- load generator


@dataclass
class Iti41Job:
    """ITI-41 of a fresh one-document submission for a random pre-registered patient."""

    url: str
    patients: list[str]
    doc: Document
    uid_root: str
    name: str = "ITI-41"

    def prepare(self, rng: random.Random, client: int, i: int):
        base = f"{self.uid_root}.{client}.{i}"
        patient = self.patients[rng.randrange(len(self.patients))]
        chunks = self.doc.render(patient.split("^", 1)[0], base + ".1")
        size = sum(map(len, chunks))
        sub = submission(patient, base + ".1", base + ".2", size, self.doc.mime_type, self.doc)
        body, attachments = provide_and_register_request(sub, {sub.documents[0].id: (
            DocumentContent(self.doc.mime_type, size, chunks))})
        return base + ".1", (body, attachments)

    def connect(self) -> SoapClient:
        return SoapClient(self.url, timeout=600)

    def send(self, soap: SoapClient, prepared) -> tuple[str | None, int]:
        body, attachments = prepared
        return registry_error(soap.call(ITI41_ACTION, body, attachments=attachments).payload), 0


@dataclass
class Iti43Job:
    """ITI-43 of one random document among ``uids`` (all of ``size`` bytes)."""

    url: str
    repository_unique_id: str
    uids: list[str]
    size: int
    name: str = "ITI-43"

    def prepare(self, rng: random.Random, client: int, i: int):
        return None, self.uids[rng.randrange(len(self.uids))]

    def connect(self) -> SoapClient:
        return SoapClient(self.url, timeout=600)

    def send(self, soap: SoapClient, uid: str) -> tuple[str | None, int]:
        response, docs = retrieve(soap, self.repository_unique_id, [uid])
        error = registry_error(response)
        # sizes differ from the nominal one by the length of the patient id and uniqueId
        if error is None and (len(docs) != 1 or abs(len(docs[0].content) - self.size) > 64):
            error = f"got {[len(d.content) for d in docs]} bytes, expected ~[{self.size}]"
        return error, 0


# The same requests for wrk (benchmarks/wrk.py): one request of each job is captured as the
# Python generator sends it, with sentinel values, and cut into a template; a second one,
# with other values, must come out of the template byte for byte (after the per-message
# MIME boundary, Content-IDs and tests/factory's symbolic ids, which the server does not
# keep).

_TPL_UID_ROOT = "1.2.250.1.999.424242"
_SIZE_VALUE = re.compile(rb'<rim:Slot name="size"><rim:ValueList><rim:Value>(\d+)</rim:Value>')
_MESSAGE_ID = re.compile(rb"<wsa:MessageID>(urn:uuid:[^<]+)</wsa:MessageID>")
#: per-message values that are not slots of the template (the same length every time)
_PER_MESSAGE = re.compile(rb"MIMEBoundary_[0-9a-f]+|(?:root|doc)\.[0-9a-f]{32}@opendmp"
                          rb"|\b(?:Document|Assoc)\d+\b")


def _uid_spans(data: bytes, uid: str) -> list[tuple[int, int]]:
    """Occurrences of the OID ``uid`` not followed by more of an OID."""
    return [m.span() for m in re.finditer(re.escape(uid.encode()) + rb"(?![0-9.])", data)]


def normalized(data: bytes) -> bytes:
    """A request with the MIME boundary, Content-IDs and symbolic ids blanked."""
    return _PER_MESSAGE.sub(b"~", data)


def _check_template(req: W.Request, cap: W.Captured, values: dict[str, bytes],
                    what: str) -> None:
    if normalized(req.body.render(values)) != normalized(cap.body):
        raise RuntimeError(f"{what}: the wrk template does not render the request the Python "
                           "generator sends")
    ctype = f"Content-Type: {cap.headers['content-type']}\r\n".encode()
    if normalized(ctype) not in normalized(req.head):
        raise RuntimeError(f"{what}: Content-Type differs")


def _random_values(cap: W.Captured, other: W.Captured) -> dict[str, bytes]:
    """MSGID and UUID1..n of a captured request, in the order the template has them."""
    body = cap.body
    msgid = _MESSAGE_ID.search(body).span(1)
    values = {"MSGID": body[slice(*msgid)]}
    uuids = [s for s in W.random_uuids(body, other.body) if s != msgid]
    values.update({f"UUID{k}": body[slice(*s)] for k, s in enumerate(uuids, 1)})
    return values


def _random_spans(cap: W.Captured, other: W.Captured) -> list[tuple[int, int, str]]:
    msgid = _MESSAGE_ID.search(cap.body).span(1)
    uuids = [s for s in W.random_uuids(cap.body, other.body) if s != msgid]
    return [(*msgid, "MSGID")] + [(*s, f"UUID{k}") for k, s in enumerate(uuids, 1)]


def wrk_iti41(url: str, patients: list[str], doc: Document, uid_root: str) -> W.Request:
    """:class:`Iti41Job` as a wrk template: slots for the message id and the random ids,
    the patient (its INS-NIR, in the metadata and the CDA header), both uniqueIds (the
    document's also in the CDA header) and the document's size in the metadata."""
    suffix = "^" + patients[0].split("^", 1)[1]
    if any("^" + p.split("^", 1)[1] != suffix for p in patients):
        raise ValueError("wrk_iti41 needs patients of one assigning authority")

    def capture(patient_nir: str, root: str, client: int, i: int):
        job = Iti41Job(url, [patient_nir + suffix], doc, root)
        _, prepared = job.prepare(random.Random(0), client, i)
        cap = W.capture(lambda http: job.send(SoapClient(url, client=http), prepared))
        return cap, f"{root}.{client}.{i}"

    a, base_a = capture(SENTINEL_NIR, _TPL_UID_ROOT, 7, 7)
    nir_b = patients[-1].split("^", 1)[0]
    b, base_b = capture(nir_b, uid_root, 12, 345)
    size_base = sum(map(len, doc.parts))
    spans = _random_spans(a, b)
    spans += [(*s, "NIR") for s in _uid_spans(a.body, SENTINEL_NIR)]
    spans += [(*s, "DE_UID") for s in _uid_spans(a.body, base_a + ".1")]
    spans += [(*s, "SS_UID") for s in _uid_spans(a.body, base_a + ".2")]
    size = _SIZE_VALUE.search(a.body)
    spans.append((*size.span(1), "SIZE"))
    if int(size.group(1)) != size_base + len(SENTINEL_NIR) + len(base_a + ".1"):
        raise RuntimeError("wrk_iti41: the size slot is not the document's size")
    req = W.Request.from_capture(
        "ITI-41", url, a, W.Template.from_spans(a.body, spans), C.SUCCESS,
        patients=[p.split("^", 1)[0] for p in patients], uid_root=uid_root,
        size_base=size_base)
    values = _random_values(b, a) | {
        "NIR": nir_b.encode(), "DE_UID": f"{base_b}.1".encode(),
        "SS_UID": f"{base_b}.2".encode(), "SIZE": _SIZE_VALUE.search(b.body).group(1)}
    _check_template(req, b, values, f"ITI-41 {doc.label}")
    return req


def wrk_iti43(url: str, repository_unique_id: str, uids: list[str], doc: Document
              ) -> W.Request:
    """:class:`Iti43Job` as a wrk template: slots for the message id and the document's
    uniqueId; an answer must hold at least the document's size."""
    def capture(uid: str):
        job = Iti43Job(url, repository_unique_id, [uid], doc.size)
        return W.capture(lambda http: job.send(SoapClient(url, client=http), uid))

    sentinel = _TPL_UID_ROOT + ".43.1"
    a, b = capture(sentinel), capture(uids[-1])
    spans = _random_spans(a, b) + [(*s, "DOC_UID") for s in _uid_spans(a.body, sentinel)]
    req = W.Request.from_capture(
        "ITI-43", url, a, W.Template.from_spans(a.body, spans), C.SUCCESS,
        uids=list(uids), min_body=doc.size - 64)
    _check_template(req, b, _random_values(b, a) | {"DOC_UID": uids[-1].encode()},
                    f"ITI-43 {doc.label}")
    return req


def stored_unique_ids(engine, prefix: str) -> list[str]:
    """uniqueIds of the documents the repository holds (index rows COMMITTED) under the
    OID ``prefix``: what the ITI-41 runs really stored."""
    from sqlalchemy import select

    from opendmp.schema import repository_document as rd
    from repository.index import COMMITTED
    with engine.connect() as conn:
        rows = conn.execute(select(rd.c.unique_id).where(
            rd.c.state == COMMITTED, rd.c.unique_id.like(prefix + ".%")).order_by(rd.c.pk))
        return [r[0] for r in rows]


#: smaps_rollup of the RSS run's worker at its baseline (benchmarks/rss.py)
BASELINE_ROLLUP: dict[str, int] = {}
FOREIGN_LIMIT = C.FOREIGN_LIMIT
Phase = C.PhaseResult


def wait_quiet() -> float:
    """Wait until the machine is below 15 % busy (between runs only the idle server and
    database are ours); return the last reading."""
    return C.wait_quiet(limit=15.0, calm=0.5, timeout=120.0)


# ----------------------------------------------------------------- the floor


@dataclass
class Floor:
    parse: list[float] = field(default_factory=list)
    sha1: list[float] = field(default_factory=list)
    aes: list[float] = field(default_factory=list)
    fsync: list[float] = field(default_factory=list)
    insert: list[float] = field(default_factory=list)

    PARTS = ("parse", "sha1", "aes", "fsync", "insert")

    def mean_ms(self, part: str | None = None) -> float:
        if part is not None:
            return 1000 * statistics.fmean(getattr(self, part))
        return sum(self.mean_ms(p) for p in self.PARTS)

    @property
    def repetitions(self) -> int:
        return len(self.parse)

    def extend(self, other: "Floor") -> None:
        for part in self.PARTS:
            getattr(self, part).extend(getattr(other, part))


_SAFE_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False,
                               huge_tree=False, collect_ids=False)


def _rows_for_insert(patient_cx: str, patient_pk: int, uid_base: str) -> list:
    """The rows register_submission would insert for a one-document submission."""
    sub = submission(patient_cx, uid_base + ".1", uid_base + ".2", None, "text/xml")
    assign_uuids(sub)
    for obj in sub.objects():
        obj.status = V.APPROVED
        obj.home = None
    for obj in [*sub.documents, *sub.submission_sets]:
        obj.lid, obj.version = obj.id, "1"
    de = sub.documents[0]
    de.hash, de.size, de.repository_unique_id = "0" * 40, "0", "1.2.250.1.999.1.1"
    return [(o, None if isinstance(o, Association) else patient_pk) for o in sub.objects()]


def measure_floor(engine, endpoint: str, doc: Document, work_dir: Path, patient_cx: str,
                  patient_pk: int, uid_root: str, seconds: float, content: bytes | None = None
                  ) -> Floor:
    """Time the floor's five steps on ``doc``'s bytes (or ``content``), repeated for about
    ``seconds`` (at least 3 times). The sealed bytes are written over one file (truncated,
    never unlinked until the end): deleting a file per repetition would leave thousands of
    recently freed inodes that this machine's ext4 (no journal) skips at each later
    allocation, slowing the server's document files measured next (see
    :func:`benchmarks.work_dir`); the floor itself then pays no inode allocation."""
    content = doc.content if content is None else content
    sub = submission(patient_cx, uid_root + ".0.1", uid_root + ".0.2", len(content),
                     doc.mime_type, doc)
    body, _ = provide_and_register_request(
        sub, {sub.documents[0].id: DocumentContent.of(b"", doc.mime_type)})
    root = build_envelope(ITI41_ACTION, endpoint, body)  # the MTOM root part as sent
    key = AESGCM.generate_key(bit_length=256)
    path = work_dir / f"floor-{os.getpid()}.bin"
    floor = Floor()
    deadline = time.perf_counter() + seconds
    n = 0
    while n < 3 or time.perf_counter() < deadline:
        n += 1
        rows = _rows_for_insert(patient_cx, patient_pk, f"{uid_root}.{n}")
        t0 = time.perf_counter()
        etree.fromstring(root, _SAFE_PARSER)
        t1 = time.perf_counter()
        hashlib.sha1(content).digest()
        t2 = time.perf_counter()
        sealed = AESGCM(key).encrypt(os.urandom(12), content, None)
        t3 = time.perf_counter()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            view = memoryview(sealed)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        t4 = time.perf_counter()
        with write_transaction(engine) as conn:
            store.insert_objects(conn, rows)
        t5 = time.perf_counter()
        del sealed
        floor.parse.append(t1 - t0)
        floor.sha1.append(t2 - t1)
        floor.aes.append(t3 - t2)
        floor.fsync.append(t4 - t3)
        floor.insert.append(t5 - t4)
    os.unlink(path)
    return floor


# ----------------------------------------------------------------- worker RSS


@dataclass
class LargeRun:
    label: str
    mb: float
    iti41_s: float
    iti43_s: float
    peak41: int
    peak43: int
    polled41: int
    polled43: int
    hwm41: int
    hwm43: int
    samples41: int
    samples43: int
    before41: int = 0
    before43: int = 0
    floor: Floor | None = None


def _pattern_chunks(size: int, block: bytes, sha):
    for i in range(size // len(block)):
        piece = bytes([i % 256]) + block[1:]
        sha.update(piece)
        yield piece
    rest = size % len(block)
    if rest:
        piece = block[:rest]
        sha.update(piece)
        yield piece


def measure_large(server: ServerProcess, patients: list[str], sizes_mb: list[int],
                  uid_root: str, warm: Document, cdas: list[Document]
                  ) -> tuple[int, list[LargeRun]]:
    """Baseline and peak worker RSS (one worker) around one ITI-41 and one ITI-43 of each
    CDA of ``cdas`` (text/xml: through the repository's CDA intake) and of a generated
    application/octet-stream document of each of ``sizes_mb`` MiB. Returns (baseline RSS,
    runs)."""
    workers = rss.http_workers(server.proc.pid, server.port)
    if len(workers) != 1:
        raise RuntimeError(f"expected one gunicorn worker, found {workers}")
    soap = SoapClient(server.url("/xds/repository"), timeout=1800)
    repo_uid = (Path(server.home) / "repository-unique-id").read_text().strip()
    try:
        block = random.Random(7).randbytes(MIB)
        for n in range(4):  # warm-up: imports, pools, the CDA path, the spooling path
            uid = f"{uid_root}.5.{n}.1"
            if n < 3:
                chunks = warm.render(patients[n].split("^", 1)[0], uid)
                mime, doc = warm.mime_type, warm
            else:  # 2 MiB: attachments above 1 MiB are spooled to a file
                chunks, mime, doc = [block, block], "application/octet-stream", None
            sub = submission(patients[n], uid, f"{uid_root}.5.{n}.2", None, mime, doc)
            body, atts = provide_and_register_request(sub, {sub.documents[0].id: DocumentContent(
                mime, sum(map(len, chunks)), chunks)})
            err = registry_error(soap.call(ITI41_ACTION, body, attachments=atts).payload)
            if err:
                raise RuntimeError(f"warm-up ITI-41 failed: {err}")
            retrieve(soap, repo_uid, [sub.documents[0].unique_id])
        time.sleep(1)
        baseline = rss.current(workers)
        global BASELINE_ROLLUP
        BASELINE_ROLLUP = rss.rollup(workers[0])
        runs = []
        jobs = []
        for k, mb in enumerate(sizes_mb):  # large: application/octet-stream, generated
            size = mb * MIB
            sub = submission(patients[k % len(patients)], f"{uid_root}.6.{mb}.1",
                             f"{uid_root}.6.{mb}.2", None, "application/octet-stream")
            sent = hashlib.sha1()
            jobs.append((f"{mb} MB", size, sub, "application/octet-stream",
                         _pattern_chunks(size, block, sent), sent))
        for k, d in enumerate(cdas):   # CDAs last (text/xml, through the CDA intake)
            uid = f"{uid_root}.7.{k}.1"
            chunks = d.render(patients[k].split("^", 1)[0], uid)
            sub = submission(patients[k], uid, f"{uid_root}.7.{k}.2", None, d.mime_type, d)
            sent = hashlib.sha1()
            for c in chunks:
                sent.update(c)
            jobs.append((d.label, sum(map(len, chunks)), sub, d.mime_type, chunks, sent))
        for label, size, sub, mime, chunks, sent in jobs:
            body, atts = provide_and_register_request(sub, {sub.documents[0].id: DocumentContent(
                mime, size, chunks)})
            before41 = rss.current(workers)
            with rss.Sampler(workers) as s41:
                t0 = time.perf_counter()
                err = registry_error(soap.call(ITI41_ACTION, body, attachments=atts).payload)
                t41 = time.perf_counter() - t0
            if err:
                raise RuntimeError(f"ITI-41 of {label} failed: {err}")
            before43 = rss.current(workers)
            with rss.Sampler(workers) as s43:
                t0 = time.perf_counter()
                reply = soap.call(ITI43_ACTION, retrieve_request(
                    repo_uid, [sub.documents[0].unique_id]))
                t43 = time.perf_counter() - t0
            try:
                err = registry_error(reply.payload.find(f"{{{RS}}}RegistryResponse"))
                att = xop_attachment(reply.payload.find(f".//{{{XDSB}}}Document"),
                                     reply.attachments)
                got = hashlib.sha1()
                for chunk in att.chunks():
                    got.update(chunk)
                if err or att.size != size or got.hexdigest() != sent.hexdigest():
                    raise RuntimeError(f"ITI-43 of {label}: {err or 'bytes differ'}")
            finally:
                reply.close()
            runs.append(LargeRun(label, size / MIB, t41, t43, s41.peak, s43.peak,
                                 s41.peak_polled, s43.peak_polled, s41.peak_hwm, s43.peak_hwm,
                                 s41.samples, s43.samples, before41, before43))
            log(f"  {label} ({mime}): ITI-41 {t41:.2f} s, RSS before {before41 / MIB:.1f}, peak "
                f"{s41.peak / MIB:.1f} MiB "
                f"(HWM {s41.peak_hwm / MIB:.1f}, polled {s41.peak_polled / MIB:.1f}, "
                f"{s41.samples} samples); ITI-43 {t43:.2f} s, RSS before {before43 / MIB:.1f}, "
                f"peak {s43.peak / MIB:.1f} MiB "
                f"(HWM {s43.peak_hwm / MIB:.1f}, polled {s43.peak_polled / MIB:.1f})")
        return baseline, runs
    finally:
        soap.close()


# ----------------------------------------------------------------- facts


def file_system(path: Path, staging: Path) -> str:
    """The file system of ``path``, and what creating a file costs in the document
    store's ``staging`` directory (where every ITI-41 creates one), once settled."""
    best, fs = "", "?"
    try:
        with open("/proc/mounts") as f:
            for line in f:
                dev, mnt, kind = line.split()[:3]
                if str(path).startswith(mnt) and len(mnt) > len(best):
                    best, fs = mnt, f"{kind} ({dev})"
    except OSError:
        pass
    return (f"{fs}, {path.parent}, creating a file in the store's staging directory costs "
            f"{settle_file_system(staging, log=log):.0f} µs CPU")


def code_state() -> str:
    """The commit measured, and the product directories with uncommitted changes (the
    numbers describe the working tree, which may be ahead of the commit)."""
    import subprocess
    root = str(benchmarks.ROOT)
    try:
        head = subprocess.run(["git", "-C", root, "log", "-1", "--format=%h %cs"],
                              capture_output=True, text=True, timeout=10).stdout.strip()
        status = subprocess.run(["git", "-C", root, "status", "--porcelain"],
                                capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    dirty = sorted({line[3:].split("/")[0] for line in status.splitlines()
                    if not line[3:].startswith(("benchmarks/", "tests/"))})
    return f"commit {head or '?'}" + (f" + uncommitted changes in {', '.join(dirty)}"
                                      if dirty else "")


def db_facts(db: str, url: str) -> str:
    if db == "sqlite":
        import sqlite3
        return (f"SQLite {sqlite3.sqlite_version} (WAL, synchronous=NORMAL), file in the "
                "server home")
    from .pg import server_facts
    pg = server_facts(url)
    return (f"PostgreSQL {pg['version']} (fsync={pg['fsync']}, synchronous_commit="
            f"{pg['synchronous_commit']}, shared_buffers={pg['shared_buffers']}), loopback TCP")


# ----------------------------------------------------------------- report


def _ms(x: float) -> str:
    if x != x:
        return "–"
    return f"{x:.2f}" if x < 10 else f"{x:.1f}" if x < 100 else f"{x:,.0f}"


def _pp(r: Phase | None) -> str:
    if r is None or not r.count:
        return "–"
    return f"{_ms(r.pct(.5))} / {_ms(r.pct(.99))}"


def _rate(r: Phase | None) -> str:
    if r is None:
        return "–"
    s = f"{r.rate:,.1f}" if r.rate < 100 else f"{r.rate:,.0f}"
    return s + (f" ({r.errors} err.)" if r.errors else "")


def _mib(x: int) -> str:
    return f"{x / MIB:.1f}"


def render(a, facts: dict, docs: list[Document], results: dict, baseline: int,
           large: list[LargeRun], started, finished) -> str:
    n = a.clients
    doc_labels = [d.label for d in docs]
    #: a column's document ("5 MB (wrk)" -> "5 MB": one RSS run per document)
    base = {d.label: d.label.split(" (")[0] for d in docs}
    cda_runs = {r.label: r for r in large if r.label in base.values()}
    big = [r for r in large if r.label not in base.values()]
    cols = len(docs) + len(big)
    head = "| | " + " | ".join(doc_labels + [r.label for r in big]) + " | target |"
    sep = "|---|" + "---:|" * cols + "---|"

    def row(name: str, small: list[str], large_cells: list[str] | None = None,
            target: str = "") -> str:
        cells = small + (large_cells if large_cells is not None else ["–"] * len(big))
        return f"| {name} | " + " | ".join(cells) + f" | {target} |"

    def per_doc(fn) -> list[str]:
        return [fn(results[d.label]) for d in docs]

    def rss_cells(fn) -> list[str]:
        return [fn(cda_runs[base[d.label]]) if base[d.label] in cda_runs else "–" for d in docs]

    pss, private = BASELINE_ROLLUP.get("Pss", 0), BASELINE_ROLLUP.get("Private", 0)
    base_split = f"{_mib(pss)} / {_mib(private)}" if BASELINE_ROLLUP else "–"

    def peak(value: int) -> str:
        delta = (value - baseline) / MIB
        return f"{_mib(value)} ({'+' if delta > -0.05 else '−'}{abs(delta):.1f})"

    rows = [
        head, sep,
        row("document bytes", [f"{d.size:,}" for d in docs], [f"{r.mb * MIB:,.0f}" for r in big]),
        row(f"ITI-41 documents/s ({n} clients)", per_doc(lambda x: _rate(x["41n"])),
            target=">= 300 (10 KB)"),
        row("ITI-41 p50 / p99 ms (1 client)", per_doc(lambda x: _pp(x["411"])),
            [f"{r.iti41_s * 1000:,.0f} (one)" for r in big]),
        row(f"ITI-41 p50 / p99 ms ({n} clients)", per_doc(lambda x: _pp(x["41n"]))),
        row("ITI-41 mean ms (1 client)", per_doc(lambda x: _ms(x["411"].mean_ms)),
            [f"{r.iti41_s * 1000:,.0f}" for r in big]),
        row("floor ms: parse + SHA-1 + AES-GCM + write/fsync + insert",
            per_doc(lambda x: _ms(x["floor"].mean_ms())),
            [_ms(r.floor.mean_ms()) if r.floor else "–" for r in big]),
        row("ITI-41 mean / floor",
            per_doc(lambda x: f"{x['411'].mean_ms / x['floor'].mean_ms():.1f}"),
            [f"{r.iti41_s * 1000 / r.floor.mean_ms():.1f}" if r.floor else "–" for r in big],
            "< 3"),
        row(f"ITI-43 retrieves/s ({n} clients)", per_doc(lambda x: _rate(x.get("43n"))),
            target=">= 1,200"),
        row("ITI-43 p50 / p99 ms (1 client)", per_doc(lambda x: _pp(x.get("431"))),
            [f"{r.iti43_s * 1000:,.0f} (one)" for r in big]),
        row(f"ITI-43 p50 / p99 ms ({n} clients)", per_doc(lambda x: _pp(x.get("43n")))),
        row(f"server CPU ms per ITI-41 ({n} cl.)", per_doc(lambda x: _cpu_per(x["41n"], facts))),
        row(f"server CPU ms per ITI-43 ({n} cl.)",
            per_doc(lambda x: _cpu_per(x.get("43n"), facts))),
        row(f"CPU % server [2 busiest processes] / postgres / clients / foreign, ITI-41 ({n} cl.)",
            per_doc(lambda x: _cpu(x["41n"], a.db))),
        row(f"CPU % server [2 busiest processes] / postgres / clients / foreign, ITI-43 ({n} cl.)",
            per_doc(lambda x: _cpu(x.get("43n"), a.db))),
        row("CPU % used by other processes during the runs: ITI-41 1 cl. / n cl., ITI-43 "
            "1 cl. / n cl.", per_doc(lambda x: " / ".join(
                f"{x[k].cpu['foreign']:.0f}" if x.get(k) is not None else "–"
                for k in ("411", "41n", "431", "43n"))),
            target=f"< {FOREIGN_LIMIT:g} (else re-run)"),
        row("worker RSS MiB, baseline (1 worker, after warm-up)",
            rss_cells(lambda r: _mib(baseline)), [_mib(baseline) for _ in big]),
        row("worker PSS / private MiB at baseline (RSS counts pages shared with the master)",
            rss_cells(lambda r: base_split), [base_split for _ in big]),
        row("worker peak RSS MiB during one ITI-41 (+ over baseline)",
            rss_cells(lambda r: peak(r.peak41)), [peak(r.peak41) for r in big], "< 64, flat"),
        row("worker peak RSS MiB during one ITI-43 (+ over baseline)",
            rss_cells(lambda r: peak(r.peak43)), [peak(r.peak43) for r in big], "< 64, flat"),
    ]
    parts, seen = [], set()
    for d in docs:
        if base[d.label] in seen:
            continue  # measured once per document, whatever the generator
        seen.add(base[d.label])
        f = results[d.label]["floor"]
        parts.append(f"{base[d.label]}: " + " + ".join(_ms(f.mean_ms(p)) for p in Floor.PARTS)
                     + f" ({f.repetitions} reps)")
    for r in big:
        if r.floor:
            parts.append(f"{r.label}: " + " + ".join(_ms(r.floor.mean_ms(p))
                                                     for p in Floor.PARTS)
                         + f" ({r.floor.repetitions} reps)")
    errors = [f"{d.label} {k}: {results[d.label][k].errors} ({results[d.label][k].error_sample})"
              for d in docs for k in ("411", "41n", "431", "43n")
              if results[d.label].get(k) is not None and results[d.label][k].errors]
    reruns = [f"{d.label} {k}: {', '.join(f'{x:,.0f}/s' for x in results[d.label][k].discarded)}"
              for d in docs for k in ("411", "41n", "431", "43n")
              if results[d.label].get(k) is not None and results[d.label][k].discarded]
    out = [
        f"## OpenDMP repository benchmark — {started:%Y-%m-%d %H:%M %Z} "
        f"({(finished - started).total_seconds() / 60:.0f} min)",
        "",
        f"Machine: nproc {facts['nproc']} ({facts['cpu']}), {facts['ram_gb']} GB RAM, Linux "
        f"{facts['kernel']}, Python {facts['python']}; document store and spool on "
        f"{facts['fs']}. DB: {facts['db']}. Server: gunicorn gthread, {a.workers} workers x "
        f"{a.threads} threads (RSS runs: 1 worker x {a.threads} threads), access log "
        f"{'on' if a.server_env.get('OPENDMP_ACCESS_LOG') else 'off (default)'}. "
        f"Clients: {_generator(a)}, on the same machine, closed loop; {a.seconds:g} s measured per run after {a.warmup:g} s warm-up; "
        f"{a.patients} pre-registered patients. Code: {facts['code']}."
        + (f" Server environment: {' '.join(f'{k}={v}' for k, v in a.server_env.items())}."
           if a.server_env else ""),
        "",
        f"Targets: {TARGETS}.",
        "",
        *rows,
        "",
        "Documents: " + "; ".join(f"{label} = {origin}" for label, origin in
                                  {base[d.label]: d.origin for d in docs}.items())
        + (f"; {', '.join(r.label for r in big)} = generated bytes, application/octet-stream "
           "(not a CDA), no hash or size sent" if big else "") + ".",
        f"Floor parts, ms (parse + SHA-1 + AES-GCM + write/fsync + insert): {'; '.join(parts)}.",
        "Errors: " + (", ".join(errors) or "none") + ".",
    ]
    if reruns:
        out.append("Runs measured again because other processes used more than "
                   f"{FOREIGN_LIMIT:g}% of the machine, or because every connection went "
                   "to the same worker (discarded rates): "
                   + "; ".join(reruns) + ".")
    return "\n".join(out)


def _generator(a) -> str:
    out = []
    for gen in a.generators:
        name = f"({gen}) " if len(a.generators) > 1 else ""
        if gen == "wrk":
            out.append(f"{name}{W.wrk_version(a.wrk)} (LuaJIT), one thread and one keep-alive "
                       f"connection per client, started {W.STAGGER_MS} ms apart, the httpx "
                       "generator's requests as templates (benchmarks/wrk.py)")
        else:
            out.append(f"{name}forked Python processes, one keep-alive httpx client each (the "
                       "product's SoapClient)"
                       + (f" ({a.generator_note})" if a.generator_note else ""))
    return "; ".join(out)


def _cpu_per(r: Phase | None, facts: dict) -> str:
    """Server (gunicorn) CPU time per request, from its share of the machine."""
    if r is None or not r.count:
        return "–"
    return f"{r.cpu['server'] / 100 * facts['nproc'] * r.seconds / r.count * 1000:.2f}"


def _cpu(r: Phase | None, db: str) -> str:
    if r is None:
        return "–"
    pg = f"{r.cpu['postgres']:.0f}" if db == "postgresql" else "(in server)"
    split = r.cpu.get("server_split")
    server = f"{r.cpu['server']:.0f}" + (f" {split[:2]}" if split else "")
    return f"{server} / {pg} / {r.cpu['clients']:.0f} / {r.cpu['foreign']:.0f}"


def dump_json(path: str, a, facts, docs, results, baseline, large, started, finished) -> None:
    def phase(r: Phase | None):
        if r is None:
            return None
        return {"clients": r.clients, "seconds": r.seconds, "count": r.count, "rate": r.rate,
                "mean_ms": r.mean_ms, "p50_ms": r.pct(.5), "p90_ms": r.pct(.9),
                "p99_ms": r.pct(.99), "max_ms": r.pct(1.0), "errors": r.errors,
                "error_sample": r.error_sample, "cpu_percent": r.cpu,
                "connections_per_server_process": r.connections}

    def floor(f: Floor | None):
        return None if f is None else {
            "repetitions": f.repetitions, "total_ms": f.mean_ms(),
            **{f"{p}_ms": f.mean_ms(p) for p in Floor.PARTS}}

    data = {
        "started": started.isoformat(), "finished": finished.isoformat(),
        "args": vars(a), "machine": facts,
        "documents": {d.label: {
            "bytes": d.size, "origin": d.origin,
            "iti41_1": phase(results[d.label]["411"]),
            "iti41_n": phase(results[d.label]["41n"]),
            "iti43_1": phase(results[d.label].get("431")),
            "iti43_n": phase(results[d.label].get("43n")),
            "floor": floor(results[d.label]["floor"])} for d in docs},
        "rss": {"baseline": baseline, "baseline_rollup": BASELINE_ROLLUP, "runs": [
            {**{k: v for k, v in vars(r).items() if k != "floor"}, "floor": floor(r.floor)}
            for r in large]},
    }
    with open(path, "w") as f:
        json.dump(data, f, indent=1, default=str)


# ----------------------------------------------------------------- run


def register_patients(url: str, n: int, seed: int) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    engine = make_engine(url)
    out = []
    try:
        with write_transaction(engine) as conn:
            while len(out) < n:
                cx = F.new_ins(rng)
                out.append((cx, store.add_patient(conn, parse_cx(cx).canonical)))
    finally:
        engine.dispose()
    return out


def _terminate(signum, frame) -> None:
    raise SystemExit(128 + signum)  # run the finally blocks: server, PostgreSQL, home


def run(a: argparse.Namespace) -> int:
    # SIGTERM, and SIGINT even when a non-interactive shell started us in the background
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    facts = machine_facts()
    started = dt.datetime.now().astimezone()
    docs = [d for d in documents(a.seed) if d.label in a.sizes]
    home = Path(work_dir("opendmp-bench-repo-"))
    facts["code"] = code_state()
    cluster = server = engine = None
    postmaster = None
    run_id = random.Random(a.seed).randint(1, 10 ** 6) * 10 + 1
    uid_root = f"1.2.250.1.999.{run_id}"
    try:
        if a.db == "postgresql":
            from .pg import BenchCluster
            cluster = BenchCluster()
            cluster.start()
            url = cluster.create_database("opendmp_bench_repo")
            postmaster = cluster.postmaster_pid
        else:
            url = f"sqlite:///{home / 'opendmp.sqlite3'}"
        migrate(url)
        facts["db"] = db_facts(a.db, url)
        log(f"machine {facts}")
        patients = register_patients(url, a.patients, a.seed)
        patient_cx = [cx for cx, _ in patients]
        server = ServerProcess(url, home=home, env={"OPENDMP_WORKERS": a.workers,
                                                    "OPENDMP_THREADS": a.threads,
                                                    "OPENDMP_MLLP_PORT": free_port(),
                                                    **a.server_env},
                               startup_timeout=60)
        server.start()
        facts["fs"] = file_system(home, home / "documents" / "staging")
        log(f"file system: {facts['fs']}")
        endpoint = server.url("/xds/repository")
        repo_uid = (home / "repository-unique-id").read_text().strip()
        log(f"server {server.base_url} ({a.workers} workers x {a.threads} threads), home {home}")
        engine = make_engine(url)
        results: dict[str, dict] = {}
        phase_no = 0
        wrk_dir = home / "wrk"

        def lopsided(r: Phase, clients: int) -> bool:
            """The kernel gave the connections to fewer workers than it could have (all
            four to one of the two: the run then measures a one-worker server)."""
            used = sum(1 for n in (r.connections or []) if n)
            return bool(r.connections) and used < min(clients, a.workers)

        def phase(job, clients: int, label: str, wrk_request: W.Request | None = None
                  ) -> Phase:
            """Measure ``job`` (httpx generator) or ``wrk_request`` (wrk)."""
            nonlocal phase_no
            spec = wrk_request.write(wrk_dir) if wrk_request is not None else None
            stored: list[str] = []
            attempts: list[Phase] = []
            for attempt in range(a.retries + 1):
                phase_no += 1
                busy = wait_quiet()
                if busy > 15:
                    log(f"  the machine is still {busy:.0f}% busy (other sessions)")
                spies = None
                if a.profile and clients > 1:
                    spies = P.start(server.proc.pid, Path(a.profile), label,
                                    a.seconds + a.warmup + 0.5)
                if spec is not None:
                    r = W.run_phase(wrk_request, spec, clients, a.seconds, a.warmup,
                                    server.proc.pid, postmaster, seed=a.seed * 10_000 + phase_no,
                                    exe=a.wrk, server_port=server.port)
                else:
                    r = C.run_phase(job, clients, a.seconds, a.warmup, server.proc.pid,
                                    postmaster, seed=a.seed * 10_000 + phase_no,
                                    server_port=server.port)
                if spies is not None:
                    log(f"  py-spy profile of {label}:\n" + P.finish(
                        spies, Path(a.profile) / f"{label}-summary.txt"))
                log(f"  {label:18} {clients} client(s): {r.rate:8,.1f}/s  p50 {_ms(r.pct(.5))} "
                    f"p99 {_ms(r.pct(.99))} mean {_ms(r.mean_ms)} ms  errors {r.errors}  CPU% "
                    f"srv {r.cpu['server']:.0f} {r.cpu['server_split']} connections "
                    f"{r.connections} pg "
                    f"{r.cpu['postgres']:.0f} cl "
                    f"{r.cpu['clients']:.0f} foreign {r.cpu['foreign']:.0f} all "
                    f"{r.cpu['machine']:.0f}"
                    + (f"\n    first error: {r.error_sample}" if r.errors else ""))
                stored += r.stored
                attempts.append(r)
                if not r.disturbed and not lopsided(r, clients):
                    break
                if attempt < a.retries:
                    log(f"  other processes used {r.cpu['foreign']:.0f}% of the machine: "
                        "run again" if r.disturbed else
                        f"  the {clients} connections went to {r.connections}: run again")
            # the least disturbed of the spread attempts is reported; the others are
            # listed as discarded
            best = min(attempts, key=lambda x: (lopsided(x, clients), x.cpu["foreign"]))
            best.stored = stored
            best.discarded = [x.rate for x in attempts if x is not best]
            return best

        def measure_document(d: Document, generator: str, doc_root: str, res: dict) -> None:
            """ITI-41 with 1 and n clients, then ITI-43 of what was stored, into ``res``;
            ``doc_root``: the OID under which this document's uniqueIds are made."""
            tag = d.label.replace(" ", "").replace("(", "-").replace(")", "")
            wrk = generator == "wrk"
            stored: list[str] = []
            job = Iti41Job(endpoint, patient_cx, d, doc_root)
            req = wrk_iti41(endpoint, patient_cx, d, doc_root) if wrk else None
            for key, clients in (("411", 1), ("41n", a.clients)):
                res[key] = phase(job, clients, f"ITI-41-{tag}", req)
                stored += res[key].stored
                if key == "411":   # the floor's second half, next to the 1-client run
                    os.sync()      # its fsync, not the write-back of the run's documents
                    wait_quiet()
                    after = measure_floor(engine, endpoint, d, home, *patients[0],
                                          f"{uid_root}.5.{phase_no}", a.floor_seconds / 2)
                    log(f"  floor after the 1-client run {after.mean_ms():.2f} ms (before: "
                        f"{res['floor'].mean_ms():.2f} ms)")
                    res["floor"].extend(after)
            if wrk:  # wrk does not tell which requests succeeded: the database does
                stored = stored_unique_ids(engine, doc_root)
                log(f"  {len(stored)} documents stored (repository_document, COMMITTED)")
            if not stored:
                log(f"  no {d.label} document stored: ITI-43 skipped")
                return
            # one full check of the bytes before measuring retrieves
            check = SoapClient(endpoint)
            try:
                _, got = retrieve(check, repo_uid, [stored[0]])
            finally:
                check.close()
            a_, b_, c_ = d.parts
            body_ = got[0].content if len(got) == 1 else b""
            head_ = a_ + stored[0].encode() + b_
            if not (body_.startswith(head_) and body_[len(head_) + len(SENTINEL_NIR):] == c_):
                raise RuntimeError(f"ITI-43 of {stored[0]} did not return the bytes sent")
            job = Iti43Job(endpoint, repo_uid, stored, d.size)
            req = wrk_iti43(endpoint, repo_uid, stored, d) if wrk else None
            for key, clients in (("431", 1), ("43n", a.clients)):
                res[key] = phase(job, clients, f"ITI-43-{tag}", req)

        columns: list[Document] = []   # one per document and generator
        for doc_no, d in enumerate(docs, 1):
            log(f"{d.label}: {d.size:,} bytes ({d.origin})")
            wait_quiet()
            floor = measure_floor(engine, endpoint, d, home, *patients[0],
                                  f"{uid_root}.2.{phase_no}", a.floor_seconds / 2)
            log(f"  floor {floor.mean_ms():.2f} ms = " + " + ".join(
                f"{p} {floor.mean_ms(p):.2f}" for p in Floor.PARTS)
                + f" ({floor.repetitions} reps)")
            for gen_no, gen in enumerate(a.generators, 1):
                col = d if len(a.generators) == 1 else replace(d, label=f"{d.label} ({gen})")
                columns.append(col)
                results[col.label] = {"floor": floor}
                measure_document(col, gen, f"{uid_root}.1.{doc_no}.{gen_no}",
                                 results[col.label])
        large: list[LargeRun] = []
        baseline = 0
        if a.large:
            log(f"worker RSS: restarting the server with 1 worker x {a.threads} threads")
            server.restart(env={"OPENDMP_WORKERS": 1})
            wait_quiet()
            baseline, large = measure_large(server, patient_cx, a.large, f"{uid_root}.3",
                                            docs[0], [d for d in docs if d.size >= MIB])
            log(f"  baseline RSS {baseline / MIB:.1f} MiB")
            server.stop()
            for r in large:
                if r.label in a.sizes:
                    continue
                wait_quiet()
                r.floor = measure_floor(engine, endpoint, docs[0], home, *patients[0],
                                        f"{uid_root}.4.{int(r.mb)}", 0,
                                        content=random.Random(7).randbytes(int(r.mb * MIB)))
                log(f"  floor {r.label}: {r.floor.mean_ms():.0f} ms = " + " + ".join(
                    f"{p} {r.floor.mean_ms(p):.1f}" for p in Floor.PARTS))
        finished = dt.datetime.now().astimezone()
        print(render(a, facts, columns, results, baseline, large, started, finished))
        if a.json:
            dump_json(a.json, a, facts, columns, results, baseline, large, started, finished)
    finally:
        if server is not None:
            server.stop()
        if engine is not None:
            engine.dispose()
        if cluster is not None:
            cluster.stop()
        if a.keep:
            log(f"--keep: server home left in {home}")
        else:
            shutil.rmtree(home, ignore_errors=True)
    return 0


def main(argv=None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
