"""XUA benchmark: the cost of verifying a request's WS-Security header, in process.

    PYTHONPATH=.:tests python -m benchmarks.xua [--iterations 2000]

Measures, on one core, per request (median and p95 of single calls, after warm-up):

1. parse: ``parse_envelope`` of the SOAP message alone (the baseline every request pays);
2. assertion: ``verify_security`` (signxml RSA-SHA256 verification of the VIHF assertion,
   pinned location, ID/structure checks, SAML conditions) + ``build_identity`` (VIHF
   attribute checks, INS key);
3. assertion + message signature: the same with a WSS message signature over Body and
   Timestamp (X.509 BinarySecurityToken);
4. signing (the development IdP, python-xmlsec): informative;
5. DSG at ITI-41: what :class:`xua.dsg.Intake` adds to a 3-document submission (10 KB
   each) signed with XAdES (SHA-256 of the documents while they stream, then the
   signature: pinned references, chain to the trust store, signxml, manifest digests);
   and making that signature (python-xmlsec, ``opendmp push --sign``), informative.

Target: < 2 ms for (2) and (3) per request. Prints a markdown table; asserts nothing.
"""
from __future__ import annotations

import argparse
import hashlib
import statistics
import time
from dataclasses import replace
from pathlib import Path

from benchmarks import work_dir


def _timeit(fn, n: int) -> tuple[float, float]:
    for _ in range(min(50, n)):
        fn()
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.95) - 1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2000)
    args = parser.parse_args(argv)

    from cryptography import x509

    from soapstack.envelope import parse_envelope
    from soapstack.wssecurity import SECURITY, verify_security
    from test_xua_unit import INS, envelope_with, make_cert, sign_message
    from xua.config import XuaSettings
    from xua.identity import build_identity
    from xua.idp import VihfClaims, dev_idp_files, issue

    home = Path(work_dir("xua-bench-"))
    dev_idp_files(home)
    policy = XuaSettings.from_env({"OPENDMP_XUA": "required"}, home).policy
    key, cert = make_cert("bench client")
    signed_policy = replace(policy, trusted_clients=(x509.load_pem_x509_certificate(cert),))
    plain = envelope_with(issue(home, VihfClaims(ins=INS)))
    message_signed = sign_message(envelope_with(issue(home, VihfClaims(ins=INS))), key, cert)
    understood = frozenset({SECURITY})
    n = args.iterations

    def parse_only():
        parse_envelope(plain, understood)

    def assertion():
        build_identity(verify_security(parse_envelope(plain, understood).envelope, policy))

    def both():
        build_identity(verify_security(parse_envelope(message_signed, understood).envelope,
                                       signed_policy))

    def sign():
        issue(home, VihfClaims(ins=INS))

    import factory as F
    from atna.pki import issue as issue_cert
    from soapstack.x509chain import load_anchors
    from xua.dsg import DsgSettings, Intake, Signer, sign_submission

    pem, pkey = issue_cert(home / "pki", "dsg-signer")
    signer = Signer.from_files(pkey, pem)
    dsg_settings = DsgSettings("required", load_anchors([home / "pki" / "ca.pem"]))
    sub = F.submission(F.new_ins(), n_docs=3)
    contents = {de.id: (f"<doc>{de.unique_id}</doc>".encode() * 600)[:10240]
                for de in sub.documents}
    for de in sub.documents:
        de.hash = hashlib.sha1(contents[de.id]).hexdigest()
    sig, signature = sign_submission(sub, contents, signer)
    sig.hash = hashlib.sha1(signature).hexdigest()
    contents[sig.id] = signature

    def dsg_verify():
        intake = Intake.for_submission(sub, dsg_settings)
        for de in sub.documents:
            intake.feed(de, contents[de.id])
        assert intake.check() == []

    def dsg_sign():
        one = F.submission(F.new_ins(), n_docs=3)
        sign_submission(one, {de.id: contents[orig.id] for de, orig in
                              zip(one.documents, sub.documents)}, signer)

    rows = [("parse_envelope only (baseline)", _timeit(parse_only, n)),
            ("parse + assertion + VIHF identity", _timeit(assertion, n)),
            ("parse + assertion + message signature + identity", _timeit(both, n)),
            ("dev IdP: build + sign an assertion (python-xmlsec)", _timeit(sign, max(n // 4, 10))),
            ("DSG: verify a signed 3-document submission (ITI-41 added cost)",
             _timeit(dsg_verify, max(n // 4, 10))),
            ("DSG: sign a 3-document submission set (python-xmlsec)",
             _timeit(dsg_sign, max(n // 4, 10)))]
    print(f"| step ({n} iterations, one core) | median ms | p95 ms |")
    print("|---|---|---|")
    for name, (median, p95) in rows:
        print(f"| {name} | {median:.3f} | {p95:.3f} |")
    base = rows[0][1][0]
    print(f"\nverification cost per request (median, minus parsing): assertion "
          f"{rows[1][1][0] - base:.3f} ms, assertion + message signature {rows[2][1][0] - base:.3f} ms "
          "(target < 2 ms)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
