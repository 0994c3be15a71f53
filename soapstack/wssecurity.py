"""Verification of the WS-Security header of an incoming SOAP 1.2 request.

Standards: OASIS WSS 1.1 SOAP Message Security (§5 the ``wsse:Security`` header, §8
signatures, §10 ``wsu:Timestamp``, §12 error codes), WSS X.509 Token Profile 1.1
(``wsse:BinarySecurityToken``), WSS SAML Token Profile 1.1 (a SAML 2.0 assertion in the
header), SAML 2.0 Core (§2.3.3 Assertion, §2.5 Conditions, §2.7.2 AuthnStatement) and
IHE ITI TF-2b §3.40 (XUA, ITI-40: the X-Service Provider answers a SOAP fault whose
subcode is one of the WSS error codes).

What is verified (research/deps.md §3 — signxml, pinned location, signed data only):

* exactly one ``wsse:Security`` header, at most one ``saml2:Assertion`` in the whole
  message header, a direct child of ``wsse:Security``; no two elements of the message
  carry the same ``ID``/``Id``/``wsu:Id`` value (duplicate IDs are how wrapping attacks
  choose what the verifier digests);
* the assertion's enveloped signature: a ``ds:Signature`` child of the Assertion itself,
  exactly one Reference whose URI is ``#`` + the Assertion's ID, verified with signxml
  against the *trusted* IdP certificates only, RSA-SHA256 (or stronger) unless SHA-1 is
  explicitly allowed for legacy partners; every later check reads **only** the
  ``signed_xml`` signxml returns, never the envelope's copy;
* SAML: Version 2.0, Issuer, IssueInstant within the clock skew, Conditions
  NotBefore/NotOnOrAfter, AudienceRestriction against the configured audiences, Subject
  with a NameID, exactly one AuthnStatement with one AuthnContextClassRef; the IdP
  certificate valid now;
* ``wsu:Timestamp`` (when present, or when required): Created not in the future,
  Expires not passed (both with the skew);
* an optional message signature (a ``ds:Signature`` child of ``wsse:Security``): key
  from a ``wsse:BinarySecurityToken`` (X.509v3) referenced by a
  ``wsse:SecurityTokenReference``, that certificate trusted (a configured client
  certificate, a trusted IdP, or the assertion's holder-of-key certificate); exactly the
  references ``#<Body wsu:Id>`` and ``#<Timestamp wsu:Id>`` where Body is the
  Envelope's own Body and Timestamp the Security header's own Timestamp.

Every refusal is a :class:`SecurityFault` (a SOAP ``Sender`` fault whose subcode is the
WSS error code) raised before the request reaches an actor.
"""
from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Iterable

from cryptography import x509
from lxml import etree

from .envelope import SoapFault
from .namespaces import SOAP12, WSSE, WSU, qn

SAML2 = "urn:oasis:names:tc:SAML:2.0:assertion"
DS = "http://www.w3.org/2000/09/xmldsig#"
X509V3 = ("http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-x509-token-profile-1.0"
          "#X509v3")
HOLDER_OF_KEY = "urn:oasis:names:tc:SAML:2.0:cm:holder-of-key"
SECURITY = qn(WSSE, "Security")
ASSERTION = qn(SAML2, "Assertion")
SIGNATURE = qn(DS, "Signature")

# WSS 1.1 SOAP Message Security §12 (used as SOAP 1.2 Sender subcodes, ITI TF-2b §3.40)
UNSUPPORTED_SECURITY_TOKEN = qn(WSSE, "UnsupportedSecurityToken")
UNSUPPORTED_ALGORITHM = qn(WSSE, "UnsupportedAlgorithm")
INVALID_SECURITY = qn(WSSE, "InvalidSecurity")
INVALID_SECURITY_TOKEN = qn(WSSE, "InvalidSecurityToken")
FAILED_AUTHENTICATION = qn(WSSE, "FailedAuthentication")
FAILED_CHECK = qn(WSSE, "FailedCheck")
SECURITY_TOKEN_UNAVAILABLE = qn(WSSE, "SecurityTokenUnavailable")
MESSAGE_EXPIRED = qn(WSSE, "MessageExpired")

# ``id`` (lower case) is left out: ebRIM repeats it by design (an ITI-41 xdsb:Document/@id
# equals its ExtrinsicObject/@id); signxml refuses an ambiguous reference on it anyway.
_ID_ATTRS = ("ID", "Id", qn(WSU, "Id"), "{http://www.w3.org/XML/1998/namespace}id")


class SecurityFault(SoapFault):
    """A refused WS-Security header: SOAP 1.2 Sender fault with a WSS subcode."""

    def __init__(self, reason: str, subcode: str = INVALID_SECURITY) -> None:
        super().__init__(reason, code="Sender", subcode=subcode)


@dataclass(frozen=True)
class SecurityPolicy:
    """What :func:`verify_security` accepts."""

    #: certificates of the identity providers whose assertions are trusted (pinned).
    trusted_idps: tuple[x509.Certificate, ...] = ()
    #: trust anchors (e.g. the IGC Santé roots): an assertion signed by a certificate
    #: that chains to one of them (RFC 5280 path validation, :mod:`.x509chain`) is trusted.
    idp_roots: tuple[x509.Certificate, ...] = ()
    #: accepted ``saml2:Audience`` values; empty = no AudienceRestriction check.
    audiences: tuple[str, ...] = ()
    #: tolerated clock difference with the client and the IdP.
    skew: timedelta = timedelta(minutes=5)
    #: lifetime of an assertion that has no Conditions/@NotOnOrAfter (from IssueInstant).
    max_age: timedelta = timedelta(hours=2)
    #: accept RSA-SHA1 / SHA-1 digests (legacy partners only, e.g. DRIMbox-era clients).
    allow_sha1: bool = False
    #: a SAML assertion must be present (XUA ``required``); otherwise only checked if sent.
    require_assertion: bool = True
    require_timestamp: bool = False
    require_message_signature: bool = False
    #: certificates trusted to sign messages (besides the IdPs and holder-of-key certs).
    trusted_clients: tuple[x509.Certificate, ...] = ()


@dataclass
class VerifiedSecurity:
    """What the header proved: the signed assertion (as signxml returned it) and facts."""

    assertion: etree._Element | None
    issuer_certificate: x509.Certificate | None = None
    timestamp: tuple[datetime, datetime | None] | None = None
    message_signer: x509.Certificate | None = None
    signature_method: str | None = None
    warnings: list[str] = field(default_factory=list)


# ------------------------------------------------------------------ time

def parse_xs_datetime(value: str | None, what: str) -> datetime:
    """An xs:dateTime (SAML requires UTC, 'Z'); naive values are read as UTC."""
    if not value:
        raise SecurityFault(f"{what} is missing", INVALID_SECURITY_TOKEN)
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    # Python < 3.11 accepted only 3 or 6 fraction digits; 3.11 accepts any: keep it simple.
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise SecurityFault(f"{what} is not an xs:dateTime: {value!r}",
                            INVALID_SECURITY_TOKEN) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc)


def _fmt(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


# ------------------------------------------------------------------ structure

def _security_header(envelope: etree._Element) -> etree._Element | None:
    header = envelope.find(qn(SOAP12, "Header"))
    if header is None:
        return None
    blocks = header.findall(SECURITY)
    if len(blocks) > 1:
        raise SecurityFault("more than one wsse:Security header (WSS 1.1 §5: one per role; "
                            "OpenDMP accepts exactly one)")
    return blocks[0] if blocks else None


def check_unique_ids(envelope: etree._Element) -> dict[str, etree._Element]:
    """Every ID-like attribute value of the message, refusing duplicates."""
    seen: dict[str, etree._Element] = {}
    for el in envelope.iter():
        if not isinstance(el.tag, str):
            continue
        for name in _ID_ATTRS:
            value = el.get(name)
            if value is None:
                continue
            if value in seen and seen[value] is not el:
                raise SecurityFault(f"duplicate ID {value!r} in the message (signature "
                                    "wrapping is refused)")
            seen[value] = el
    return seen


def _element_children(el: etree._Element, tag: str) -> list[etree._Element]:
    return [c for c in el if c.tag == tag]


def _cert_fingerprint(cert: x509.Certificate) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding

    return hashlib.sha256(cert.public_bytes(Encoding.DER)).digest()


def _load_b64_cert(text: str | None, what: str) -> x509.Certificate:
    try:
        return x509.load_der_x509_certificate(base64.b64decode("".join((text or "").split())))
    except ValueError:
        raise SecurityFault(f"{what} is not a valid X.509 certificate",
                            INVALID_SECURITY_TOKEN) from None


def _signature_config(policy: SecurityPolicy, location: str, references: int):
    from signxml import DigestAlgorithm, SignatureConfiguration, SignatureMethod

    methods = {SignatureMethod.RSA_SHA256, SignatureMethod.RSA_SHA384, SignatureMethod.RSA_SHA512,
               SignatureMethod.ECDSA_SHA256, SignatureMethod.ECDSA_SHA384,
               SignatureMethod.ECDSA_SHA512}
    digests = {DigestAlgorithm.SHA256, DigestAlgorithm.SHA384, DigestAlgorithm.SHA512}
    if policy.allow_sha1:
        methods.add(SignatureMethod.RSA_SHA1)
        digests.add(DigestAlgorithm.SHA1)
    return SignatureConfiguration(location=location, expect_references=references,
                                  signature_methods=frozenset(methods),
                                  digest_algorithms=frozenset(digests))


def _algorithms_of(signature: etree._Element, policy: SecurityPolicy, what: str) -> str:
    """Refuse algorithms the policy does not allow, with WSS's UnsupportedAlgorithm."""
    method = signature.find(f"{qn(DS, 'SignedInfo')}/{qn(DS, 'SignatureMethod')}")
    alg = method.get("Algorithm", "") if method is not None else ""
    digests = [d.get("Algorithm", "") for d in signature.iter(qn(DS, "DigestMethod"))]
    weak = [a for a in [alg, *digests] if a.endswith(("#rsa-sha1", "#sha1", "#dsa-sha1",
                                                      "#hmac-sha1"))]
    if weak and not policy.allow_sha1:
        raise SecurityFault(f"{what} uses SHA-1 ({weak[0]}); RSA-SHA256 or stronger is required "
                            "(OPENDMP_XUA_ALLOW_SHA1=1 for legacy partners)",
                            UNSUPPORTED_ALGORITHM)
    if "hmac" in alg.lower():
        raise SecurityFault(f"{what}: HMAC signatures are not accepted", UNSUPPORTED_ALGORITHM)
    return alg


def _signxml_verify(data: etree._Element, cert: x509.Certificate, config, when: datetime):
    from dataclasses import replace

    from signxml import XMLVerifier

    config = replace(config, verification_time=when)
    return XMLVerifier().verify(data, x509_cert=cert, expect_config=config)


# ------------------------------------------------------------------ the assertion

def verify_assertion(assertion: etree._Element, policy: SecurityPolicy,
                     now: datetime | None = None) -> tuple[etree._Element, x509.Certificate, str]:
    """Verify a SAML 2.0 assertion's enveloped signature; return (signed_xml, IdP cert,
    signature method). Checks only the signature; :func:`check_assertion` does the rest."""
    from signxml.exceptions import InvalidCertificate, InvalidDigest, InvalidInput, InvalidSignature

    now = now or datetime.now(timezone.utc)
    assertion_id = assertion.get("ID")
    if not assertion_id:
        raise SecurityFault("the SAML assertion has no ID attribute", INVALID_SECURITY_TOKEN)
    signatures = _element_children(assertion, SIGNATURE)
    if not signatures:
        if any(True for _ in assertion.iter(SIGNATURE)):
            raise SecurityFault("the assertion's signature is not where SAML puts it (a child "
                                "of the Assertion): refused", INVALID_SECURITY_TOKEN)
        raise SecurityFault("the SAML assertion is not signed", INVALID_SECURITY_TOKEN)
    if len(signatures) > 1:
        raise SecurityFault("the SAML assertion carries more than one signature",
                            INVALID_SECURITY_TOKEN)
    signature = signatures[0]
    refs = signature.findall(f"{qn(DS, 'SignedInfo')}/{qn(DS, 'Reference')}")
    if len(refs) != 1 or refs[0].get("URI") != "#" + assertion_id:
        got = ", ".join(repr(r.get("URI")) for r in refs) or "none"
        raise SecurityFault(f"the assertion's signature must have exactly one Reference to "
                            f"'#{assertion_id}' (found {got})", FAILED_CHECK)
    method = _algorithms_of(signature, policy, "the assertion's signature")
    if not policy.trusted_idps and not policy.idp_roots:
        raise SecurityFault("no identity provider is trusted (OPENDMP_XUA_TRUSTED_IDPS, "
                            "OPENDMP_XUA_IDP_ROOTS)", FAILED_AUTHENTICATION)
    embedded = signature.findall(f"{qn(DS, 'KeyInfo')}/{qn(DS, 'X509Data')}/"
                                 f"{qn(DS, 'X509Certificate')}")
    candidates: Iterable[x509.Certificate]
    if embedded:
        certs = [_load_b64_cert(e.text, "the assertion's KeyInfo certificate") for e in embedded]
        cert = certs[0]
        fp = _cert_fingerprint(cert)
        candidates = [c for c in policy.trusted_idps if _cert_fingerprint(c) == fp]
        if not candidates and policy.idp_roots:
            from .x509chain import ChainError, verify_chain

            try:  # the signer first, then any intermediates (XMLDSig §4.4.4 X509Data)
                verify_chain(cert, certs[1:], policy.idp_roots, now)
            except ChainError as exc:
                raise SecurityFault(f"the assertion is signed by an untrusted certificate: {exc}",
                                    FAILED_AUTHENTICATION) from None
            candidates = [cert]
        if not candidates:
            raise SecurityFault(f"the assertion is signed by an untrusted certificate "
                                f"({cert.subject.rfc4514_string()})", FAILED_AUTHENTICATION)
    else:
        candidates = policy.trusted_idps
    # The certificate's validity is checked against now *after* the assertion's own time
    # conditions (so an old assertion is reported as expired, not as "certificate expired").
    try:
        issued = parse_xs_datetime(assertion.get("IssueInstant"), "Assertion/@IssueInstant")
    except SecurityFault:
        issued = now
    config = _signature_config(policy, "./", 1)
    last: Exception | None = None
    for cert in candidates:
        try:
            result = _signxml_verify(assertion, cert, config, issued)
        except (InvalidSignature, InvalidDigest, InvalidCertificate) as exc:
            last = exc
            continue
        except InvalidInput as exc:
            if "SHA1" in str(exc) or "forbidden" in str(exc).lower():
                raise SecurityFault(f"the assertion's signature algorithm is not allowed: {exc}",
                                    UNSUPPORTED_ALGORITHM) from None
            raise SecurityFault(f"the assertion's signature is malformed: {exc}",
                                INVALID_SECURITY_TOKEN) from None
        except Exception as exc:  # noqa: BLE001 - signxml raises assorted errors on junk
            raise SecurityFault(f"the assertion's signature cannot be verified: "
                                f"{type(exc).__name__}: {exc}", INVALID_SECURITY_TOKEN) from None
        signed = result.signed_xml
        if signed is None or signed.tag != ASSERTION or signed.get("ID") != assertion_id:
            raise SecurityFault("the assertion's signature does not cover the assertion",
                                FAILED_CHECK)
        return signed, cert, method
    from signxml.exceptions import InvalidDigest as _Digest

    raise SecurityFault(f"the assertion's signature does not verify with the trusted identity "
                        f"provider certificate(s): {last}",
                        FAILED_CHECK if isinstance(last, _Digest) else FAILED_AUTHENTICATION)


def check_assertion(signed: etree._Element, cert: x509.Certificate, policy: SecurityPolicy,
                    now: datetime | None = None) -> None:
    """SAML 2.0 Core checks on the *signed* assertion (what signxml returned)."""
    now = now or datetime.now(timezone.utc)
    skew = policy.skew
    if signed.get("Version") != "2.0":
        raise SecurityFault("the assertion is not SAML 2.0", UNSUPPORTED_SECURITY_TOKEN)
    if not (signed.findtext(qn(SAML2, "Issuer")) or "").strip():
        raise SecurityFault("the assertion has no Issuer", INVALID_SECURITY_TOKEN)
    issued = parse_xs_datetime(signed.get("IssueInstant"), "Assertion/@IssueInstant")
    if issued > now + skew:
        raise SecurityFault(f"the assertion's IssueInstant {_fmt(issued)} is in the future "
                            f"(clock skew {int(skew.total_seconds())} s)", FAILED_AUTHENTICATION)
    conditions = signed.findall(qn(SAML2, "Conditions"))
    if len(conditions) > 1:
        raise SecurityFault("the assertion has more than one Conditions element",
                            INVALID_SECURITY_TOKEN)
    cond = conditions[0] if conditions else etree.Element(qn(SAML2, "Conditions"))
    not_before = cond.get("NotBefore")
    if not_before is not None:
        nb = parse_xs_datetime(not_before, "Conditions/@NotBefore")
        if now + skew < nb:
            raise SecurityFault(f"the assertion is not yet valid (NotBefore {_fmt(nb)})",
                                FAILED_AUTHENTICATION)
    not_after = cond.get("NotOnOrAfter")
    if not_after is not None:
        na = parse_xs_datetime(not_after, "Conditions/@NotOnOrAfter")
        if now - skew >= na:
            raise SecurityFault(f"the assertion has expired (NotOnOrAfter {_fmt(na)})",
                                FAILED_AUTHENTICATION)
    elif now - skew >= issued + policy.max_age:
        # VIHF builders (ANS Pro Santé Connect) may omit Conditions: bound the age instead
        raise SecurityFault(f"the assertion has expired (issued {_fmt(issued)}, no NotOnOrAfter, "
                            f"maximum age {int(policy.max_age.total_seconds())} s)",
                            FAILED_AUTHENTICATION)
    if policy.audiences:
        for restriction in cond.findall(qn(SAML2, "AudienceRestriction")):
            values = [(a.text or "").strip() for a in restriction.findall(qn(SAML2, "Audience"))]
            if not set(values) & set(policy.audiences):
                raise SecurityFault(f"the assertion is for another audience ({', '.join(values)}); "
                                    f"this service is {', '.join(policy.audiences)}",
                                    FAILED_AUTHENTICATION)
    subject = signed.find(qn(SAML2, "Subject"))
    if subject is None or not (subject.findtext(qn(SAML2, "NameID")) or "").strip():
        raise SecurityFault("the assertion has no Subject/NameID", INVALID_SECURITY_TOKEN)
    statements = signed.findall(qn(SAML2, "AuthnStatement"))
    if len(statements) != 1:
        raise SecurityFault(f"the assertion must have exactly one AuthnStatement (found "
                            f"{len(statements)})", INVALID_SECURITY_TOKEN)
    statement = statements[0]
    parse_xs_datetime(statement.get("AuthnInstant"), "AuthnStatement/@AuthnInstant")
    contexts = statement.findall(qn(SAML2, "AuthnContext"))
    if len(contexts) != 1:
        raise SecurityFault(f"the AuthnStatement must have exactly one AuthnContext (found "
                            f"{len(contexts)})", INVALID_SECURITY_TOKEN)
    refs = contexts[0].findall(qn(SAML2, "AuthnContextClassRef"))
    if len(refs) != 1 or not (refs[0].text or "").strip().startswith("urn:"):
        raise SecurityFault("the AuthnContext must have exactly one AuthnContextClassRef URI",
                            INVALID_SECURITY_TOKEN)
    # the IdP certificate must be valid now (the signature was checked at IssueInstant)
    if not (cert.not_valid_before_utc - skew <= now <= cert.not_valid_after_utc):
        raise SecurityFault(f"the identity provider certificate {cert.subject.rfc4514_string()} "
                            f"is not valid now (valid {_fmt(cert.not_valid_before_utc)} to "
                            f"{_fmt(cert.not_valid_after_utc)})", FAILED_AUTHENTICATION)


def holder_of_key_certificates(signed: etree._Element) -> list[x509.Certificate]:
    out = []
    for conf in signed.iterfind(f"{qn(SAML2, 'Subject')}/{qn(SAML2, 'SubjectConfirmation')}"):
        if conf.get("Method") != HOLDER_OF_KEY:
            continue
        for el in conf.iter(qn(DS, "X509Certificate")):
            out.append(_load_b64_cert(el.text, "the holder-of-key certificate"))
    return out


# ------------------------------------------------------------------ timestamp, message signature

def check_timestamp(security: etree._Element, policy: SecurityPolicy, now: datetime):
    stamps = _element_children(security, qn(WSU, "Timestamp"))
    if len(stamps) > 1:
        raise SecurityFault("more than one wsu:Timestamp (WSS 1.1 §10)")
    if not stamps:
        if policy.require_timestamp:
            raise SecurityFault("a wsu:Timestamp is required", INVALID_SECURITY)
        return None, None
    ts = stamps[0]
    created = parse_xs_datetime(ts.findtext(qn(WSU, "Created")), "wsu:Timestamp/wsu:Created")
    if created > now + policy.skew:
        raise SecurityFault(f"wsu:Timestamp/wsu:Created {_fmt(created)} is in the future",
                            MESSAGE_EXPIRED)
    expires = None
    if ts.find(qn(WSU, "Expires")) is not None:
        expires = parse_xs_datetime(ts.findtext(qn(WSU, "Expires")), "wsu:Timestamp/wsu:Expires")
        if now - policy.skew >= expires:
            raise SecurityFault(f"the message has expired (wsu:Expires {_fmt(expires)})",
                                MESSAGE_EXPIRED)
    return ts, (created, expires)


def _token_certificate(security: etree._Element, signature: etree._Element,
                       ids: dict[str, etree._Element]) -> x509.Certificate:
    str_el = signature.find(f"{qn(DS, 'KeyInfo')}/{qn(WSSE, 'SecurityTokenReference')}")
    if str_el is None:
        embedded = signature.find(f"{qn(DS, 'KeyInfo')}/{qn(DS, 'X509Data')}/{qn(DS, 'X509Certificate')}")
        if embedded is not None:
            return _load_b64_cert(embedded.text, "the message signature's certificate")
        raise SecurityFault("the message signature has no wsse:SecurityTokenReference",
                            SECURITY_TOKEN_UNAVAILABLE)
    ref = str_el.find(qn(WSSE, "Reference"))
    if ref is None or not (ref.get("URI") or "").startswith("#"):
        raise SecurityFault("only a wsse:Reference to a BinarySecurityToken is supported as the "
                            "message signature's key", UNSUPPORTED_SECURITY_TOKEN)
    token = ids.get(ref.get("URI")[1:])
    if token is None or token.tag != qn(WSSE, "BinarySecurityToken") or token.getparent() is not security:
        raise SecurityFault(f"the SecurityTokenReference {ref.get('URI')} does not designate a "
                            "wsse:BinarySecurityToken of this header", SECURITY_TOKEN_UNAVAILABLE)
    if token.get("ValueType") != X509V3:
        raise SecurityFault(f"BinarySecurityToken ValueType {token.get('ValueType')!r} is not "
                            "supported (X509v3 only)", UNSUPPORTED_SECURITY_TOKEN)
    return _load_b64_cert(token.text, "the BinarySecurityToken")


def verify_message_signature(envelope: etree._Element, security: etree._Element,
                             signature: etree._Element, timestamp: etree._Element | None,
                             ids: dict[str, etree._Element], trusted: list[x509.Certificate],
                             policy: SecurityPolicy, now: datetime) -> x509.Certificate:
    """A WSS message signature over exactly the Envelope's Body and the header's Timestamp."""
    from signxml.exceptions import InvalidCertificate, InvalidDigest, InvalidInput, InvalidSignature

    body = envelope.find(qn(SOAP12, "Body"))
    expected = {"#" + (body.get(qn(WSU, "Id")) or body.get("Id") or "\0body")}
    if timestamp is not None:
        expected.add("#" + (timestamp.get(qn(WSU, "Id")) or timestamp.get("Id") or "\0ts"))
    refs = signature.findall(f"{qn(DS, 'SignedInfo')}/{qn(DS, 'Reference')}")
    uris = [r.get("URI") for r in refs]
    if len(uris) != len(set(uris)) or set(uris) != expected:
        raise SecurityFault(f"the message signature must reference exactly the SOAP Body and the "
                            f"wsu:Timestamp (expected {sorted(expected)}, found {uris})", FAILED_CHECK)
    _algorithms_of(signature, policy, "the message signature")
    cert = _token_certificate(security, signature, ids)
    fp = _cert_fingerprint(cert)
    if not any(_cert_fingerprint(c) == fp for c in trusted):
        raise SecurityFault(f"the message is signed by an untrusted certificate "
                            f"({cert.subject.rfc4514_string()})", FAILED_AUTHENTICATION)
    if not (cert.not_valid_before_utc - policy.skew <= now <= cert.not_valid_after_utc):
        raise SecurityFault("the message signing certificate is not valid now",
                            FAILED_AUTHENTICATION)
    # signxml needs the KeyInfo it can read: verify a copy of the envelope whose signature
    # is found at its pinned place (Header/Security/Signature).
    location = f"./{qn(SOAP12, 'Header')}/{SECURITY}/"
    config = _signature_config(policy, location, len(refs))
    try:
        results = _signxml_verify(envelope, cert, config, now)
    except (InvalidSignature, InvalidDigest, InvalidCertificate) as exc:
        raise SecurityFault(f"the message signature is invalid: {exc}", FAILED_CHECK) from None
    except InvalidInput as exc:
        raise SecurityFault(f"the message signature cannot be verified: {exc}",
                            FAILED_CHECK) from None
    except Exception as exc:  # noqa: BLE001
        raise SecurityFault(f"the message signature cannot be verified: "
                            f"{type(exc).__name__}: {exc}", FAILED_CHECK) from None
    results = results if isinstance(results, list) else [results]
    # what was digested must be the very Body and Timestamp we will process
    actual = {body.tag: body}
    if timestamp is not None:
        actual[timestamp.tag] = timestamp
    c14n = lambda el: etree.tostring(el, method="c14n", exclusive=True)  # noqa: E731
    for result in results:
        signed = result.signed_xml
        if signed is None or signed.tag not in actual or c14n(signed) != c14n(actual[signed.tag]):
            raise SecurityFault("the message signature covers something other than the SOAP Body "
                                "and the wsu:Timestamp being processed", FAILED_CHECK)
    return cert


# ------------------------------------------------------------------ entry point

def verify_security(envelope: etree._Element, policy: SecurityPolicy,
                    now: datetime | None = None) -> VerifiedSecurity:
    """Verify the ``wsse:Security`` header of ``envelope`` (a parsed SOAP 1.2 Envelope).

    Raises :class:`SecurityFault`; returns what was proved. With
    ``policy.require_assertion`` false, a message without any ``wsse:Security`` header
    passes with ``assertion=None``; a header that is present is always fully verified.
    """
    now = now or datetime.now(timezone.utc)
    security = _security_header(envelope)
    header = envelope.find(qn(SOAP12, "Header"))
    if security is None:
        if policy.require_assertion:
            raise SecurityFault("a wsse:Security header with a signed SAML 2.0 assertion is "
                                "required (IHE XUA, ITI-40)", INVALID_SECURITY)
        if header is not None and any(True for _ in header.iter(ASSERTION)):
            raise SecurityFault("a SAML assertion outside wsse:Security is not accepted")
        return VerifiedSecurity(None)
    ids = check_unique_ids(envelope)
    assertions = list(header.iter(ASSERTION))
    if len(assertions) > 1:
        raise SecurityFault(f"the message carries {len(assertions)} SAML assertions; exactly one "
                            "is accepted", INVALID_SECURITY_TOKEN)
    if assertions and assertions[0].getparent() is not security:
        raise SecurityFault("the SAML assertion must be a direct child of wsse:Security",
                            INVALID_SECURITY_TOKEN)
    if not assertions and policy.require_assertion:
        raise SecurityFault("the wsse:Security header carries no SAML 2.0 assertion "
                            "(IHE XUA, ITI-40)", SECURITY_TOKEN_UNAVAILABLE)
    timestamp, times = check_timestamp(security, policy, now)
    result = VerifiedSecurity(None, timestamp=times)
    trusted_signers = list(policy.trusted_clients) + list(policy.trusted_idps)
    if assertions:
        signed, cert, method = verify_assertion(assertions[0], policy, now)
        check_assertion(signed, cert, policy, now)
        result.assertion, result.issuer_certificate, result.signature_method = signed, cert, method
        trusted_signers += holder_of_key_certificates(signed)
    msg_sigs = _element_children(security, SIGNATURE)
    if len(msg_sigs) > 1:
        raise SecurityFault("more than one message signature in wsse:Security")
    if msg_sigs:
        result.message_signer = verify_message_signature(
            envelope, security, msg_sigs[0], timestamp, ids, trusted_signers, policy, now)
    elif policy.require_message_signature:
        raise SecurityFault("the message must be signed (Body and wsu:Timestamp)", INVALID_SECURITY)
    return result


# ------------------------------------------------------------------ signing (responses)

def sign_envelope(envelope: bytes, key_pem: bytes, cert_pem: bytes,
                  ttl: timedelta = timedelta(minutes=5)) -> bytes:
    """Add a WSS message signature to a SOAP 1.2 envelope (python-xmlsec): a
    ``wsu:Timestamp``, the certificate as an X509v3 ``BinarySecurityToken`` and an
    RSA-SHA256 / exc-c14n signature over the Body and the Timestamp, its KeyInfo a
    ``wsse:SecurityTokenReference`` to the token (WSS X.509 Token Profile 1.1 §3.3.2).
    What :func:`verify_message_signature` accepts, and ``xmlsec1 --verify`` too."""
    import uuid

    import xmlsec
    from cryptography.hazmat.primitives.serialization import Encoding

    root = etree.fromstring(envelope, etree.XMLParser(resolve_entities=False, no_network=True))
    header = root.find(qn(SOAP12, "Header"))
    if header is None:
        header = etree.Element(qn(SOAP12, "Header"))
        root.insert(0, header)
    sec = header.find(SECURITY)
    if sec is None:
        sec = etree.SubElement(header, SECURITY, nsmap={"wsse": WSSE, "wsu": WSU})
    suffix = uuid.uuid4().hex
    now = datetime.now(timezone.utc)
    ts = etree.Element(qn(WSU, "Timestamp"), nsmap={"wsu": WSU})
    ts.set(qn(WSU, "Id"), f"TS-{suffix}")
    etree.SubElement(ts, qn(WSU, "Created")).text = _fmt(now)
    etree.SubElement(ts, qn(WSU, "Expires")).text = _fmt(now + ttl)
    sec.insert(0, ts)
    cert = x509.load_pem_x509_certificate(cert_pem)
    bst = etree.SubElement(sec, qn(WSSE, "BinarySecurityToken"), ValueType=X509V3,
                           EncodingType="http://docs.oasis-open.org/wss/2004/01/"
                                        "oasis-200401-wss-soap-message-security-1.0#Base64Binary")
    bst.set(qn(WSU, "Id"), f"X509-{suffix}")
    bst.text = base64.b64encode(cert.public_bytes(Encoding.DER)).decode()
    body = root.find(qn(SOAP12, "Body"))
    body_id = body.get(qn(WSU, "Id")) or f"Body-{suffix}"
    body.set(qn(WSU, "Id"), body_id)
    sig = xmlsec.template.create(root, xmlsec.Transform.EXCL_C14N, xmlsec.Transform.RSA_SHA256,
                                 ns="ds")
    sec.append(sig)
    for uri in (f"#{body_id}", f"#TS-{suffix}"):
        ref = xmlsec.template.add_reference(sig, xmlsec.Transform.SHA256, uri=uri)
        xmlsec.template.add_transform(ref, xmlsec.Transform.EXCL_C14N)
    key_info = xmlsec.template.ensure_key_info(sig)
    str_el = etree.SubElement(key_info, qn(WSSE, "SecurityTokenReference"))
    etree.SubElement(str_el, qn(WSSE, "Reference"), URI=f"#X509-{suffix}", ValueType=X509V3)
    ctx = xmlsec.SignatureContext()
    ctx.register_id(body, "Id", WSU)
    ctx.register_id(ts, "Id", WSU)
    ctx.key = xmlsec.Key.from_memory(key_pem, xmlsec.KeyFormat.PEM)
    ctx.sign(sig)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")
