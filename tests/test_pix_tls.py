"""MLLP over TLS with client certificates (ITI-19 node authentication) on the real server:
a client with a certificate of the trusted CA is served; one without is refused at the
handshake (counted), and a plain-TCP client gets nothing."""
from __future__ import annotations

import json
import socket
import ssl
import time

import pytest
from harness.postgres import free_port
from pixclient import LOCAL, Answer, adt, cx, new_local

pki = pytest.importorskip("atna.pki")


def _exchange(sock, message: str) -> Answer:
    sock.sendall(b"\x0b" + message.encode() + b"\x1c\r")
    data = b""
    while not data.endswith(b"\x1c\r"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return Answer(data.decode())


def test_mllp_tls_requires_a_client_certificate(server_factory, tmp_path):
    ca = pki.init_ca(tmp_path)
    srv_cert, srv_key = pki.issue(tmp_path, "pix-server")
    cli_cert, cli_key = pki.issue(tmp_path, "his-client")
    port = free_port("127.0.0.1")
    srv = server_factory(env={
        "OPENDMP_MLLP_PORT": str(port), "OPENDMP_PIX_DOMAINS": f"HOSP&{LOCAL}&ISO",
        "OPENDMP_MLLP_TLS_CERT": str(srv_cert), "OPENDMP_MLLP_TLS_KEY": str(srv_key),
        "OPENDMP_MLLP_TLS_CA": str(ca)})
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline
            time.sleep(0.1)

    good = ssl.create_default_context(cafile=str(ca))
    good.load_cert_chain(str(cli_cert), str(cli_key))
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw, \
            good.wrap_socket(raw, server_hostname="127.0.0.1") as s:
        for _ in range(3):  # persistent connection over TLS
            assert _exchange(s, adt("A01", cx(new_local(), LOCAL, "HOSP"))).msa == "AA"

    anonymous = ssl.create_default_context(cafile=str(ca))
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            with anonymous.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                # TLS 1.3: the refusal may only show on the first read
                s.sendall(b"\x0b" + adt("A01", cx(new_local(), LOCAL, "HOSP")).encode() + b"\x1c\r")
                if not s.recv(100):
                    raise ConnectionError("closed")

    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:  # no TLS at all
        s.sendall(b"\x0b" + adt("A01", cx(new_local(), LOCAL, "HOSP")).encode() + b"\x1c\r")
        try:
            assert s.recv(100) == b""
        except ConnectionResetError:
            pass
    deadline = time.monotonic() + 30
    while sum(json.loads(p.read_text() or "{}").get("messages", 0)
              for p in srv.home.glob(f"mllp-stats-{port}-*.json")) < 3:
        assert time.monotonic() < deadline
        time.sleep(0.1)
