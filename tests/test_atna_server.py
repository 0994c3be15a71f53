"""The Audit Record Repository and per-transaction auditing on the real server (ITI-20,
ITI-19), with clients nobody here wrote: util-linux ``logger`` (UDP, TCP), ``openssl
s_client`` (with and without a client certificate), rsyslog + rsyslog-gnutls forwarding
over mutual TLS; plus the corpus's audit messages sent over the wire, every XDS
transaction's audit message, the FHIR AuditEvent search (ITI-81), and delivery through
the spool while the ARR is down."""
from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import factory as F
import httpx
import pytest
from corpus import cases, corpus_path
from harness.postgres import free_port
from xds import ITI42, find_documents, registry, repository, repository_unique_id

from atna import pki
from atna.syslog import format_rfc5424, octet_frame
from repository.source import DocumentContent, provide_and_register, retrieve


# ---------------------------------------------------------------------------- helpers
def wait_for(predicate, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def audit(server, **params) -> list[dict]:
    params.setdefault("limit", 1000)
    r = httpx.get(server.url("/audit"), params=params, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["events"]


def stats(server) -> dict:
    try:
        return json.loads((Path(server.home) / "atna" / "arr-stats.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}


def tls_port(server) -> int:
    return int(server.extra_env["OPENDMP_AUDIT_TLS_PORT"])


def udp_port(server) -> int:
    return int(server.extra_env["OPENDMP_AUDIT_UDP_PORT"])


def one_line(path: Path) -> str:
    """An audit XML as one syslog MSG (logger sends one message per line)."""
    return " ".join(path.read_text(encoding="utf-8").split("\n")).strip()


def wait_listening(port: int) -> None:
    def up():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False
    wait_for(up, what=f"port {port}")


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pki")
    pki.issue(d, "node")
    pki.issue(d, "lab-client")
    pki.issue(d, "rsyslog-client")
    return d


def pki_env(d: Path) -> dict:
    return {"OPENDMP_TLS_CERT": str(d / "node.pem"), "OPENDMP_TLS_KEY": str(d / "node.key"),
            "OPENDMP_TLS_CA": str(d / "ca.pem")}


@pytest.fixture(scope="module")
def arr(module_server_factory, pki_dir):
    """A server whose ARR also listens on plain TCP (for logger), with a known PKI."""
    srv = module_server_factory(env={**pki_env(pki_dir), "OPENDMP_AUDIT_TCP_PORT": str(free_port())})
    wait_listening(tls_port(srv))
    return srv


def tls_client(pki_dir: Path, name: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki_dir / "ca.pem"))
    if name:
        ctx.load_cert_chain(str(pki_dir / f"{name}.pem"), str(pki_dir / f"{name}.key"))
    return ctx


def send_tls(server, pki_dir: Path, frames: bytes, name: str = "lab-client") -> None:
    with socket.create_connection(("127.0.0.1", tls_port(server)), timeout=30) as raw, \
            tls_client(pki_dir, name).wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(frames)
        # close_notify both ways: closing with the server's session tickets unread would
        # make the kernel send RST, which may drop what the server has not read yet
        try:
            s.unwrap()
        except (ssl.SSLError, OSError):
            pass


def from_peer(server, cn: str, **params) -> list[dict]:
    return [e for e in audit(server, **params) if (e["peer"] or "").startswith(f"commonName={cn},")]


# ---------------------------------------------------------------------------- every transaction
def test_every_xds_transaction_is_audited_with_its_participants_and_objects(server):
    patient = F.new_ins()
    assert server.run_cli(["patient", "add", patient]).returncode == 0
    sub = F.submission(patient)
    ss_uid = sub.submission_set.unique_id
    assert registry(server).call(ITI42, F.submit_objects_request(sub)).payload.get("status").endswith("Success")
    find_documents(server, patient)
    pnr = F.submission(patient)
    for de in pnr.documents:
        de.hash = de.size = de.repository_unique_id = None
    doc_uid = pnr.documents[0].unique_id
    provide_and_register(repository(server), pnr,
                         {pnr.documents[0].id: DocumentContent.of(b"<doc>audit me</doc>")})
    retrieve(repository(server), repository_unique_id(server), [doc_uid])
    unknown = F.new_ins()  # not registered: XDSUnknownPatientId
    registry(server).call(ITI42, F.submit_objects_request(F.submission(unknown)))

    def events():
        got = audit(server, patient=patient) + audit(server, entity=doc_uid) + audit(server, patient=unknown)
        return got if len(got) >= 5 else None
    got = wait_for(events, what="the audit messages of 5 transactions")
    by_type = {}
    for e in got:
        by_type.setdefault(e["types"][0]["code"], []).append(e)

    iti42 = [e for e in by_type["ITI-42"] if e["patients"] == [patient]][0]
    assert (iti42["event"]["code"], iti42["action"], iti42["outcome"]) == ("110107", "C", 0)
    assert iti42["submissionSets"] == [ss_uid] and iti42["schemaValid"]
    roles = {tuple(p["roles"]): p for p in iti42["participants"]}
    assert roles[("110153",)]["requestor"] and roles[("110153",)]["networkAccessPoint"] == "127.0.0.1"
    assert roles[("110152",)]["userId"].endswith("/xds/registry")

    iti18 = by_type["ITI-18"][0]
    assert (iti18["event"]["code"], iti18["action"], iti18["outcome"]) == ("110112", "E", 0)
    xml = httpx.get(server.url("/fhir/AuditEvent"), params={"patient": patient, "subtype": "ITI-18"},
                    timeout=30).json()["entry"][0]["resource"]
    query = [e for e in xml["entity"] if e["role"]["code"] == "24"][0]
    assert patient.replace("&", "&amp;") in base64.b64decode(query["query"]).decode()

    iti41 = by_type["ITI-41"][0]
    assert (iti41["event"]["code"], iti41["outcome"], iti41["patients"]) == ("110107", 0, [patient])
    iti43 = by_type["ITI-43"][0]
    assert (iti43["event"]["code"], iti43["action"], iti43["documents"]) == ("110106", "R", [doc_uid])
    refused = [e for e in by_type["ITI-42"] if e["patients"] == [unknown]][0]
    assert refused["outcome"] == 8

    # the patient's access history, from the command line
    history = server.run_cli(["audit", "history", patient, "--json"])
    assert history.returncode == 0, history.stderr
    # (atna.history: the retrieve names the documents, found through the registry)
    kinds = sorted(a["transaction"] for a in json.loads(history.stdout)["accesses"])
    assert kinds == ["ITI-18", "ITI-41", "ITI-42", "ITI-43"]


def test_fhir_audit_event_search_follows_iti81(server):
    patient = F.new_ins()
    server.run_cli(["patient", "add", patient])
    find_documents(server, patient)
    wait_for(lambda: audit(server, patient=patient), what="the ITI-18 audit")
    url = server.url("/fhir/AuditEvent")
    bundle = httpx.get(url, params={"patient.identifier": "urn:oid:1.2.250.1.213.1.4.8|" + patient.split("^")[0],
                                    "date": "ge2020-01-01", "type": "http://dicom.nema.org/resources/ontology/DCM|110112",
                                    "outcome": "0"}, timeout=30)
    assert bundle.status_code == 200
    assert bundle.headers["content-type"].startswith("application/fhir+json")
    doc = bundle.json()
    assert doc["resourceType"] == "Bundle" and doc["type"] == "searchset" and doc["total"] == 1
    res = doc["entry"][0]["resource"]
    assert res["resourceType"] == "AuditEvent"
    assert res["type"] == {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110112",
                           "display": "Query"}
    assert res["subtype"][0]["code"] == "ITI-18" and res["outcome"] == "0" and res["action"] == "E"
    assert {a["requestor"] for a in res["agent"]} == {True, False}
    assert httpx.get(url, params={"patient": patient, "date": "lt2020-01-01"}, timeout=30).json()["total"] == 0
    bad = httpx.get(url, params={"bogus": "1"}, timeout=30)
    assert bad.status_code == 400 and bad.json()["resourceType"] == "OperationOutcome"


# ---------------------------------------------------------------------------- real clients
def test_logger_rfc5424_over_udp_and_tcp_is_stored(arr):
    path = corpus_path("messages/ipf/audit/pdq.xml")
    tag = f"logger-{os.getpid()}"
    base = ["logger", "--rfc5424", "--size", "65536", "-n", "127.0.0.1", "-t", tag,
            "--msgid", "IHE+RFC-3881"]
    subprocess.run(base + ["--udp", "-P", str(udp_port(arr)), one_line(path)], check=True)
    tcp = arr.extra_env["OPENDMP_AUDIT_TCP_PORT"]
    subprocess.run(base + ["--tcp", "--octet-count", "-P", tcp,
                           one_line(corpus_path("messages/ipf/audit/pixquery.xml"))], check=True)
    subprocess.run(base + ["--tcp", "-P", tcp,  # LF framing (RFC 6587)
                           one_line(corpus_path("messages/ipf/audit/xcpd.xml"))], check=True)
    big = one_line(corpus_path("messages/epr-by-example/samples/iti-18-log.xml"))
    assert len(big) > 4000  # the size logger truncates to 1 KiB without --size
    subprocess.run(base + ["--udp", "-P", str(udp_port(arr)), big], check=True)

    def stored():
        got = {e["types"][0]["code"]: e for e in audit(arr, limit=1000)
               if e["transport"] in ("udp", "tcp")}
        return got if {"ITI-21", "ITI-9", "ITI-55", "ITI-18"} <= set(got) else None
    got = wait_for(stored, what="the logger messages")
    assert got["ITI-21"]["transport"] == "udp" and got["ITI-9"]["transport"] == "tcp"
    assert got["ITI-18"]["schemaValid"] is False  # Swiss EPR sample: kept, marked invalid
    assert got["ITI-18"]["patients"]


def test_openssl_s_client_with_a_client_certificate_is_served_without_one_refused_and_audited(arr, pki_dir):
    msg = format_rfc5424(corpus_path("messages/ipf/audit/start.xml").read_bytes().replace(b"\n", b" "),
                         hostname="s-client-host")
    before = stats(arr).get("tls_refused", 0)
    ok = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{tls_port(arr)}", "-quiet",
                         "-no_ign_eof", "-cert", str(pki_dir / "lab-client.pem"),
                         "-key", str(pki_dir / "lab-client.key"), "-CAfile", str(pki_dir / "ca.pem")],
                        input=octet_frame(msg), capture_output=True, timeout=30)
    assert b"Verify return code: 0" in ok.stderr or b"verify return:1" in ok.stderr
    wait_for(lambda: [e for e in from_peer(arr, "lab-client", event="110100")
                      if e["types"][0]["code"] == "110120" and e["source"] == "app-connect"],
             what="the s_client message")
    subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{tls_port(arr)}", "-quiet",
                    "-no_ign_eof", "-CAfile", str(pki_dir / "ca.pem")],
                   input=octet_frame(msg), capture_output=True, timeout=30)
    wait_for(lambda: stats(arr).get("tls_refused", 0) > before, what="the refusal counter")
    alerts = wait_for(lambda: audit(arr, event="110113"), what="the security alert")
    assert alerts[0]["types"][0]["code"] == "110126" and alerts[0]["outcome"] == 4
    assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in arr.log_text()


def test_rsyslog_gnutls_forwards_over_mutual_tls(arr, pki_dir, tmp_path):
    rsyslogd = shutil.which("rsyslogd") or "/usr/sbin/rsyslogd"
    if not os.path.exists(rsyslogd) or not any(Path("/usr/lib").rglob("lmnsd_gtls.so")):
        pytest.fail("rsyslog and rsyslog-gnutls are required: apt-get install -y rsyslog rsyslog-gnutls")
    (tmp_path / "work").mkdir()
    in_port = free_port()
    conf = tmp_path / "rsyslog.conf"
    conf.write_text(f"""
global(maxMessageSize="65536" workDirectory="{tmp_path / 'work'}"
       defaultNetstreamDriverCAFile="{pki_dir / 'ca.pem'}"
       defaultNetstreamDriverCertFile="{pki_dir / 'rsyslog-client.pem'}"
       defaultNetstreamDriverKeyFile="{pki_dir / 'rsyslog-client.key'}")
module(load="imtcp")
input(type="imtcp" address="127.0.0.1" port="{in_port}")
action(type="omfwd" target="127.0.0.1" port="{tls_port(arr)}" protocol="tcp"
       StreamDriver="gtls" StreamDriverMode="1" StreamDriverAuthMode="x509/name"
       StreamDriverPermittedPeers="localhost" TCP_Framing="octet-counted"
       template="RSYSLOG_SyslogProtocol23Format")
""")
    proc = subprocess.Popen([rsyslogd, "-n", "-f", str(conf), "-i", str(tmp_path / "rsyslogd.pid")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_listening(in_port)
        for name in ("pixfeed.xml", "pdqv3.xml"):
            subprocess.run(["logger", "--rfc5424", "--size", "65536", "-n", "127.0.0.1", "-P", str(in_port),
                            "--tcp", "--octet-count", "-t", "rsyslog-test", "--msgid", "IHE+RFC-3881",
                            one_line(corpus_path(f"messages/ipf/audit/{name}"))], check=True)
        got = wait_for(lambda: (lambda es: es if len(es) >= 2 else None)(
            from_peer(arr, "rsyslog-client")), what="rsyslog's forwarded messages")
        assert sorted(e["types"][0]["code"] for e in got) == ["ITI-47", "ITI-8"]
        assert all(e["transport"] == "tls" and e["schemaValid"] for e in got)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)


def test_corpus_audit_messages_over_tls_are_all_stored_invalid_ones_marked(arr, pki_dir):
    rows = cases(lambda r: r["transaction"].startswith("ITI-20 audit record"))
    frames = b"".join(octet_frame(format_rfc5424(corpus_path(r["files"]).read_bytes(), hostname="corpus"))
                      for r in rows)
    raw = corpus_path("messages/ahdis-epr/iti-47-atna-raw.txt").read_bytes()
    send_tls(arr, pki_dir, frames + raw, name="node")
    expected_invalid = sum(1 for r in rows if not r["schema_check"].startswith("valid"))
    got = wait_for(lambda: (lambda es: es if len(es) >= len(rows) + 1 else None)(
        [e for e in audit(arr) if e["peer"] and e["peer"].startswith("commonName=node,")
         and e["source"] != "OpenDMP@" + socket.gethostname()]), what="the corpus messages")
    assert len(got) == len(rows) + 1
    assert sum(1 for e in got if not e["schemaValid"]) == expected_invalid


def test_malformed_frames_and_non_audit_payloads_are_counted_and_the_arr_survives(arr, pki_dir):
    before = stats(arr)
    send_tls(arr, pki_dir, octet_frame(b"<13>1 - - - - - - this is not XML")
             + octet_frame(b"no syslog header") + b"99999999999 oversized")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"\x00\xff garbage", ("127.0.0.1", udp_port(arr)))
        s.sendto(b"<13>1 - - - - - - <Other/>", ("127.0.0.1", udp_port(arr)))
    wait_for(lambda: stats(arr).get("malformed", 0) >= before.get("malformed", 0) + 3
             and stats(arr).get("non_audit", 0) >= before.get("non_audit", 0) + 2, what="counters")
    send_tls(arr, pki_dir, octet_frame(format_rfc5424(
        corpus_path("messages/ipf/audit/stop.xml").read_bytes(), hostname="after")))
    wait_for(lambda: [e for e in from_peer(arr, "lab-client") if e["types"][0]["code"] == "110121"],
             what="a good message after the bad ones")


# ---------------------------------------------------------------------------- outage
@pytest.mark.parametrize("how", ["stop", "kill9"])
def test_an_arr_that_was_down_receives_every_message_once_in_order(server_factory, pki_dir, how):
    arr_srv = server_factory(env={**pki_env(pki_dir), "OPENDMP_AUDIT_REPOSITORIES": "none"})
    # OPENDMP_AUDIT_SYNC: each transaction's message is in the spool before its answer, so
    # the spool's order is the order of the (sequential) transactions across both workers.
    node = server_factory(env={**pki_env(pki_dir), "OPENDMP_AUDIT_SYNC": "1",
                               "OPENDMP_AUDIT_REPOSITORIES": f"tls://127.0.0.1:{tls_port(arr_srv)}"})
    patient = F.new_ins()
    node.run_cli(["patient", "add", patient])
    find_documents(node, patient)
    wait_for(lambda: audit(arr_srv, patient=patient), what="the first message")

    # graceful stop, or a crash (kill -9: what the ARR had received but not committed is
    # lost there, and comes back because the sender re-sends its unconfirmed tail)
    arr_srv.stop() if how == "stop" else arr_srv.kill9()
    n = 25
    for i in range(n):
        if i % 5 == 0:
            registry(node).call(ITI42, F.submit_objects_request(F.submission(patient)))
        else:
            find_documents(node, patient)
    time.sleep(1)
    arr_srv.start()
    got = wait_for(lambda: (lambda es: es if len(es) >= n + 1 else None)(audit(arr_srv, patient=patient)),
                   timeout=60, what="the messages spooled during the outage")
    time.sleep(3)  # anything re-sent after the reconnection must not show up twice
    got = audit(arr_srv, patient=patient)
    assert len(got) == n + 1
    by_arrival = sorted(got, key=lambda e: e["id"])
    assert [e["time"] for e in by_arrival] == sorted(e["time"] for e in got)
    kinds = [e["types"][0]["code"] for e in by_arrival[1:]]
    assert kinds == ["ITI-42" if i % 5 == 0 else "ITI-18" for i in range(n)]


def test_an_arr_killed_while_messages_flow_loses_none_and_stores_none_twice(server_factory, pki_dir):
    """kill -9 mid-stream: messages the ARR had read but not committed are re-sent (the
    sender acknowledges only what was sent >= 2 s ago on a live connection) and the ones it
    had committed are not stored again (spool sequence numbers)."""
    import threading

    arr_srv = server_factory(env={**pki_env(pki_dir), "OPENDMP_AUDIT_REPOSITORIES": "none"})
    node = server_factory(env={**pki_env(pki_dir),
                               "OPENDMP_AUDIT_REPOSITORIES": f"tls://127.0.0.1:{tls_port(arr_srv)}"})
    patient = F.new_ins()
    node.run_cli(["patient", "add", patient])
    n = 60
    done = threading.Event()

    def traffic():
        for _ in range(n):
            find_documents(node, patient)
            time.sleep(0.02)
        done.set()

    worker = threading.Thread(target=traffic)
    worker.start()
    wait_for(lambda: len(audit(arr_srv, patient=patient)) >= 10, what="the first messages")
    arr_srv.kill9()
    time.sleep(0.5)
    arr_srv.start()
    worker.join(120)
    assert done.is_set()
    got = wait_for(lambda: (lambda es: es if len(es) >= n else None)(audit(arr_srv, patient=patient)),
                   timeout=60, what="every message after the crash")
    time.sleep(3)
    got = audit(arr_srv, patient=patient)
    assert len(got) == n
    by_arrival = sorted(got, key=lambda e: e["id"])
    assert [e["time"] for e in by_arrival] == sorted(e["time"] for e in got)


def test_a_killed_ingest_process_is_replaced_and_loses_nothing(arr, pki_dir):
    """The ARR's ingest process (parse, validate, store) dies with batches handed to it
    but not committed: the receiver starts another and sends them again."""
    from atna import events as ev

    marker = f"ingest-crash-{time.monotonic_ns()}"
    x = ev.Exchange("http://client/reply", "10.1.2.3", "commonName=lab", "http://arr/xds/registry",
                    "arr")
    patients = [F.new_ins() for _ in range(300)]

    def message(patient: str) -> bytes:
        ds = ev.iti18_registry(x, 0, b"<q/>", "urn:uuid:q", patient)
        ds.source_id = marker
        return octet_frame(format_rfc5424(ev.build(ds), hostname="lab"))

    old = wait_for(lambda: stats(arr).get("ingest_pid"), what="the ARR's counters")
    before = stats(arr)
    os.kill(old, signal.SIGSTOP)  # it reads no batch any more: they stay unacknowledged
    try:
        send_tls(arr, pki_dir, b"".join(message(p) for p in patients))
        wait_for(lambda: stats(arr).get("received", 0) >= before.get("received", 0) + len(patients),
                 what="the receiver to read every frame")
    finally:
        os.kill(old, signal.SIGKILL)
    got = wait_for(lambda: (lambda es: es if len(es) >= len(patients) else None)(
        audit(arr, source=marker)), timeout=60, what="every message after the ingest crash")
    wait_for(lambda: stats(arr).get("ingest_pid") not in (None, old)
             and stats(arr).get("ingest_restarts", 0) >= 1, what="the new ingest process's counters")
    assert sorted(e["patients"][0] for e in got) == sorted(patients)  # each once


def test_a_stalled_ingest_pushes_back_on_the_tls_sender(arr, pki_dir):
    """While the ingest process is stopped, the receiver holds at most a few batches
    (atna.pipeline: (INFLIGHT + 2) x BATCH_MAX messages) and stops reading the connection:
    the sender blocks in TCP instead of the ARR buffering without bound. Once it resumes,
    every message is stored."""
    import threading

    from atna import events as ev
    from atna.pipeline import BATCH_MAX, INFLIGHT

    marker = f"backpressure-{time.monotonic_ns()}"
    ds = ev.iti18_registry(ev.Exchange("r", "10.1.2.3", "cn", "http://arr/x", "arr"), 0,
                           b"<q/>" * 200, "urn:uuid:q", F.new_ins())
    ds.source_id = marker
    frame = octet_frame(format_rfc5424(ev.build(ds), hostname="lab"))
    n = 8 * (INFLIGHT + 2) * BATCH_MAX
    pid = wait_for(lambda: stats(arr).get("ingest_pid"), what="the ARR's counters")
    before = stats(arr)
    os.kill(pid, signal.SIGSTOP)
    sender = threading.Thread(target=send_tls, args=(arr, pki_dir, frame * n))
    try:
        sender.start()
        time.sleep(3)
        held = stats(arr).get("received", 0) - before.get("received", 0)
        assert sender.is_alive()  # blocked by TCP flow control
        assert held <= (INFLIGHT + 2) * BATCH_MAX + 1
    finally:
        os.kill(pid, signal.SIGCONT)
    sender.join(120)
    wait_for(lambda: stats(arr).get("stored", 0) >= before.get("stored", 0) + n, timeout=120,
             what="every message once the ingest resumed")
    assert len(audit(arr, source=marker, limit=1)) == 1
