"""The PIX Manager's HL7 v3 SOAP binding: ITI-44 and ITI-45 on ``POST /pix/v3``.

Actions and Body elements from the official ``PIXManager.wsdl`` (served at ``?wsdl``,
its soap12:address pointed at us): ``urn:hl7-org:v3:PRPA_IN201301UV02`` (add),
``...PRPA_IN201302UV02`` (revise), ``...PRPA_IN201304UV02`` (merge) answered
``urn:hl7-org:v3:MCCI_IN000002UV01``; ``...PRPA_IN201309UV02`` (query) answered
``...PRPA_IN201310UV02``. Changes enqueue ITI-10/ITI-46 notifications in the same
transaction (:class:`pix.outbox.Notifier`); the MLLP listener process dispatches them.
"""
from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import Engine

from opendmp.config import ROOT
from soapstack.envelope import SoapRequest, SoapResponse
from soapstack.wsgi import Operation, SoapEndpoint

from .config import PixConfig
from .hl7v3.handler import Handler
from .hl7v3.message import v3
from .manager import PixManager
from .outbox import Notifier

__all__ = ["pix_v3_endpoint", "ACTION", "WSDL"]

WSDL = ROOT / "wsdl" / "PIXManager.wsdl"
ACTION = "urn:hl7-org:v3:{}"
ACK = "MCCI_IN000002UV01"


def pix_v3_endpoint(engine: Engine, env: Mapping[str, str] | None = None,
                    path: str = "/pix/v3") -> SoapEndpoint:
    config = PixConfig.from_settings(env)
    handler = Handler(engine, PixManager(config, Notifier(config)))

    def feed(request: SoapRequest) -> SoapResponse:
        return SoapResponse(ACTION.format(ACK), handler.feed(request.payload))

    def query(request: SoapRequest) -> SoapResponse:
        return SoapResponse(ACTION.format("PRPA_IN201310UV02"), handler.query(request.payload))

    ops = [Operation(ACTION.format(m), v3(m), feed)
           for m in ("PRPA_IN201301UV02", "PRPA_IN201302UV02", "PRPA_IN201304UV02")]
    ops.append(Operation(ACTION.format("PRPA_IN201309UV02"), v3("PRPA_IN201309UV02"), query))
    return SoapEndpoint(path, ops, wsdl=WSDL)
