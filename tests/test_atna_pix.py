"""The PIX Manager's audit messages (ITI TF-2a §3.8.5.1, §3.9.5.1, §3.10.5.1; TF-2b
§3.44.5, §3.45.5, §3.46.5): built from real exchanges, valid against the DICOM audit
schema, and — through the real MLLP listener, ``/pix/v3`` and the ITI-10 dispatcher —
received and stored by our ARR, queried back."""
from __future__ import annotations

import base64
import socket
import threading

import httpx
import pytest
from harness.postgres import free_port
from pixclient import LOCAL, NIR, adt, cx, new_ins, new_local, qbp, send1
from test_atna_server import wait_for, wait_listening
from test_pix_v3 import _send, ack, feed, query

from atna.message import parse_audit
from atna import events as ev
from atna.pixaudit import notification_datasets, v2_datasets

AA = "MSH|^~\\&|OPENDMP|OPENDMP|HIS|CHU|20260101||ACK^A01^ACK|A1|P|2.5\rMSA|AA|{c}\r"
AE = ("MSH|^~\\&|OPENDMP|OPENDMP|HIS|CHU|20260101||ACK^A01^ACK|A1|P|2.5\rMSA|AE|{c}\r"
      "ERR||PID^1^3^1^1|102^Data type error^HL70357|E||||INS key is wrong\r")


def _valid(ds: ev.AuditDataset):
    record = parse_audit(ev.build(ds))
    assert record.valid, record.schema_errors
    return record


# ----------------------------------------------------------------------- unit
def test_iti8_add_update_merge_map_to_patient_record_create_update_delete():
    ins, ipp = new_ins(), new_local()
    pid3 = f"{cx(ipp, LOCAL, 'HOSP')}~{cx(ins, NIR, '', 'INS')}"
    (a01,) = v2_datasets(adt("A01", pid3, ctrl="C1").encode(), AA.format(c="C1").encode(),
                         "10.0.0.7", "commonName=his")
    rec = _valid(a01)
    assert (rec.event_id.code, rec.action, rec.event_types[0].code) == ("110110", "C", "ITI-8")
    assert rec.patient_ids == [cx(ipp, LOCAL, "HOSP"), cx(ins, NIR, "", "INS")]
    assert all(("MSH-10", base64.b64encode(b"C1").decode()) in o.details for o in rec.objects)
    source, dest = rec.participants
    assert (source.user_id, source.network_access_point, source.user_name) == \
        ("HIS|CHU", "10.0.0.7", "commonName=his")
    assert source.roles[0].code == "110153" and dest.roles[0].code == "110152"
    assert dest.user_id == "OPENDMP|OPENDMP" and dest.alt_user_id

    (a08,) = v2_datasets(adt("A08", pid3).encode(), AA.format(c="x").encode(), None, None)
    assert _valid(a08).action == "U"
    old = new_local()
    delete, update = v2_datasets(adt("A40", cx(ipp, LOCAL, "HOSP"), mrg=cx(old, LOCAL, "HOSP"))
                                 .encode(), AA.format(c="x").encode(), None, None)
    assert (_valid(delete).action, _valid(delete).patient_ids) == ("D", [cx(old, LOCAL, "HOSP")])
    assert (_valid(update).action, _valid(update).patient_ids) == ("U", [cx(ipp, LOCAL, "HOSP")])


def test_iti8_refusal_is_a_serious_failure_with_the_err_text():
    (ds,) = v2_datasets(adt("A01", cx(new_ins(), NIR)).encode(), AE.format(c="x").encode(),
                        None, None)
    rec = _valid(ds)
    assert rec.outcome == 8 and "INS key is wrong" in rec.outcome_description


def test_iti9_is_a_query_with_the_qpd_segment_and_the_returned_identifiers():
    ipp, ins = new_local(), new_ins()
    request = qbp(cx(ipp, LOCAL, "HOSP"), ctrl="Q7")
    answer = (f"MSH|^~\\&|OPENDMP|OPENDMP|CONSUMER|DEPT|2026||RSP^K23^RSP_K23|R1|P|2.5\r"
              f"MSA|AA|Q7\rQAK|TQ7|OK\rQPD|IHE PIX Query|TQ7|{cx(ipp, LOCAL, 'HOSP')}\r"
              f"PID|||{cx(ins, NIR, '', 'NH')}||~^^^^^^S\r")
    (ds,) = v2_datasets(request.encode(), answer.encode(), "10.0.0.8", None)
    rec = _valid(ds)
    assert (rec.event_id.code, rec.action, rec.event_types[0].code) == ("110112", "E", "ITI-9")
    assert rec.patient_ids == [cx(ipp, LOCAL, "HOSP"), cx(ins, NIR, "", "NH")]
    (q,) = [o for o in rec.objects if o.role == "24"]
    assert base64.b64decode(q.query).decode().startswith("QPD|IHE PIX Query|TQ7|")
    assert q.id_type.code == "ITI-9" and q.object_id == "Q7"


def test_unreadable_or_foreign_messages_are_not_pix_transactions():
    assert v2_datasets(b"garbage", b"", None, None) == []
    orm = "MSH|^~\\&|A|B|C|D|2026||ORM^O01|1|P|2.5\r"
    assert v2_datasets(orm.encode(), AA.format(c="1").encode(), None, None) == []


# ----------------------------------------------------------------------- real server
class _Consumer:
    """A PIX Consumer on MLLP answering AA to every ITI-10 notification."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                buf = b""
                while b"\x1c\r" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
                if b"\x1c\r" in buf:
                    self.received.append(buf)
                    conn.sendall(b"\x0bMSH|^~\\&|C|C|OPENDMP|OPENDMP|2026||ACK|1|P|2.5\rMSA|AA|1\r"
                                 b"\x1c\r")


@pytest.fixture(scope="module")
def pix(module_server_factory):
    consumer = _Consumer()
    mllp = free_port("127.0.0.1")
    srv = module_server_factory(env={
        "OPENDMP_MLLP_PORT": str(mllp),
        "OPENDMP_PIX_DOMAINS": f"HOSP&{LOCAL}&ISO",
        "OPENDMP_PIX_CONSUMERS": f"c1=127.0.0.1:{consumer.port}/HOSP+{NIR}",
        "OPENDMP_PIX_DISPATCH_SECONDS": "0.2",
    })
    srv.mllp_port, srv.consumer = mllp, consumer
    wait_listening(mllp)
    return srv


def _events(srv, **params) -> list[dict]:
    r = httpx.get(srv.url("/audit"), params={"limit": 1000, **params}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["events"]


def _xml_of(srv, event_id: int) -> bytes:
    out = srv.run_cli(["audit", "list", "--json", "--xml", "--limit", "1000"])
    import json

    for e in json.loads(out.stdout):
        if e["id"] == event_id:
            return e["xml"].encode()
    raise AssertionError(f"audit event {event_id} not found")


def test_iti8_iti9_iti10_over_the_real_mllp_listener_arrive_in_our_arr(pix):
    ins, ipp = new_ins(), new_local()
    ins_cx = f"{ins}^^^&{NIR}&ISO"
    a = send1(pix.mllp_port, adt("A01", f"{cx(ipp, LOCAL, 'HOSP')}~{cx(ins, NIR, '', 'INS')}",
                                 ctrl="FEED1"))
    assert a.msa == "AA"
    assert send1(pix.mllp_port, qbp(cx(ipp, LOCAL, "HOSP"), ctrl="QRY1")).msa == "AA"
    bad = ins[:13] + f"{(int(ins[13:]) % 97) + 1:02d}"
    assert send1(pix.mllp_port, adt("A01", cx(bad, NIR, "", "INS"), ctrl="BAD1")).msa == "AE"

    # queried back by the INS (CX.4 namespace and CX.5 ignored by the patient key)
    feed_ev = wait_for(lambda: _events(pix, patient=ins_cx, transaction="ITI-8"), what="ITI-8")
    (e,) = feed_ev
    assert (e["event"]["code"], e["action"], e["outcome"], e["schemaValid"]) == ("110110", "C", 0, True)
    src = [p for p in e["participants"] if "110153" in p["roles"]][0]
    assert src["userId"] == "HIS|CHU" and src["networkAccessPoint"] == "127.0.0.1"
    query_ev = wait_for(lambda: _events(pix, patient=ins_cx, transaction="ITI-9"), what="ITI-9")
    assert query_ev[0]["event"]["code"] == "110112" and query_ev[0]["schemaValid"]
    rec = parse_audit(_xml_of(pix, query_ev[0]["id"]))
    (q,) = [o for o in rec.objects if o.role == "24"]
    assert base64.b64decode(q.query).startswith(b"QPD|IHE PIX Query|TQRY1|")
    refused = wait_for(lambda: [e for e in _events(pix, transaction="ITI-8", outcome="8")
                                if any(p.startswith(bad) for p in e["patients"])], what="AE")
    assert refused[0]["schemaValid"]
    # ITI-10: the PIX Manager is the source of the export to the consumer
    notified = wait_for(lambda: _events(pix, patient=ins_cx, transaction="ITI-10"), what="ITI-10")
    n = notified[0]
    assert (n["event"]["code"], n["action"], n["outcome"], n["schemaValid"]) == ("110110", "U", 0, True)
    dest = [p for p in n["participants"] if "110152" in p["roles"]][0]
    assert dest["userId"].startswith("c1|") and dest["networkAccessPoint"] == "127.0.0.1"


def test_iti44_iti45_on_pix_v3_arrive_in_our_arr(pix):
    ins, ipp = new_ins(), new_local()
    ins_cx = f"{ins}^^^&{NIR}&ISO"
    assert ack(_send(pix, feed("add", [(ipp, LOCAL)], [(ins, NIR)]))) == "AA"
    assert ack(_send(pix, query((ipp, LOCAL)))) == "AA"
    old = new_local()
    assert ack(_send(pix, feed("add", [(old, LOCAL)]))) == "AA"
    assert ack(_send(pix, feed("merge", [(ipp, LOCAL)], prior=(old, LOCAL)))) == "AA"

    added = wait_for(lambda: _events(pix, patient=ins_cx, transaction="ITI-44"), what="ITI-44")
    assert [(e["action"], e["outcome"], e["schemaValid"]) for e in added] == [("C", 0, True)]
    rec = parse_audit(_xml_of(pix, added[0]["id"]))
    assert all(any(t == "II" for t, _ in o.details) for o in rec.objects)
    queried = wait_for(lambda: _events(pix, patient=ins_cx, transaction="ITI-45"), what="ITI-45")
    assert queried[0]["event"]["code"] == "110112" and queried[0]["schemaValid"]
    merged = wait_for(lambda: len(_events(pix, patient=f"{old}^^^&{LOCAL}&ISO",
                                          transaction="ITI-44")) >= 2 and
                      _events(pix, patient=f"{old}^^^&{LOCAL}&ISO", transaction="ITI-44"),
                      what="the merge")
    assert sorted(e["action"] for e in merged) == ["C", "D"]
    survivor = _events(pix, patient=f"{ipp}^^^&{LOCAL}&ISO", transaction="ITI-44")
    assert sorted(e["action"] for e in survivor) == ["C", "U"]
    # ITI-46 is not configured here; the ITI-10 of the v3 feed went to the MLLP consumer
    wait_for(lambda: _events(pix, patient=ins_cx, transaction="ITI-10"), what="ITI-10 of ITI-44")


def test_notification_audit_of_an_unreachable_consumer_says_it_will_retry():
    from pix.config import Consumer

    msg = (f"MSH|^~\\&|OPENDMP|DMP|c1||2026||ADT^A31^ADT_A05|N1|P|2.5\rEVN|A31|2026\r"
           f"PID|||{new_ins()}^^^&{NIR}&ISO||~^^^^^^S\rPV1||N\r").encode()
    (ds,) = notification_datasets(Consumer("c1", "10.1.1.1", 2575), msg, None, "refused")
    rec = _valid(ds)
    assert rec.outcome == 8 and "will retry" in rec.outcome_description
    assert rec.event_types[0].code == "ITI-10"


def test_iti46_notification_audit_names_the_consumer_endpoint_and_the_patients():
    from pix.config import Consumer, PixConfig
    from pix.hl7v3.iti46 import notification
    from pix.model import Identifier

    config = PixConfig.from_settings({"OPENDMP_PIX_DOMAINS": f"HOSP&{LOCAL}&ISO"})
    consumer = Consumer("v3c", "", 0, url="https://consumer.example/pix")
    ins = new_ins()
    msg = notification(config, consumer, [Identifier(ins, NIR)])
    (ds,) = notification_datasets(consumer, msg, "AA", None)
    rec = _valid(ds)
    assert (rec.event_id.code, rec.action, rec.event_types[0].code, rec.outcome) == \
        ("110110", "U", "ITI-46", 0)
    assert rec.patient_ids == [f"{ins}^^^&{NIR}&ISO"]
    dest = [p for p in rec.participants if p.roles[0].code == "110152"][0]
    assert (dest.user_id, dest.network_access_point) == ("https://consumer.example/pix",
                                                         "consumer.example")
    assert all(t == "II" for o in rec.objects for t, _ in o.details)
