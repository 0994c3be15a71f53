"""One HL7 v3 interaction in, one answer out (the SOAP layer has parsed the envelope).

ITI-44 (add, revise, merge): each message is one database transaction — refused
(:class:`~pix.model.PixError`) means nothing of it is stored — answered by
MCCI_IN000002UV01 AA, or AE with an acknowledgementDetail; ``interactionId`` other than
the element's name, or ``processingCode`` other than P/T/D, is answered AR. ITI-45:
PRPA_IN201310UV02 (:mod:`.iti45`). Transient database conflicts are retried as in the
HL7 v2 binding.
"""
from __future__ import annotations

import logging
import time

from lxml import etree
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError, IntegrityError

from opendmp.db import read_transaction, write_transaction

from ..hl7v2.handler import _transient
from ..manager import PixManager
from ..model import PixError
from . import iti44, iti45
from .ack import Detail, detail_from, mcci, serialize
from .message import Header, Xp, header_of

__all__ = ["Handler"]

log = logging.getLogger("opendmp.pix.hl7v3")

_RETRIES = 5


class Handler:
    def __init__(self, engine: Engine, manager: PixManager) -> None:
        self.engine = engine
        self.manager = manager

    # ------------------------------------------------------------------ ITI-44
    def feed(self, root: etree._Element) -> bytes:
        """PRPA_IN201301UV02 / 201302 / 201304 -> MCCI_IN000002UV01 bytes."""
        header = header_of(root)
        return serialize(self._feed(root, header))

    def _feed(self, root, header: Header):
        cfg = self.manager.config
        m = etree.QName(root).localname
        bad = self._check_header(root, header)
        if bad is not None:
            return mcci(cfg, header, "AR", [bad])
        default = Xp.PATIENT.format(m=m) + "/id"
        try:
            if m == iti44.MERGE:
                merges = iti44.merges_from(self.manager, root, header)

                def work(conn):
                    for merge, sloc, mloc in merges:
                        self.manager.merge(conn, merge, sloc, mloc)
            else:
                feed, locs = iti44.feed_from(self.manager, root, header)

                def work(conn):
                    self.manager.feed(conn, feed, locs)
        except PixError as exc:
            d = detail_from(exc, default=default)
            return mcci(cfg, header, d.type_code, [d])
        for attempt in range(_RETRIES):
            try:
                with write_transaction(self.engine) as conn:
                    work(conn)
                return mcci(cfg, header, "AA")
            except PixError as exc:
                d = detail_from(exc, default=default)
                return mcci(cfg, header, d.type_code, [d])
            except (IntegrityError, DBAPIError) as exc:
                if attempt == _RETRIES - 1 or not _transient(exc):
                    raise
                time.sleep(0.005 * (attempt + 1))
        raise AssertionError("unreachable")

    @staticmethod
    def _check_header(root, header: Header) -> Detail | None:
        m = etree.QName(root).localname
        if header.interaction != m:
            return Detail("event", f"interactionId {header.interaction!r} does not match the "
                          f"message {m}", f"/{m}/interactionId")
        if header.processing_code not in ("P", "T", "D"):
            return Detail("processing_id", f"processingCode {header.processing_code!r} is not "
                          "supported (P, T or D)", f"/{m}/processingCode")
        return None

    # ------------------------------------------------------------------ ITI-45
    def query(self, root: etree._Element) -> bytes:
        header = header_of(root)
        bad = self._check_header(root, header)
        if bad is not None:
            return serialize(iti45.response(self.manager, root, header, None, [bad]))
        q, details = iti45.parse_query(self.manager, root)
        if details:
            return serialize(iti45.response(self.manager, root, header, None, details))
        try:
            with read_transaction(self.engine) as conn:
                found = self.manager.query(conn, q).identifiers
        except PixError as exc:
            d = detail_from(exc, default=Xp.QUERY.format(m=iti45.QUERY)
                            + "/patientIdentifier/value")
            return serialize(iti45.response(self.manager, root, header, None, [d]))
        return serialize(iti45.response(self.manager, root, header, list(found), []))
