"""PIX Manager end to end: the real server (``opendmp serve``, MLLP listener child),
real MLLP clients (python-hl7's ``mllp_send`` command, ``hl7.client.MLLPClient``),
on SQLite and PostgreSQL. ITI TF-2a §3.8 (ITI-8), §3.9 (ITI-9), §3.10 (ITI-10)."""
from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import factory as F
import pytest
from harness.postgres import free_port
from hl7.mllp import start_hl7_server
from lxml import etree
from pixclient import (
    LOCAL,
    LOCAL2,
    NIA,
    NIR,
    Persistent,
    adt,
    cx,
    mllp_send,
    new_ins,
    new_local,
    qbp,
    send1,
)
from xds import ITI42, NS, error_codes, find_documents, registry, status


@pytest.fixture(scope="module")
def pix(module_server_factory):
    mllp, consumer = free_port("127.0.0.1"), free_port("127.0.0.1")
    srv = module_server_factory(env={
        "OPENDMP_MLLP_PORT": str(mllp),
        "OPENDMP_PIX_DOMAINS": f"HOSP&{LOCAL}&ISO,HOSP2&{LOCAL2}&ISO@HIS2|CHU2",
        "OPENDMP_PIX_CONSUMERS": f"c1=127.0.0.1:{consumer}/HOSP+{NIR}",
        "OPENDMP_PIX_MAX_BACKOFF_SECONDS": "1",
        "OPENDMP_PIX_DISPATCH_SECONDS": "0.2",
        "OPENDMP_MLLP_MAX_BYTES": "65536",
    })
    srv.mllp_port, srv.consumer_port = mllp, consumer
    _wait_listening(mllp)
    return srv


def _wait_listening(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _stats(srv) -> dict:
    """MLLP counters summed over the listener processes (they share the port)."""
    total: dict = {}
    for path in srv.home.glob(f"mllp-stats-{srv.mllp_port}-*.json"):
        try:
            for k, v in json.loads(path.read_text()).items():
                total[k] = total.get(k, 0) + v
        except (OSError, ValueError):
            pass
    return total


def _wait_for(pred, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.1)


# ----------------------------------------------------------------------- ITI-8 / ITI-9

def test_iti8_feed_links_local_id_to_ins_and_iti9_returns_it(pix):
    ins, ipp = new_ins(), new_local()
    a = send1(pix.mllp_port, adt("A01", f"{cx(ipp, LOCAL, 'HOSP')}~{cx(ins, NIR, '', 'INS')}"))
    assert a.msa == "AA", a
    assert a.field("MSH", 9) == "ACK^A01^ACK" and a.field("MSH", 12) == "2.5"
    q = send1(pix.mllp_port, qbp(cx(ipp, LOCAL, "HOSP")))
    assert (q.msa, q.qak) == ("AA", "OK"), q
    assert q.ids() == {(ins, NIR)}
    assert q.field("PID", 5) == "~^^^^^^S"
    # requested domains: the query's own domain is returned when asked for
    q = send1(pix.mllp_port, qbp(cx(ins, NIR), f"^^^HOSP~^^^&{NIR}&ISO"))
    assert q.ids() == {(ipp, LOCAL), (ins, NIR)}


def test_iti8_v231_acknowledged_in_v231_form(pix):
    a = send1(pix.mllp_port, adt("A04", cx(new_local(), LOCAL, "HOSP"), version="2.3.1"))
    assert a.msa == "AA" and a.field("MSH", 9) == "ACK^A04" and a.field("MSH", 12) == "2.3.1"


def test_iti8_a08_update_and_iti9_case2_nf(pix):
    ipp = new_local()
    assert send1(pix.mllp_port, adt("A08", cx(ipp, LOCAL, "HOSP"))).msa == "AA"
    q = send1(pix.mllp_port, qbp(cx(ipp, LOCAL, "HOSP"), f"^^^&{NIR}&ISO"))
    assert (q.msa, q.qak, q.pid3) == ("AA", "NF", [])


def test_iti8_wrong_ins_key_is_refused_AE_102_and_never_stored(pix):
    ins, ipp = new_ins(), new_local()
    bad = ins[:13] + f"{(int(ins[13:]) % 97) + 1:02d}"
    a = send1(pix.mllp_port, adt("A01", f"{cx(ipp, LOCAL, 'HOSP')}~{cx(bad, NIR)}", version="2.3.1"))
    assert a.msa == "AE" and a.err_codes == ["102"], a
    assert "wrong key" in a.text
    for ident in (cx(bad, NIR), cx(ipp, LOCAL, "HOSP")):
        q = send1(pix.mllp_port, qbp(ident))
        assert (q.msa, q.qak) == ("AE", "AE"), q  # nothing of the refused feed was stored


@pytest.mark.parametrize("value", ["12345", "1840575123456AB", "984057512345625"])
def test_iti8_malformed_ins_is_refused(pix, value):
    a = send1(pix.mllp_port, adt("A01", cx(value, NIR)))
    assert a.msa == "AE" and a.err_codes == ["102"], a


def test_iti8_traits_contradicting_the_ins_are_refused_not_linked(pix):
    ins, ipp1, ipp2 = new_ins(sex="F", year=1979, month=3), new_local(), new_local()
    ok = adt("A01", f"{cx(ipp1, LOCAL, 'HOSP')}~{cx(ins, NIR)}", name="MARTIN^ALICE^^^^^L",
             dob="19790312", sex="F")
    assert send1(pix.mllp_port, ok).msa == "AA"
    other = adt("A01", f"{cx(ipp2, LOCAL2, 'HOSP2')}~{cx(ins, NIR)}", name="DURAND^ALICE^^^^^L",
                dob="19790312", sex="F", app="HIS2", facility="CHU2")
    a = send1(pix.mllp_port, other)
    assert a.msa == "AE" and a.err_codes == ["205"] and "birth name" in a.text, a
    q = send1(pix.mllp_port, qbp(cx(ins, NIR)))
    assert q.ids() == {(ipp1, LOCAL)}


def test_iti8_ins_encoding_contradicting_sex_is_refused(pix):
    ins = new_ins(sex="M")
    a = send1(pix.mllp_port, adt("A01", cx(ins, NIR), sex="F"))
    assert a.msa == "AE" and a.err_codes == ["205"] and "sex" in a.text, a


def test_iti8_two_ins_of_one_domain_for_one_patient_is_a_conflict(pix):
    ipp = new_local()
    assert send1(pix.mllp_port, adt("A01", f"{cx(ipp, LOCAL, 'HOSP')}~{cx(new_ins(), NIR)}")).msa == "AA"
    a = send1(pix.mllp_port, adt("A08", f"{cx(ipp, LOCAL, 'HOSP')}~{cx(new_ins(), NIR)}"))
    assert a.msa == "AE" and a.err_codes == ["205"], a


def test_iti8_unknown_domain_AE_204_with_location(pix):
    a = send1(pix.mllp_port, adt("A01", f"{new_local()}^^^NOWHERE&1.2.3.4.5.6&ISO", version="2.3.1"))
    assert a.msa == "AE" and a.err_codes == ["204"], a
    assert a.errors[0][1].startswith("PID^1^3^204")  # v2.3.1 ERR-1 (ELD)


def test_iti8_source_not_authorized_for_domain_is_refused(pix):
    a = send1(pix.mllp_port, adt("A01", cx(new_local(), LOCAL2, "HOSP2"), app="HIS", facility="CHU"))
    assert a.msa == "AE" and a.err_codes == ["204"], a
    ok = send1(pix.mllp_port, adt("A01", cx(new_local(), LOCAL2, "HOSP2"), app="HIS2", facility="CHU2"))
    assert ok.msa == "AA", ok


def test_iti8_without_pid_is_refused(pix):
    msg = "MSH|^~\\&|HIS|CHU|OPENDMP|OPENDMP|2026||ADT^A01^ADT_A01|NOPID|P|2.3.1\rEVN|A01|2026\rPV1||O\r"
    a = send1(pix.mllp_port, msg)
    assert a.msa in ("AE", "AR") and a.err_codes == ["101"], a


@pytest.mark.parametrize("msg, code", [
    ("MSH|^~\\&|LAB|CHU|OPENDMP|OPENDMP|2026||ORU^R01^ORU_R01|U1|P|2.5\rPID|||1\r", "200"),
    ("MSH|^~\\&|HIS|CHU|OPENDMP|OPENDMP|2026||ADT^A03^ADT_A03|U2|P|2.5\rPID|||1\r", "201"),
    ("MSH|^~\\&|HIS|CHU|OPENDMP|OPENDMP|2026||QBP^Q22^QBP_Q21|U3|P|2.5\rQPD|x\r", "201"),
    ("MSH|^~\\&|HIS|CHU|OPENDMP|OPENDMP|2026||ADT^A01^ADT_A01|U4|P|2.1\rPID|||1\r", "203"),
    ("MSH|^~\\&|HIS|CHU|OPENDMP|OPENDMP|2026||ADT^A01^ADT_A01|U5|X|2.5\rPID|||1\r", "202"),
    ("this is not HL7", "100"),
])
def test_unsupported_or_unreadable_messages_get_AR_not_silence(pix, msg, code):
    from pixclient import Persistent as P
    with P(pix.mllp_port) as c:  # mllp_send --loose needs an MSH start: raw client here
        a = c.send(msg)
    assert a.msa == "AR" and a.err_codes == [code], a


def test_iti9_unknown_identifier_case3_and_unknown_domains_case4(pix):
    q = send1(pix.mllp_port, qbp(cx("NOBODY-1", LOCAL, "HOSP")))
    assert (q.msa, q.qak) == ("AE", "AE") and q.err_locations == ["QPD^1^3^1^1"], q
    ipp = new_local()
    assert send1(pix.mllp_port, adt("A01", cx(ipp, LOCAL, "HOSP"))).msa == "AA"
    q = send1(pix.mllp_port, qbp(cx(ipp, LOCAL, "HOSP"), "^^^HOSP~^^^UNKNOWN1~^^^&9.9.9&ISO"))
    assert (q.msa, q.qak) == ("AE", "AE"), q
    assert q.err_locations == ["QPD^1^4^2", "QPD^1^4^3"] and q.err_codes == ["204", "204"]
    q = send1(pix.mllp_port, qbp(f"{ipp}^^^ELSEWHERE"))
    assert q.msa == "AE" and q.err_locations == ["QPD^1^3^1^4"], q


def test_persistent_connection_carries_many_messages_in_order(pix):
    ipps = [new_local() for _ in range(20)]
    with Persistent(pix.mllp_port) as c:
        for i, ipp in enumerate(ipps):
            a = c.send(adt("A04", cx(ipp, LOCAL, "HOSP"), ctrl=f"P{i}"))
            assert a.msa == "AA" and a.field("MSA", 2) == f"P{i}", a
        for ipp in ipps:
            assert c.send(qbp(cx(ipp, LOCAL, "HOSP"))).qak == "NF"


def test_mllp_send_several_messages_on_one_connection(pix):
    ipps = [new_local() for _ in range(3)]
    answers = mllp_send(pix.mllp_port, *[adt("A01", cx(i, LOCAL, "HOSP")) for i in ipps])
    assert [a.msa for a in answers] == ["AA", "AA", "AA"]


# ----------------------------------------------------------------------- framing

def test_framing_error_closes_the_connection_and_is_counted(pix):
    before = _stats(pix).get("framing_errors", 0)
    s = socket.create_connection(("127.0.0.1", pix.mllp_port), timeout=30)
    s.sendall(b"GARBAGE WITHOUT START BLOCK\x1c\r")
    assert s.recv(100) == b""  # closed cleanly, nothing answered to unframed bytes
    s.close()
    _wait_for(lambda: _stats(pix).get("framing_errors", 0) > before)
    # the listener is still serving
    assert send1(pix.mllp_port, adt("A01", cx(new_local(), LOCAL, "HOSP"))).msa == "AA"


def test_oversized_message_closes_the_connection_and_is_counted(pix):
    before = _stats(pix).get("oversized", 0)
    s = socket.create_connection(("127.0.0.1", pix.mllp_port), timeout=30)
    try:
        s.sendall(b"\x0bMSH|^~\\&|" + b"X" * 200_000 + b"\x1c\r")
        data = s.recv(100)
    except (ConnectionResetError, BrokenPipeError):
        data = b""
    assert data == b""
    s.close()
    _wait_for(lambda: _stats(pix).get("oversized", 0) > before)
    assert send1(pix.mllp_port, adt("A01", cx(new_local(), LOCAL, "HOSP"))).msa == "AA"


# ----------------------------------------------------------------------- registry + merge

def _register(server, patient_cx):
    sub = F.submission(patient_cx)
    return registry(server).call(ITI42, F.submit_objects_request(sub)).payload


def test_ins_feed_opens_the_dmp_and_merge_moves_documents_to_the_survivor(pix):
    nia = new_ins(sex="F", year=1990, month=7, nia=True)
    nir = new_ins(sex="F", year=1990, month=7)
    ipp = new_local()
    nia_cx, nir_cx = f"{nia}^^^&{NIA}&ISO^NH", f"{nir}^^^&{NIR}&ISO^NH"
    # before the feed the registry does not know the patient
    assert error_codes(_register(pix, nia_cx)) == ["XDSUnknownPatientId"]
    a = send1(pix.mllp_port, adt("A01", f"{cx(ipp, LOCAL, 'HOSP')}~{cx(nia, NIA)}",
                                 name="ROUX^LEA^^^^^L", dob="19900704", sex="F"))
    assert a.msa == "AA", a
    answer = _register(pix, nia_cx)
    assert status(answer) == "Success", etree.tostring(answer)
    # NIA replaced by the NIR: A40 with PID-3 = NIR (survivor), MRG-1 = NIA (subsumed)
    m = send1(pix.mllp_port, adt("A40", cx(nir, NIR), mrg=cx(nia, NIA),
                                 name="ROUX^LEA^^^^^L", dob="19900704", sex="F"))
    assert m.msa == "AA", m
    docs = find_documents(pix, nir_cx).xpath("//rim:ExtrinsicObject", namespaces=NS)
    assert len(docs) == 1
    # the registry accepts documents for the survivor, no longer for the subsumed id,
    # under which nothing is found any more
    assert status(_register(pix, nir_cx)) == "Success"
    refused = _register(pix, nia_cx)
    assert error_codes(refused) == ["XDSUnknownPatientId"]
    assert "was merged into" in etree.tostring(refused).decode()
    assert not find_documents(pix, nia_cx).xpath("//rim:ExtrinsicObject", namespaces=NS)
    # ITI-9: the subsumed identifier is no longer a key; the local id now links to the NIR
    q = send1(pix.mllp_port, qbp(cx(nia, NIA)))
    assert (q.msa, q.qak) == ("AE", "AE") and q.err_locations == ["QPD^1^3^1^1"], q
    q = send1(pix.mllp_port, qbp(cx(ipp, LOCAL, "HOSP")))
    assert q.ids() == {(nir, NIR)}, q


def test_a40_merge_of_unknown_patient_is_refused(pix):
    a = send1(pix.mllp_port, adt("A40", cx(new_local(), LOCAL, "HOSP"),
                                 mrg=cx(new_local(), LOCAL, "HOSP"), version="2.3.1"))
    assert a.msa == "AE" and a.err_codes == ["204"], a
    assert a.errors[0][1].startswith("MRG^1^1")


def test_a40_merge_of_local_ids_moves_links(pix):
    ins, old, new = new_ins(), new_local(), new_local()
    assert send1(pix.mllp_port, adt("A01", f"{cx(old, LOCAL, 'HOSP')}~{cx(ins, NIR)}")).msa == "AA"
    assert send1(pix.mllp_port, adt("A01", cx(new, LOCAL, "HOSP"))).msa == "AA"
    m = send1(pix.mllp_port, adt("A40", cx(new, LOCAL, "HOSP"), mrg=cx(old, LOCAL, "HOSP")))
    assert m.msa == "AA", m
    assert send1(pix.mllp_port, qbp(cx(new, LOCAL, "HOSP"))).ids() == {(ins, NIR)}
    assert send1(pix.mllp_port, qbp(cx(ins, NIR))).ids() == {(new, LOCAL)}


# ----------------------------------------------------------------------- ITI-10

class _Consumer:
    """A PIX Consumer on MLLP (python-hl7 asyncio server in a thread), answering AA."""

    def __init__(self, port: int) -> None:
        self.port, self.received = port, []
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        asyncio.set_event_loop(self.loop)

        async def on_client(reader, writer):
            try:
                while True:
                    msg = await reader.readmessage()
                    self.received.append(str(msg))
                    writer.writemessage(msg.create_ack())
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                writer.close()

        async def main():
            self.server = await start_hl7_server(on_client, "127.0.0.1", self.port,
                                                 reuse_address=True)
            self.ready.set()
            await asyncio.Event().wait()

        try:
            self.loop.run_until_complete(main())
        except RuntimeError:
            pass

    def __enter__(self):
        self.thread.start()
        self.ready.wait(10)
        return self

    def __exit__(self, *exc):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def test_iti10_consumer_down_gets_notifications_later_in_order(pix):
    ipps = [new_local() for _ in range(3)]
    ins = new_ins()
    # the consumer is down: the feeds are accepted all the same
    for ipp in ipps:
        assert send1(pix.mllp_port, adt("A01", cx(ipp, LOCAL, "HOSP"))).msa == "AA"
    assert send1(pix.mllp_port, adt("A08", f"{cx(ipps[0], LOCAL, 'HOSP')}~{cx(ins, NIR)}")).msa == "AA"
    with _Consumer(pix.consumer_port) as consumer:
        def mine():
            return [m for m in consumer.received if any(i in m for i in ipps)]
        _wait_for(lambda: len(mine()) >= 4, timeout=60)
    got = mine()
    order = [next(i for i, ipp in enumerate(ipps) if ipp in m) for m in got[:3]]
    assert order == [0, 1, 2]
    assert all("ADT^A31^ADT_A05" in m and "~^^^^^^S" in m for m in got)
    assert ins in got[3] and ipps[0] in got[3]  # the link to the INS was notified


def test_cli_pix_query_answers_like_iti9(pix):
    ins, ipp = new_ins(), new_local()
    assert send1(pix.mllp_port, adt("A01", f"{cx(ipp, LOCAL, 'HOSP')}~{cx(ins, NIR)}")).msa == "AA"
    proc = pix.run_cli(["pix", "query", cx(ipp, LOCAL, "HOSP")])
    assert proc.returncode == 0 and proc.stdout.split() == [f"{ins}^^^ASIP-SANTE-INS-NIR&{NIR}&ISO"], proc
    proc = pix.run_cli(["pix", "query", cx("NOBODY", LOCAL, "HOSP")])
    assert proc.returncode == 2 and "unknown patient identifier" in proc.stderr
    assert pix.run_cli(["pix", "outbox"]).returncode == 0
