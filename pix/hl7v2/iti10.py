"""ITI-10 PIX Update Notification: ADT^A31 (HL7 v2.5, ITI TF-2a §3.10.4.1.2).

PID-3 lists the patient's identifiers in the domains the consumer asked for; PID-5 is
``~^^^^^^S`` (no name is sent); PV1-2 is ``N`` (not applicable).
"""
from __future__ import annotations

from collections.abc import Sequence

from ..config import Consumer, PixConfig
from ..model import Identifier
from .ack import header, now_ts

__all__ = ["a31", "for_consumer"]


def for_consumer(config: PixConfig, consumer: Consumer,
                 identifiers: Sequence[Identifier]) -> list[Identifier]:
    if not consumer.domains:
        return list(identifiers)
    keys = set()
    for d in consumer.domains:
        dom = config.by_uid(d) or config.by_namespace(d)
        keys.add(dom.key if dom is not None else d)
    return [i for i in identifiers if i.domain in keys]


def a31(config: PixConfig, consumer: Consumer, identifiers: Sequence[Identifier]) -> str:
    from .iti9 import format_cx
    from ..manager import PixManager

    mgr = PixManager(config)
    pid3 = "~".join(format_cx(mgr, i) for i in identifiers)
    segs = [
        header(config.application, config.facility, consumer.name, "", "ADT^A31^ADT_A05",
               "P", "2.5"),
        f"EVN|A31|{now_ts()}",
        f"PID|||{pid3}||~^^^^^^S",
        "PV1||N",
    ]
    return "\r".join(segs) + "\r"
