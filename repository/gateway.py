"""Where the repository registers what it stores (ITI TF-2b §3.41.4.1.3): our own
registry in-process (default, atomically with the repository's index), or any
Document Registry by ITI-42 over SOAP, whose errors go back to the source unchanged."""
from __future__ import annotations

import logging
from typing import Protocol

from lxml import etree
from sqlalchemy import Connection, Engine

from opendmp import failpoints
from opendmp.db import write_transaction
from registry import errors as E
from registry.affinity import AffinityDomain
from registry.ebrim import submit_objects_request
from registry.iti42 import Registration, begin_registration
from registry.model import Submission
from registry.service import ITI18_ACTION, ITI42_ACTION
from soapstack.envelope import SoapFault
from soapstack.namespaces import QUERY, RIM, RS

from . import index

log = logging.getLogger("opendmp.repository")

REGISTRY_NOT_AVAILABLE = "XDSRegistryNotAvailable"
GET_DOCUMENTS = "urn:uuid:5c4f972b-d56b-40ac-a5fc-c8ca9b40b9d4"


class RegistryGateway(Protocol):
    """A registry reached outside the repository's database transaction (remote). The
    in-process registry has ``register_on(conn, sub)`` instead of :meth:`register`."""

    def register(self, sub: Submission, unique_ids: list[str]) -> list[E.XdsError]:
        """Register ``sub`` and mark ``unique_ids`` committed in the index; return warnings,
        raise :class:`~registry.errors.XdsErrors` when the registry refuses."""

    def is_registered(self, unique_id: str) -> bool:
        """Whether the registry knows a document (recovery of a crashed ITI-41)."""


class InProcessRegistry:
    """Our registry, on the repository's own database: ITI-41 registers with
    :meth:`register_on` inside the transaction that writes the index rows (and the CDA
    summary), so a document is recorded and registered by one commit."""

    def __init__(self, engine: Engine, domain: AffinityDomain) -> None:
        self.engine = engine
        self.domain = domain

    def register_on(self, conn: Connection, sub: Submission) -> Registration:
        """Begin registering ``sub`` in the caller's write transaction: the registry's reads
        are sent (in the caller's :func:`~opendmp.db.pg_pipeline`, if any);
        :meth:`~registry.iti42.Registration.complete` checks and stores it."""
        return begin_registration(conn, sub, self.domain)

    def is_registered(self, unique_id: str) -> bool:
        # Registration and the index row commit in one transaction: a STAGED row was never
        # registered.
        return False


class RemoteRegistry:
    """A Document Registry reached by ITI-42 (and ITI-18 GetDocuments for recovery)."""

    def __init__(self, url: str, engine: Engine, timeout: float = 60.0) -> None:
        self.url = url
        self.engine = engine
        self.timeout = timeout

    def _call(self, action: str, body: etree._Element) -> etree._Element:
        # the HTTP client (httpx) is loaded by the deployments with a remote registry only
        import httpx

        from soapstack.client import SoapClient

        client = SoapClient(self.url, timeout=self.timeout)
        try:
            return client.call(action, body).payload
        except (httpx.HTTPError, OSError) as exc:
            raise E.XdsErrors([E.XdsError(REGISTRY_NOT_AVAILABLE,
                                          f"registry {self.url} cannot be reached: {exc}")]) from None
        except SoapFault as fault:
            raise E.XdsErrors([E.XdsError(E.REGISTRY_ERROR,
                                          f"registry {self.url} answered a SOAP fault: "
                                          f"{fault.reason}")]) from None
        finally:
            client.close()

    def register(self, sub: Submission, unique_ids: list[str]) -> list[E.XdsError]:
        answer = self._call(ITI42_ACTION, submit_objects_request(sub))
        errors = [E.XdsError(e.get("errorCode", E.REGISTRY_ERROR), e.get("codeContext", ""),
                             e.get("location"), e.get("severity", E.SEVERITY_ERROR))
                  for e in answer.iter(f"{{{RS}}}RegistryError")]
        if not (answer.get("status") or "").endswith(":Success"):
            raise E.XdsErrors(errors or [E.XdsError(E.REGISTRY_ERROR,
                                                    f"registry answered {answer.get('status')}")])
        failpoints.hit("iti41.after_register")
        try:
            with write_transaction(self.engine) as conn:
                index.mark_committed(conn, unique_ids)
        except Exception:  # noqa: BLE001 - registered: recovery commits the rows later
            log.exception("registered %s but could not mark them committed", unique_ids)
        return errors

    def is_registered(self, unique_id: str) -> bool:
        req = etree.Element(f"{{{QUERY}}}AdhocQueryRequest", nsmap={"query": QUERY, "rim": RIM})
        etree.SubElement(req, f"{{{QUERY}}}ResponseOption", returnType="ObjectRef")
        aq = etree.SubElement(req, f"{{{RIM}}}AdhocQuery", id=GET_DOCUMENTS)
        slot = etree.SubElement(aq, f"{{{RIM}}}Slot", name="$XDSDocumentEntryUniqueId")
        etree.SubElement(etree.SubElement(slot, f"{{{RIM}}}ValueList"),
                         f"{{{RIM}}}Value").text = f"('{unique_id}')"
        answer = self._call(ITI18_ACTION, req)
        return answer.find(f".//{{{RIM}}}ObjectRef") is not None
