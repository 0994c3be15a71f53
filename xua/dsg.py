"""XAdES-signed submission sets (IHE DSG, the DMP's rule against falsification): build
them (python-xmlsec) and verify them at ITI-41 (signxml + our own manifest check).

Standards: IHE ITI TF-3 §5.5 (DSG Document Content: XAdES signature, detached signature
with a ``ds:Manifest``, SubmissionSet signature), ITI TF-3 §4.2.3.2 (the signature is a
DocumentEntry: classCode ``urn:oid:1.3.6.1.4.1.19376.1.2.1.1.1`` "Digital Signature",
typeCode ``E1762`` (ASTM), formatCode ``http://www.w3.org/2000/09/xmldsig#`` — the DMP's —
or DSG's ``urn:ihe:iti:dsg:detached:2014``, mimeType ``text/xml``) linked to the
SubmissionSet by a ``urn:ihe:iti:2007:AssociationType:signs`` association
(research/anchors.md "Submission specifics"), W3C XMLDSig (§5.1 Manifest: its references
are validated by the application) and ETSI TS 101 903 XAdES (SignedProperties,
SigningCertificate).

The signature document (the shape the DMP's DRIMbox produces, ansforge/DRIM-M_DRIMbox
``XadesSign.java``)::

    ds:Signature Id=...
      ds:SignedInfo   Reference #<Manifest Id> (Type ...xmldsig#Manifest)
                      Reference #<SignedProperties Id> (Type ...01903#SignedProperties)
      ds:SignatureValue, ds:KeyInfo/ds:X509Data/ds:X509Certificate (signer first)
      ds:Object/xades:QualifyingProperties/xades:SignedProperties (SigningTime, SigningCertificate)
      ds:Object/ds:Manifest Id=...
          Reference URI="urn:oid:<SubmissionSet uniqueId>"    (binds the signature to the set)
          Reference URI="urn:oid:<document uniqueId>" DigestMethod/DigestValue   (each document)

Verification (:func:`verify_signature_document`), pinned as in soapstack/wssecurity.py:
the root is the ``ds:Signature``; no two elements share an ID; SignedInfo has exactly the
two references, each designating the element of the expected kind at its expected place
(the Manifest in a ``ds:Object`` of this Signature, the SignedProperties in its
QualifyingProperties); signxml verifies the signature with the signer certificate once
that certificate chains to the trust store (:mod:`soapstack.x509chain`), and the manifest
and signed properties are then read **only** from what signxml returns as signed. XAdES:
the SigningCertificate digest must be the signer's. The manifest must name the submission
set and every other document of the submission exactly once, nothing else, with the
digest of the bytes the repository stored (SHA-256, computed while streaming; SHA-1, the
one the repository computes anyway, only with ``OPENDMP_DSG_ALLOW_SHA1=1`` for legacy
signers). A manifest reference may carry a c14n transform (DRIMbox signs canonicalized
CDAs and sends them canonical): the digest is compared with the bytes as sent, so such a
document must be sent in canonical form. The SubmissionSet reference's DigestValue is not
a content digest (a SubmissionSet has no bytes; DRIMbox writes ``AA==``) and is not
checked: the reference binds the signature to that uniqueId.

Configuration (:class:`DsgSettings`): ``OPENDMP_DSG`` = ``required`` | ``optional`` |
``off``; ``OPENDMP_DSG_TRUST`` the PEM trust anchors (e.g. the IGC Santé roots). Default:
``required`` when ``OPENDMP_DSG_TRUST`` is set with the DMP value sets (DMP mode),
otherwise ``optional`` trusting the development CA of ``$OPENDMP_HOME/pki`` (``opendmp ca``).
"""
from __future__ import annotations

import base64
import hashlib
import io
import logging
import os
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Mapping

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from lxml import etree

from registry import errors as E
from registry import vocabulary as V
from registry.model import Association, Code, DocumentEntry, LocalizedString, Slot, Submission
from soapstack.x509chain import ChainError, load_anchors, verify_chain

log = logging.getLogger("opendmp.dsg")

DS = "http://www.w3.org/2000/09/xmldsig#"
XADES_NAMESPACES = ("http://uri.etsi.org/01903/v1.3.2#", "http://uri.etsi.org/01903/v1.1.1#")
XADES = XADES_NAMESPACES[0]
MANIFEST_TYPE = DS + "Manifest"
SIGNED_PROPERTIES_TYPES = ("http://uri.etsi.org/01903#SignedProperties",
                           "http://uri.etsi.org/01903/v1.1.1#SignedProperties")
SIGNATURE_CLASS_CODES = ("urn:oid:1.3.6.1.4.1.19376.1.2.1.1.1", "1.3.6.1.4.1.19376.1.2.1.1.1")
SIGNATURE_FORMAT_CODES = ("http://www.w3.org/2000/09/xmldsig#", "urn:ihe:iti:dsg:detached:2014")
#: ASTM E1762 / ISO 17090-4 "Source" purpose of signature (DSG's CommitmentTypeIndication)
PURPOSE_SOURCE = "urn:oid:1.2.840.10065.1.12.1.14"
REPOSITORY_METADATA_ERROR = "XDSRepositoryMetadataError"
MODES = ("required", "optional", "off")

SHA256 = "http://www.w3.org/2001/04/xmlenc#sha256"
SHA1 = DS + "sha1"
_C14N_TRANSFORMS = ("http://www.w3.org/TR/2001/REC-xml-c14n-20010315",
                    "http://www.w3.org/TR/2001/REC-xml-c14n-20010315#WithComments",
                    "http://www.w3.org/2001/10/xml-exc-c14n#",
                    "http://www.w3.org/2001/10/xml-exc-c14n#WithComments",
                    "http://www.w3.org/2006/12/xml-c14n11")


class DsgError(ValueError):
    """The submission set's signature is refused (the message says why)."""


# ============================================================================ configuration

@dataclass(frozen=True)
class DsgSettings:
    mode: str
    anchors: tuple[x509.Certificate, ...] = ()
    allow_sha1: bool = False
    #: largest signature document kept in memory for verification
    max_signature_bytes: int = 1024 * 1024

    @classmethod
    def from_env(cls, env: Mapping[str, str], home: Path) -> "DsgSettings":
        trust = (env.get("OPENDMP_DSG_TRUST") or "").strip()
        dmp = (env.get("OPENDMP_VALUE_SETS") or "dmp").strip().lower() == "dmp"
        mode = (env.get("OPENDMP_DSG") or ("required" if trust and dmp else "optional")
                ).strip().lower()
        if mode not in MODES:
            raise ValueError(f"OPENDMP_DSG={mode!r}: expected one of {', '.join(MODES)}")
        if mode == "off":
            anchors: tuple[x509.Certificate, ...] = ()
        elif trust:
            anchors = load_anchors(trust)
        else:  # development: the development CA (opendmp ca init), created if missing
            from atna.pki import init_ca, pki_dir

            anchors = load_anchors([init_ca(pki_dir(home))])
            log.warning("DSG %s, trusting the development CA of %s/pki "
                        "(set OPENDMP_DSG_TRUST for production)", mode, home)
        return cls(mode, anchors,
                   allow_sha1=env.get("OPENDMP_DSG_ALLOW_SHA1", "0") in ("1", "true", "yes"),
                   max_signature_bytes=int(env.get("OPENDMP_DSG_MAX_BYTES", 1024 * 1024)))


@lru_cache(maxsize=4)
def _cached_settings(items: tuple[tuple[str, str], ...]) -> DsgSettings:
    env = dict(items)
    return DsgSettings.from_env(env, Path(env.get("OPENDMP_HOME") or "var").resolve())


def settings_from_env(env: Mapping[str, str] | None = None) -> DsgSettings:
    """The settings of this process's environment (trust store read once)."""
    env = os.environ if env is None else env
    keys = ("OPENDMP_DSG", "OPENDMP_DSG_TRUST", "OPENDMP_VALUE_SETS", "OPENDMP_HOME",
            "OPENDMP_DSG_ALLOW_SHA1", "OPENDMP_DSG_MAX_BYTES")
    return _cached_settings(tuple((k, env[k]) for k in keys if k in env))


# ============================================================================ metadata

def _code_in(code: Code | None, values: tuple[str, ...]) -> bool:
    return code is not None and code.code in values


def submission_set_signatures(sub: Submission) -> list[DocumentEntry]:
    """DocumentEntries that sign the submission set (source of a ``signs`` association
    whose target is the SubmissionSet)."""
    ss = sub.submission_set
    if ss is None:
        return []
    sources = {a.source for a in sub.associations if a.type == V.SIGNS and a.target == ss.id}
    return [de for de in sub.documents if de.id in sources]


def metadata_problems(de: DocumentEntry) -> list[str]:
    out = []
    if not _code_in(de.class_code, SIGNATURE_CLASS_CODES):
        out.append(f"classCode {de.class_code.code if de.class_code else None} is not "
                   f"{SIGNATURE_CLASS_CODES[0]} (Digital Signature)")
    if not _code_in(de.format_code, SIGNATURE_FORMAT_CODES):
        out.append(f"formatCode {de.format_code.code if de.format_code else None} is not "
                   f"{SIGNATURE_FORMAT_CODES[0]}")
    if (de.mime_type or "").split(";")[0].strip().lower() not in ("text/xml", "application/xml"):
        out.append(f"mimeType {de.mime_type} is not text/xml")
    return out


# ============================================================================ verification

@dataclass(frozen=True)
class DocumentDigests:
    """What the repository computed while storing one document."""

    sha1_hex: str
    sha256: bytes | None = None


@dataclass(frozen=True)
class VerifiedSignature:
    signer: x509.Certificate
    signing_time: str | None
    covered: tuple[str, ...]  # document uniqueIds


def _safe_parse(data: bytes) -> etree._Element:
    from soapstack.xml import XmlRejected, parse_xml

    try:
        return parse_xml(data)
    except XmlRejected as exc:
        raise DsgError(f"the signature document is not acceptable XML: {exc}") from None
    except etree.XMLSyntaxError as exc:
        raise DsgError(f"the signature document is not well-formed XML: {exc}") from None


def _ids(root: etree._Element) -> dict[str, etree._Element]:
    seen: dict[str, etree._Element] = {}
    for el in root.iter():
        if not isinstance(el.tag, str):
            continue
        for name in ("Id", "ID", "id"):
            value = el.get(name)
            if value is None:
                continue
            if value in seen:
                raise DsgError(f"duplicate ID {value!r} in the signature document (signature "
                               "wrapping is refused)")
            seen[value] = el
    return seen


def _certificates(signature: etree._Element) -> list[x509.Certificate]:
    certs = []
    for el in signature.findall(f"{{{DS}}}KeyInfo/{{{DS}}}X509Data/{{{DS}}}X509Certificate"):
        try:
            certs.append(x509.load_der_x509_certificate(
                base64.b64decode("".join((el.text or "").split()))))
        except ValueError:
            raise DsgError("a ds:X509Certificate of the signature is not a certificate") from None
    if not certs:
        raise DsgError("the signature carries no signer certificate (ds:KeyInfo/ds:X509Data/"
                       "ds:X509Certificate)")
    return certs


def _pinned_references(signature: etree._Element, ids) -> tuple[etree._Element, etree._Element]:
    """SignedInfo must have exactly the Manifest and SignedProperties references, each
    designating the element of that kind where DSG/XAdES put it in *this* Signature."""
    refs = signature.findall(f"{{{DS}}}SignedInfo/{{{DS}}}Reference")
    manifest = props = None
    for ref in refs:
        uri = ref.get("URI") or ""
        target = ids.get(uri[1:]) if uri.startswith("#") else None
        kind = ref.get("Type")
        parent = target.getparent() if target is not None else None
        if (target is not None and target.tag == f"{{{DS}}}Manifest" and kind in (MANIFEST_TYPE, None)
                and parent is not None and parent.tag == f"{{{DS}}}Object"
                and parent.getparent() is signature and manifest is None):
            manifest = target
        elif (target is not None and etree.QName(target).localname == "SignedProperties"
              and etree.QName(target).namespace in XADES_NAMESPACES
              and kind in (*SIGNED_PROPERTIES_TYPES, None) and parent is not None
              and etree.QName(parent).localname == "QualifyingProperties"
              and parent.getparent() is not None
              and parent.getparent().tag == f"{{{DS}}}Object"
              and parent.getparent().getparent() is signature and props is None):
            props = target
        else:
            raise DsgError(f"the signature's reference {uri!r} is not to its ds:Manifest nor "
                           "to its XAdES SignedProperties (nothing else is accepted)")
    if manifest is None or props is None or len(refs) != 2:
        raise DsgError("the signature must reference exactly its ds:Manifest (IHE DSG) and its "
                       "XAdES SignedProperties")
    return manifest, props


def _signxml_verify(root, signer: x509.Certificate, allow_sha1: bool, when: datetime):
    from signxml import DigestAlgorithm, SignatureConfiguration, SignatureMethod, XMLVerifier
    from signxml.exceptions import InvalidCertificate, InvalidDigest, InvalidInput, InvalidSignature

    methods = {SignatureMethod.RSA_SHA256, SignatureMethod.RSA_SHA384, SignatureMethod.RSA_SHA512,
               SignatureMethod.ECDSA_SHA256, SignatureMethod.ECDSA_SHA384,
               SignatureMethod.ECDSA_SHA512}
    digests = {DigestAlgorithm.SHA256, DigestAlgorithm.SHA384, DigestAlgorithm.SHA512}
    if allow_sha1:
        methods.add(SignatureMethod.RSA_SHA1)
        digests.add(DigestAlgorithm.SHA1)
    config = SignatureConfiguration(expect_references=2, signature_methods=frozenset(methods),
                                    digest_algorithms=frozenset(digests), verification_time=when)
    try:
        return XMLVerifier().verify(root, x509_cert=signer, expect_config=config)
    except InvalidDigest as exc:
        raise DsgError(f"the signature does not verify: {exc} (the signed manifest or "
                       "properties were changed)") from None
    except (InvalidSignature, InvalidCertificate) as exc:
        raise DsgError(f"the signature does not verify: {exc}") from None
    except InvalidInput as exc:
        if "SHA1" in str(exc) or "forbidden" in str(exc).lower():
            raise DsgError(f"the signature uses SHA-1 ({exc}); RSA-SHA256 or stronger is "
                           "required (OPENDMP_DSG_ALLOW_SHA1=1 for legacy signers)") from None
        raise DsgError(f"the signature is malformed: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - signxml raises assorted errors on junk
        raise DsgError(f"the signature cannot be verified: {type(exc).__name__}: {exc}") from None


def _check_signing_certificate(props: etree._Element, signer: x509.Certificate) -> str | None:
    """XAdES SigningCertificate(V2)/Cert/CertDigest must be the signer's; returns
    SigningTime (read from the signed properties)."""
    ns = etree.QName(props).namespace
    ssp = props.find(f"{{{ns}}}SignedSignatureProperties")
    if ssp is None:
        raise DsgError("the XAdES SignedProperties have no SignedSignatureProperties")
    certs = ssp.findall(f"{{{ns}}}SigningCertificate/{{{ns}}}Cert") + \
        ssp.findall(f"{{{ns}}}SigningCertificateV2/{{{ns}}}Cert")
    if not certs:
        raise DsgError("the XAdES SignedProperties have no SigningCertificate")
    digest = certs[0].find(f"{{{ns}}}CertDigest")
    method = digest.find(f"{{{DS}}}DigestMethod") if digest is not None else None
    value = digest.findtext(f"{{{DS}}}DigestValue") if digest is not None else None
    algorithm = {SHA256: hashes.SHA256(), SHA1: hashes.SHA1(),
                 "http://www.w3.org/2001/04/xmlenc#sha512": hashes.SHA512()}.get(
        method.get("Algorithm") if method is not None else "")
    if algorithm is None or value is None:
        raise DsgError("the XAdES SigningCertificate has no usable CertDigest")
    if base64.b64decode("".join(value.split())) != signer.fingerprint(algorithm):
        raise DsgError("the XAdES SigningCertificate is not the certificate that signed")
    return ssp.findtext(f"{{{ns}}}SigningTime")


def _uid_of(uri: str) -> str:
    return uri[8:] if uri.lower().startswith("urn:oid:") else uri


def _check_manifest(manifest: etree._Element, ss_unique_id: str,
                    documents: Mapping[str, DocumentDigests], allow_sha1: bool) -> tuple[str, ...]:
    refs = manifest.findall(f"{{{DS}}}Reference")
    seen: set[str] = set()
    for ref in refs:
        uid = _uid_of(ref.get("URI") or "")
        if uid in seen:
            raise DsgError(f"the manifest references {uid} twice")
        seen.add(uid)
        if uid == ss_unique_id:
            continue
        if uid not in documents:
            raise DsgError(f"the manifest references {uid or '(no URI)'}, which is neither the "
                           "submission set nor one of its documents")
        transforms = [t.get("Algorithm") for t in
                      ref.findall(f"{{{DS}}}Transforms/{{{DS}}}Transform")]
        if len(transforms) > 1 or any(t not in _C14N_TRANSFORMS for t in transforms):
            raise DsgError(f"the manifest reference to {uid} has transforms {transforms}: only "
                           "none or one canonicalization is accepted")
        method = ref.find(f"{{{DS}}}DigestMethod")
        algorithm = method.get("Algorithm") if method is not None else None
        value = base64.b64decode("".join((ref.findtext(f"{{{DS}}}DigestValue") or "").split()))
        digests = documents[uid]
        if algorithm == SHA256 and digests.sha256 is not None:
            actual = digests.sha256
        elif algorithm == SHA1 and allow_sha1:
            actual = bytes.fromhex(digests.sha1_hex)
        else:
            raise DsgError(f"the manifest reference to {uid} uses digest {algorithm}: SHA-256 is "
                           "required (SHA-1 with OPENDMP_DSG_ALLOW_SHA1=1)")
        if value != actual:
            raise DsgError(f"document {uid} does not match its digest in the signed manifest "
                           "(it was changed after signing)"
                           + (" — a c14n transform is applied as identity: send the document in "
                              "canonical form" if transforms else ""))
    if ss_unique_id not in seen:
        raise DsgError(f"the manifest does not reference the submission set {ss_unique_id}")
    missing = sorted(set(documents) - seen)
    if missing:
        raise DsgError(f"the signature does not cover document(s) {', '.join(missing)} of the "
                       "submission (added after signing?)")
    return tuple(sorted(seen - {ss_unique_id}))


def verify_signature_document(data: bytes, ss_unique_id: str,
                              documents: Mapping[str, DocumentDigests],
                              settings: DsgSettings, now: datetime | None = None
                              ) -> VerifiedSignature:
    """Verify a SubmissionSet signature document against the submission's documents
    (uniqueId -> digests of the stored bytes). Raises :class:`DsgError`."""
    now = now or datetime.now(timezone.utc)
    root = _safe_parse(data)
    if root.tag != f"{{{DS}}}Signature":
        raise DsgError(f"the signature document's root is {etree.QName(root).localname}, not "
                       "ds:Signature (IHE DSG detached signature)")
    ids = _ids(root)
    manifest, props = _pinned_references(root, ids)
    certs = _certificates(root)
    try:
        verify_chain(certs[0], certs[1:], settings.anchors, now)
    except ChainError as exc:
        raise DsgError(f"the signer is not trusted: {exc}") from None
    results = _signxml_verify(root, certs[0], settings.allow_sha1, now)
    signed = {r.signed_xml.tag: r.signed_xml for r in results if r.signed_xml is not None}
    signed_manifest = signed.get(f"{{{DS}}}Manifest")
    signed_props = next((v for k, v in signed.items()
                         if etree.QName(k).localname == "SignedProperties"), None)
    if signed_manifest is None or signed_props is None or \
            signed_manifest.get("Id") != manifest.get("Id") or \
            signed_props.get("Id") != props.get("Id"):
        raise DsgError("the signature does not cover its manifest and signed properties")
    signing_time = _check_signing_certificate(signed_props, certs[0])
    covered = _check_manifest(signed_manifest, ss_unique_id, documents, settings.allow_sha1)
    return VerifiedSignature(certs[0], signing_time, covered)


# ============================================================================ the ITI-41 hook

@dataclass
class Intake:
    """What repository/iti41.py hands the DSG check while it stores a submission: every
    chunk of the documents of a *signed* submission (SHA-256 of the others, the bytes of
    the signature documents), then :meth:`check` once all are stored. An unsigned
    submission in ``optional`` mode, or ``off``: nothing is hashed or kept."""

    settings: DsgSettings
    sub: Submission
    signatures: list[DocumentEntry] = field(default_factory=list)
    _sha256: dict[str, "hashlib._Hash"] = field(default_factory=dict)
    _kept: dict[str, list[bytes]] = field(default_factory=dict)
    _sizes: dict[str, int] = field(default_factory=dict)

    @classmethod
    def for_submission(cls, sub: Submission, settings: DsgSettings | None = None) -> "Intake":
        settings = settings or settings_from_env()
        intake = cls(settings, sub)
        if settings.mode != "off":
            intake.signatures = submission_set_signatures(sub)
            sig_ids = {de.id for de in intake.signatures}
            for de in sub.documents if intake.signatures else ():
                if de.id in sig_ids:
                    intake._kept[de.id], intake._sizes[de.id] = [], 0
                else:
                    intake._sha256[de.id] = hashlib.sha256()
        return intake

    def feed(self, de: DocumentEntry, chunk: bytes) -> None:
        h = self._sha256.get(de.id)
        if h is not None:
            h.update(chunk)
            return
        kept = self._kept.get(de.id)
        if kept is not None:
            self._sizes[de.id] += len(chunk)
            if self._sizes[de.id] <= self.settings.max_signature_bytes:
                kept.append(chunk)

    def check(self) -> list[E.XdsError]:
        """XDSRepositoryMetadataError(s) refusing the submission, or []. Runs after every
        document is stored (de.hash is then the stored bytes' SHA-1)."""
        if self.settings.mode == "off":
            return []
        ss = self.sub.submission_set
        if not self.signatures:
            if self.settings.mode == "required" and ss is not None:
                return [E.XdsError(REPOSITORY_METADATA_ERROR,
                                   f"submission set {ss.unique_id} is not signed: a signature "
                                   "DocumentEntry (IHE DSG, classCode "
                                   f"{SIGNATURE_CLASS_CODES[0]}) with a signs association to "
                                   "the submission set is required (OPENDMP_DSG=required)",
                                   ss.unique_id)]
            return []
        documents = {de.unique_id: DocumentDigests(de.hash or "", h.digest())
                     for de in self.sub.documents if (h := self._sha256.get(de.id)) is not None}
        errors = []
        for sig in self.signatures:
            where = f"signature DocumentEntry {sig.id} (IHE DSG)"
            problems = metadata_problems(sig)
            if problems:
                errors.append(E.XdsError(REPOSITORY_METADATA_ERROR,
                                         f"{where}: " + "; ".join(problems), sig.id))
                continue
            if self._sizes.get(sig.id, 0) > self.settings.max_signature_bytes:
                errors.append(E.XdsError(REPOSITORY_METADATA_ERROR,
                                         f"{where}: larger than "
                                         f"{self.settings.max_signature_bytes} bytes", sig.id))
                continue
            try:
                verified = verify_signature_document(b"".join(self._kept[sig.id]),
                                                     ss.unique_id, documents, self.settings)
            except DsgError as exc:
                errors.append(E.XdsError(REPOSITORY_METADATA_ERROR,
                                         f"{where}: the submission set's signature is refused: "
                                         f"{exc}", sig.id))
                continue
            log.info("submission set %s signed by %s (%d document(s))", ss.unique_id,
                     verified.signer.subject.rfc4514_string(), len(verified.covered))
        return errors


# ============================================================================ signing

@dataclass(frozen=True)
class Signer:
    """A signing key and its certificate (PEM), plus any intermediate certificates."""

    key_pem: bytes
    cert_pem: bytes

    @classmethod
    def from_files(cls, key: str | Path, cert: str | Path) -> "Signer":
        return cls(Path(key).read_bytes(), Path(cert).read_bytes())

    @property
    def certificates(self) -> list[x509.Certificate]:
        return x509.load_pem_x509_certificates(self.cert_pem)


def _xmlsec_method(cert: x509.Certificate):
    import xmlsec
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    key = cert.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey):
        return xmlsec.Transform.ECDSA_SHA256
    if isinstance(key, rsa.RSAPublicKey):
        return xmlsec.Transform.RSA_SHA256
    raise ValueError(f"unsupported signing key type {type(key).__name__}")


_local = threading.local()
_callbacks_lock = threading.Lock()
_callbacks_registered = False


class _manifest_payloads:
    """Serve ``urn:oid:`` manifest URIs to xmlsec from memory while one signature is made
    (python-xmlsec IO callbacks are process-wide: registered once, data per thread)."""

    def __init__(self, payloads: Mapping[str, bytes]) -> None:
        self.payloads = {k.encode(): v for k, v in payloads.items()}

    def __enter__(self):
        global _callbacks_registered
        import xmlsec

        with _callbacks_lock:
            if not _callbacks_registered:  # after the defaults, so that ours are asked first
                xmlsec.register_default_callbacks()
                xmlsec.register_callbacks(
                    lambda uri: uri in getattr(_local, "payloads", {}),
                    lambda uri: io.BytesIO(_local.payloads[uri]),
                    lambda stream, buffer: stream.readinto(buffer),
                    lambda stream: stream.close())
                _callbacks_registered = True
        _local.payloads = self.payloads
        return self

    def __exit__(self, *exc) -> None:
        _local.payloads = {}


def sign_documents(ss_unique_id: str, documents: Mapping[str, bytes], signer: Signer,
                   signing_time: datetime | None = None) -> bytes:
    """A DSG SubmissionSet signature (XAdES, detached, manifest of SHA-256 digests) over
    ``documents`` (uniqueId -> bytes), signed with python-xmlsec. See the module text."""
    import xmlsec

    certs = signer.certificates
    cert = certs[0]
    suffix = uuid.uuid4().hex
    sig_id, manifest_id, props_id = f"sig-{suffix}", f"IHEManifest-{suffix}", f"xades-{suffix}"
    signature = xmlsec.template.create(etree.Element("placeholder"), xmlsec.Transform.EXCL_C14N,
                                       _xmlsec_method(cert), id=sig_id, ns="ds")
    for uri, kind in ((f"#{manifest_id}", MANIFEST_TYPE),
                      (f"#{props_id}", SIGNED_PROPERTIES_TYPES[0])):
        ref = xmlsec.template.add_reference(signature, xmlsec.Transform.SHA256, uri=uri,
                                            type=kind)
        xmlsec.template.add_transform(ref, xmlsec.Transform.EXCL_C14N)
    x509_data = xmlsec.template.add_x509_data(xmlsec.template.ensure_key_info(signature))
    for c in certs:
        etree.SubElement(x509_data, f"{{{DS}}}X509Certificate").text = \
            base64.b64encode(c.public_bytes(Encoding.DER)).decode()
    # XAdES qualifying properties (ETSI TS 101 903 §7.2.1/7.2.2, DSG commitment "Source")
    obj = etree.SubElement(signature, f"{{{DS}}}Object")
    qp = etree.SubElement(obj, f"{{{XADES}}}QualifyingProperties", Target=f"#{sig_id}",
                          nsmap={"xades": XADES})
    props = etree.SubElement(qp, f"{{{XADES}}}SignedProperties", Id=props_id)
    ssp = etree.SubElement(props, f"{{{XADES}}}SignedSignatureProperties")
    when = signing_time or datetime.now(timezone.utc)
    etree.SubElement(ssp, f"{{{XADES}}}SigningTime").text = when.strftime("%Y-%m-%dT%H:%M:%SZ")
    cert_el = etree.SubElement(etree.SubElement(ssp, f"{{{XADES}}}SigningCertificate"),
                               f"{{{XADES}}}Cert")
    digest = etree.SubElement(cert_el, f"{{{XADES}}}CertDigest")
    etree.SubElement(digest, f"{{{DS}}}DigestMethod", Algorithm=SHA256)
    etree.SubElement(digest, f"{{{DS}}}DigestValue").text = \
        base64.b64encode(cert.fingerprint(hashes.SHA256())).decode()
    serial = etree.SubElement(cert_el, f"{{{XADES}}}IssuerSerial")
    etree.SubElement(serial, f"{{{DS}}}X509IssuerName").text = cert.issuer.rfc4514_string()
    etree.SubElement(serial, f"{{{DS}}}X509SerialNumber").text = str(cert.serial_number)
    etree.SubElement(etree.SubElement(ssp, f"{{{XADES}}}SignaturePolicyIdentifier"),
                     f"{{{XADES}}}SignaturePolicyImplied")
    commitment = etree.SubElement(etree.SubElement(props, f"{{{XADES}}}SignedDataObjectProperties"),
                                  f"{{{XADES}}}CommitmentTypeIndication")
    etree.SubElement(etree.SubElement(commitment, f"{{{XADES}}}CommitmentTypeId"),
                     f"{{{XADES}}}Identifier").text = PURPOSE_SOURCE
    etree.SubElement(commitment, f"{{{XADES}}}AllSignedDataObjects")
    # the manifest: the submission set, then each document's SHA-256
    manifest = etree.SubElement(etree.SubElement(signature, f"{{{DS}}}Object"),
                                f"{{{DS}}}Manifest", Id=manifest_id)
    for uid in [ss_unique_id, *documents]:
        ref = etree.SubElement(manifest, f"{{{DS}}}Reference", URI=f"urn:oid:{uid}")
        etree.SubElement(ref, f"{{{DS}}}DigestMethod", Algorithm=SHA256)
        etree.SubElement(ref, f"{{{DS}}}DigestValue")
    # the template, re-parsed as a document of its own whose root is the Signature
    root = etree.fromstring(etree.tostring(signature))
    ctx = xmlsec.SignatureContext()
    ctx.register_id(root.find(f"{{{DS}}}Object/{{{DS}}}Manifest"), "Id")
    ctx.register_id(root.find(f"{{{DS}}}Object/{{{XADES}}}QualifyingProperties/"
                              f"{{{XADES}}}SignedProperties"), "Id")
    ctx.key = xmlsec.Key.from_memory(signer.key_pem, xmlsec.KeyFormat.PEM)
    # xmlsec digests the manifest's references itself (XMLDSig §5.1), reading each
    # ``urn:oid:<uniqueId>`` from ``documents`` (the SubmissionSet's: no bytes, empty)
    with _manifest_payloads({f"urn:oid:{u}": d for u, d in
                             [(ss_unique_id, b""), *documents.items()]}):
        ctx.sign(root)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def sign_submission(sub: Submission, contents: Mapping[str, bytes], signer: Signer,
                    ) -> tuple[DocumentEntry, bytes]:
    """Sign ``sub`` (its documents' bytes by DocumentEntry id in ``contents``): returns the
    signature DocumentEntry and bytes, and adds them to ``sub`` with the HasMember and
    ``signs`` associations (the DMP's signed submission set). The signature entry takes
    the patient, confidentiality, facility, practice setting, author and language of the
    first document."""
    ss = sub.submission_set
    if ss is None or not sub.documents:
        raise ValueError("a submission set with documents is needed to sign")
    by_uid = {de.unique_id: contents[de.id] for de in sub.documents}
    data = sign_documents(ss.unique_id, by_uid, signer)
    first = sub.documents[0]
    now = datetime.now(timezone.utc).strftime("%Y%m%d%H%M%S")
    sig = DocumentEntry(
        id=f"urn:uuid:{uuid.uuid4()}", object_type=V.STABLE_DOCUMENT, mime_type="text/xml",
        unique_id=f"2.25.{uuid.uuid4().int}", patient_id=first.patient_id,
        source_patient_id=first.source_patient_id,
        source_patient_info=list(first.source_patient_info),
        title=[LocalizedString("Signature du lot de soumission")],
        class_code=Code(SIGNATURE_CLASS_CODES[0], "URN", [LocalizedString("Digital Signature")]),
        type_code=Code("E1762", "ASTM", [LocalizedString("Full Document")]),
        format_code=Code(SIGNATURE_FORMAT_CODES[0], "URN",
                         [LocalizedString("Default signature style")]),
        confidentiality_codes=list(first.confidentiality_codes),
        healthcare_facility_type_code=first.healthcare_facility_type_code,
        practice_setting_code=first.practice_setting_code,
        authors=list(first.authors), creation_time=now, language_code=first.language_code)
    sub.documents.append(sig)
    sub.associations.append(Association(id=f"urn:uuid:{uuid.uuid4()}", type=V.HAS_MEMBER,
                                        source=ss.id, target=sig.id,
                                        extra_slots=[Slot("SubmissionSetStatus", ["Original"])]))
    sub.associations.append(Association(id=f"urn:uuid:{uuid.uuid4()}", type=V.SIGNS,
                                        source=sig.id, target=ss.id))
    return sig, data


__all__ = ["DocumentDigests", "DsgError", "DsgSettings", "Intake", "Signer", "VerifiedSignature", "sign_documents",
           "sign_submission", "settings_from_env", "submission_set_signatures",
           "verify_signature_document"]
