"""XUA configuration (``OPENDMP_XUA_*``) and the security step of the SOAP pipeline.

``OPENDMP_XUA``: ``required`` | ``optional`` | ``off``.

* ``required`` — every SOAP request must carry a valid signed assertion.
* ``optional`` — a request without ``wsse:Security`` passes (no identity); a request with
  one is verified exactly as in ``required`` mode and refused if anything is wrong.
* ``off`` — nothing is verified, ``wsse:Security`` stays not understood (a
  ``mustUnderstand`` one gets a MustUnderstand fault): behind a trusted gateway only.

``OPENDMP_XUA_TRUSTED_IDPS`` pins IdP signing certificates; ``OPENDMP_XUA_IDP_ROOTS``
names trust anchors (e.g. the IGC Santé roots): an assertion signed by a certificate that
chains to one of them (its X509Data may carry intermediates) is trusted too.

Default: ``required`` when either names identity providers (a production configuration); without it, a development setup: ``optional``, trusting the
development IdP of ``$OPENDMP_HOME/xua/`` (a warning is logged).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Callable, Mapping

from cryptography import x509

from soapstack.envelope import SoapRequest
from soapstack.wssecurity import SECURITY, SecurityFault, SecurityPolicy, verify_security

from opendmp.policy import require_patient

from .identity import build_identity

log = logging.getLogger("opendmp.xua")
MODES = ("required", "optional", "off")


def load_certificates(paths: str) -> tuple[x509.Certificate, ...]:
    """PEM certificates from a list of files separated by ``,`` or the path separator."""
    import os

    certs: list[x509.Certificate] = []
    for name in [p for chunk in paths.split(",") for p in chunk.split(os.pathsep)]:
        name = name.strip()
        if not name:
            continue
        certs.extend(x509.load_pem_x509_certificates(Path(name).read_bytes()))
    return tuple(certs)


@dataclass(frozen=True)
class XuaSettings:
    mode: str
    policy: SecurityPolicy
    profile: str  # vihf | xua
    development_idp: bool
    #: (key PEM, certificate PEM) to sign responses with, or None
    response_signing: tuple[bytes, bytes] | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str], home: Path) -> "XuaSettings":
        idps = env.get("OPENDMP_XUA_TRUSTED_IDPS", "").strip()
        roots = env.get("OPENDMP_XUA_IDP_ROOTS", "").strip()
        mode = (env.get("OPENDMP_XUA") or ("required" if idps or roots else "optional")
                ).strip().lower()
        if mode not in MODES:
            raise ValueError(f"OPENDMP_XUA={mode!r}: expected one of {', '.join(MODES)}")
        dev = not idps and not roots
        if dev and mode != "off":
            from .idp import dev_idp_files

            trusted = load_certificates(str(dev_idp_files(home).cert))
        else:
            trusted = load_certificates(idps) if idps else ()
        clients = load_certificates(env.get("OPENDMP_XUA_TRUSTED_CLIENTS", ""))
        audiences = env.get("OPENDMP_XUA_AUDIENCE")
        if audiences is None:
            from .idp import DEV_AUDIENCE

            audience_list = (DEV_AUDIENCE,) if dev else ()
        else:
            audience_list = tuple(a.strip() for a in audiences.split(",") if a.strip())
        if not dev and not audience_list and mode != "off":
            log.warning("OPENDMP_XUA_AUDIENCE is not set: assertions for any audience are "
                        "accepted")
        policy = SecurityPolicy(
            trusted_idps=trusted,
            idp_roots=load_certificates(roots) if roots and mode != "off" else (),
            audiences=audience_list,
            skew=timedelta(seconds=int(env.get("OPENDMP_XUA_SKEW", 300))),
            max_age=timedelta(seconds=int(env.get("OPENDMP_XUA_MAX_AGE", 7200))),
            allow_sha1=env.get("OPENDMP_XUA_ALLOW_SHA1", "0") in ("1", "true", "yes"),
            require_assertion=mode == "required",
            require_timestamp=env.get("OPENDMP_XUA_REQUIRE_TIMESTAMP", "0") in ("1", "true"),
            require_message_signature=env.get("OPENDMP_XUA_REQUIRE_MESSAGE_SIGNATURE", "0")
            in ("1", "true"),
            trusted_clients=clients,
        )
        profile = env.get("OPENDMP_XUA_PROFILE", "vihf").strip().lower()
        if profile not in ("vihf", "xua"):
            raise ValueError(f"OPENDMP_XUA_PROFILE={profile!r}: expected vihf or xua")
        key, cert = env.get("OPENDMP_XUA_SIGN_KEY"), env.get("OPENDMP_XUA_SIGN_CERT")
        if bool(key) != bool(cert):
            raise ValueError("OPENDMP_XUA_SIGN_KEY and OPENDMP_XUA_SIGN_CERT go together")
        signing = (Path(key).read_bytes(), Path(cert).read_bytes()) if key else None
        return cls(mode, policy, profile, dev, signing)


#: called with (request, fault) for every refused request: the ATNA security alert.
RefusalHook = Callable[[SoapRequest, SecurityFault], None]


class XuaStep:
    """The security step of :class:`soapstack.wsgi.SoapApplication`: verifies the header,
    attaches ``request.identity``, or raises the fault (after calling ``on_refusal``)."""

    def __init__(self, settings: XuaSettings, on_refusal: RefusalHook | None = None) -> None:
        self.settings = settings
        self.on_refusal = on_refusal
        #: headers this step makes understood (SOAP 1.2 Part 1 §5.2.3)
        self.understood = frozenset({SECURITY}) if settings.mode != "off" else frozenset()
        #: signs a (non-MTOM) response envelope when OPENDMP_XUA_SIGN_KEY/CERT are set
        self.sign_response = self._sign if settings.response_signing else None

    def _sign(self, envelope: bytes) -> bytes:
        from soapstack.wssecurity import sign_envelope

        key, cert = self.settings.response_signing
        return sign_envelope(envelope, key, cert)

    def __call__(self, request: SoapRequest) -> None:
        if self.settings.mode == "off":
            return
        try:
            verified = verify_security(request.envelope, self.settings.policy)
            identity = build_identity(verified, self.settings.profile)
            if identity is not None:
                for patient in request_patients(request):
                    require_patient(identity, patient)
            request.identity = identity
        except SecurityFault as fault:
            self.refused(request, fault)
            raise

    def refused(self, request: SoapRequest, fault: SecurityFault) -> None:
        """Log and audit (ATNA security alert) a refusal: this step's own, or one an actor
        raised through :mod:`opendmp.policy` (called by :class:`soapstack.wsgi.SoapApplication`)."""
        log.warning("refused %s from %s: %s", request.action, request.remote_addr, fault.reason)
        if self.on_refusal is not None:
            try:
                self.on_refusal(request, fault)
            except Exception:  # noqa: BLE001 - auditing never changes the answer
                log.exception("could not audit a refused request")


_PATIENT_ACTIONS = {
    "urn:ihe:iti:2007:RegistryStoredQuery": "query",
    "urn:ihe:iti:2007:RegisterDocumentSet-b": "submission",
    "urn:ihe:iti:2007:ProvideAndRegisterDocumentSet-b": "submission",
}


def request_patients(request: SoapRequest) -> list[str]:
    """The patient(s) a request names in its payload: the stored query's patient
    parameter (ITI-18), the submission set's patientId (ITI-41/42). Requests naming no
    patient (GetDocuments by UUID, ITI-43) are for the actor to check with
    :mod:`opendmp.policy` once it knows the patient."""
    kind = _PATIENT_ACTIONS.get(request.action)
    if kind is None:
        return []
    from atna.hooks import query_facts, submission_facts

    try:
        payload = request.payload
    except Exception:  # noqa: BLE001 - an empty Body is the dispatcher's fault to report
        return []
    patient = query_facts(payload)[1] if kind == "query" else submission_facts(payload)[0]
    return [patient] if patient else []


def atna_refusal_hook(env: Mapping[str, str], home: Path) -> RefusalHook | None:
    """An ATNA Security Alert (DICOM PS3.15 A.5.3.11) for each refused request, through
    :mod:`atna` (``events.security_alert`` spooled by an ``Auditor``); None when ATNA has
    no destination."""
    try:
        from atna.auditor import Auditor, AuditSettings
        from atna.hooks import refusal
    except ImportError:
        return None
    auditor = Auditor(AuditSettings.from_env(env), home,
                      sync=env.get("OPENDMP_AUDIT_SYNC") == "1",
                      fsync=env.get("OPENDMP_AUDIT_FSYNC", "1") != "0")
    if not auditor.enabled:
        return None
    def hook(request: SoapRequest, fault: SecurityFault) -> None:
        # 110113/110126 (DICOM CID 403 has no other authentication-failure type), naming
        # the patients of the request and of its assertion, so that the refusal shows in
        # their access history (CSP L.1111-19)
        auditor.submit(refusal(request, fault.reason))

    return hook


def xua_step(env: Mapping[str, str], home: Path) -> XuaStep:
    """The configured step for :func:`opendmp.app.create_app`."""
    settings = XuaSettings.from_env(env, home)
    if settings.development_idp and settings.mode != "off":
        log.warning("XUA %s with the development identity provider of %s/xua "
                    "(set OPENDMP_XUA_TRUSTED_IDPS for production)", settings.mode, home)
    return XuaStep(settings, atna_refusal_hook(env, home))
