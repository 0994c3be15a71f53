"""``opendmp testkit run``: run NIST XDS Toolkit test directories against any endpoint.

::

    opendmp testkit run TESTDIR... --registry URL [--repository URL]
        [--patient-feed none|cmd:TEMPLATE|mllp://host:port] [--patient-id [TEST=]CX]...
        [--assigning-authority OID] [--testkit DIR] [--with-dependencies]
        [--collection NAME] [--json FILE] [--verbose]

Tests run in the order given and share one context, so ids and reports flow from
one test to the next (e.g. ``15818 12346 11898``).  ``--with-dependencies`` (implied
by ``--collection``) first runs the tests the given ones read from (UseReport
``test=``, UseId ``testdir=``), found in the ``--testkit`` directories or next to the
given test directories.  Exit status 0 when no step failed, 1 otherwise, 2 on usage
errors.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .context import DEFAULT_ASSIGNING_AUTHORITY, PatientIds, RunContext
from .plan import PlanError, load_test, order_with_dependencies, tests_in_collection


def register(subparsers) -> None:
    """Add ``testkit run`` to an argparse subparsers object."""
    tk = subparsers.add_parser("testkit", help="run NIST XDS Toolkit tests against an endpoint",
                               description=__doc__,
                               formatter_class=argparse.RawDescriptionHelpFormatter)
    tk_sub = tk.add_subparsers(dest="testkit_command", required=True)
    run_p = tk_sub.add_parser(
        "run", help="run test directories (one line per step, then a summary)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    run_p.add_argument("tests", nargs="*", metavar="TESTDIR",
                       help="toolkit test directory (or test name found under --testkit)")
    run_p.add_argument("--registry", metavar="URL", help="Document Registry endpoint (ITI-18, ITI-42)")
    run_p.add_argument("--repository", metavar="URL",
                       help="Document Repository endpoint (ITI-41, ITI-43); those steps are "
                            "skipped without it")
    run_p.add_argument("--patient-feed", metavar="SPEC", default=os.environ.get("OPENDMP_TESTKIT_FEED", "none"),
                       help="none (default, or $OPENDMP_TESTKIT_FEED), cmd:TEMPLATE with {cx} (e.g. "
                            "'cmd:opendmp patient add {cx}'; run without a shell, {cx} needs no quoting) "
                            "or mllp://host:port (ITI-8 ADT^A01)")
    run_p.add_argument("--patient-id", metavar="[TEST=]CX", action="append", default=[],
                       help="patient id announced by the feed tests (all of them, or TEST's, e.g. "
                            "15818=CX); default: a fresh id per feed test.  One id for all feed tests "
                            "breaks the Stored Query counts, which assume a patient only 12346 loaded")
    run_p.add_argument("--assigning-authority", metavar="OID", default=DEFAULT_ASSIGNING_AUTHORITY,
                       help=f"authority of generated patient ids (default {DEFAULT_ASSIGNING_AUTHORITY})")
    run_p.add_argument("--testkit", metavar="DIR", action="append", default=[],
                       help="directory holding toolkit tests (to find tests by name and dependencies)")
    run_p.add_argument("--with-dependencies", action="store_true",
                       help="also run, first, the tests the given ones depend on")
    run_p.add_argument("--collection", metavar="NAME", action="append", default=[],
                       help="add the tests of a toolkit collection (e.g. reg, SQ.b); implies "
                            "--with-dependencies")
    run_p.add_argument("--json", metavar="FILE", help="also write the results as JSON ('-' for stdout)")
    run_p.add_argument("--timeout", type=float, default=60.0, help="HTTP timeout in seconds (default 60)")
    run_p.add_argument("--ca-cert", metavar="FILE", help="CA bundle to verify TLS endpoints")
    run_p.add_argument("--client-cert", metavar="CERT,KEY", help="TLS client certificate and key (PEM)")
    run_p.add_argument("--insecure", action="store_true", help="do not verify TLS certificates")
    run_p.add_argument("-v", "--verbose", action="store_true",
                       help="print requests and responses after each step line")
    run_p.set_defaults(func=run)


def _roots(args) -> list[Path]:
    roots = [Path(p).resolve() for p in args.testkit]
    for t in args.tests:
        p = Path(t)
        if p.is_dir():
            parent = p.resolve().parent
            if parent not in roots:
                roots.append(parent)
    return roots


def _test_paths(args, roots: list[Path]) -> list[Path]:
    names: list[str] = []
    explicit: dict[str, Path] = {}
    for t in args.tests:
        p = Path(t)
        if p.is_dir():
            explicit[p.resolve().name] = p.resolve()
            names.append(p.resolve().name)
        elif any((r / t).is_dir() for r in roots):
            names.append(t)
        else:
            raise PlanError(f"{t}: no such test directory"
                            + ("" if roots else " (give --testkit DIR to find tests by name)"))
    for coll in args.collection:
        found = tests_in_collection(coll, roots)
        if not found:
            raise PlanError(f"no test of collection {coll!r} under {', '.join(map(str, roots)) or '(no --testkit)'}")
        names += [n for n in found if n not in names]
    if args.with_dependencies or args.collection:
        ordered = order_with_dependencies(names, roots)
        return [explicit.get(p.name, p) for p in ordered]
    paths = []
    for n in names:
        paths.append(explicit.get(n) or next(r / n for r in roots if (r / n).is_dir()))
    return paths


def run(args) -> int:
    """Execute ``testkit run``; 0 when no step failed."""
    # the SOAP client (httpx) is loaded here, not when any ``opendmp`` command (``serve``
    # among them) builds its parser
    from .report import Summary, format_line, format_verbose, write_json
    from .steps import Endpoints, Runner, parse_feed_spec

    out = sys.stdout
    if getattr(args, "testkit_command", "run") != "run":
        print("usage: opendmp testkit run TESTDIR... --registry URL", file=sys.stderr)
        return 2
    if not args.registry and not args.repository:
        print("testkit run: give --registry URL (and/or --repository URL)", file=sys.stderr)
        return 2
    if not args.tests and not args.collection:
        print("testkit run: no test given", file=sys.stderr)
        return 2
    roots = _roots(args)
    try:
        paths = _test_paths(args, roots)
        tests = [load_test(p) for p in paths]
    except PlanError as exc:
        print(f"testkit run: {exc}", file=sys.stderr)
        return 2
    template = None
    for root in roots:
        candidate = root.parent / "adt-templates" / "A01.txt"
        if candidate.exists():
            template = candidate
            break
    try:
        feed = parse_feed_spec(args.patient_feed, template)
    except ValueError as exc:
        print(f"testkit run: {exc}", file=sys.stderr)
        return 2
    default_pid = None
    per_test: dict[str, str] = {}
    for spec in args.patient_id:
        name, sep, cx = spec.partition("=")
        if sep and "^" not in name:
            per_test[name] = cx
        else:
            default_pid = spec
    verify: bool | str = True
    if args.insecure:
        verify = False
    elif args.ca_cert:
        verify = args.ca_cert
    cert = None
    if args.client_cert:
        cert_file, _, key_file = args.client_cert.partition(",")
        cert = (cert_file, key_file or cert_file)

    ctx = RunContext(PatientIds(feed, args.assigning_authority, default_pid, per_test))
    endpoints = Endpoints(args.registry, args.repository, args.timeout, verify, cert)
    print(f"testkit: {len(tests)} test(s): {' '.join(t.name for t in tests)}", file=out)
    print(f"testkit: registry {args.registry or '-'}, repository {args.repository or '- (ITI-41/43 skipped)'}",
          file=out)
    print(f"testkit: patient feed {feed.describe()}, assigning authority {args.assigning_authority}",
          file=out)
    out.flush()

    def on_result(r) -> None:
        print(format_line(r), file=out)
        if args.verbose:
            detail = format_verbose(r)
            if detail:
                print(detail, file=out)
        out.flush()

    runner = Runner(ctx, endpoints, on_result)
    results = []
    try:
        for test in tests:
            results += runner.run_test(test)
    except KeyboardInterrupt:
        print("testkit: interrupted", file=out)
    finally:
        runner.close()
    summary = Summary(results)
    for line in summary.lines():
        print(line, file=out)
    if args.json:
        if args.json == "-":
            write_json(summary, out)
        else:
            with open(args.json, "w", encoding="utf-8") as fh:
                write_json(summary, fh)
    out.flush()
    return 0 if summary.ok else 1


def _main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m testkit.cli run ...``."""
    parser = argparse.ArgumentParser(prog="testkit")
    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)
    args = parser.parse_args(["testkit", *(argv if argv is not None else sys.argv[1:])])
    return args.func(args)


if __name__ == "__main__":
    sys.exit(_main())
