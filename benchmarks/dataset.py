"""Synthetic DMP registry content written straight into PostgreSQL with binary COPY.

Loading a million DocumentEntries through ITI-42 would take hours, so the rows are
copied into the tables directly, but every byte of them comes from the product:

1. A template submission (``tests/factory.py``: one DocumentEntry, its SubmissionSet and
   the HasMember association, DMP codes) is serialized to a SubmitObjectsRequest, read
   back by :func:`registry.iti42.read_submit_objects_request` and registered by
   :func:`registry.iti42.register_submission` into an in-memory SQLite database: the
   ITI-42 code path minus SOAP. Its ``registry_object`` rows (query columns and the
   ebRIM blob, ~6.4 KB for the DocumentEntry) and ``object_key`` rows are the template.
2. The template is registered twice; the UUIDs that differ between the two
   registrations (object ids, classification and external-identifier ids) become
   slots, like the patient, the uniqueIds, the times and the hash. Each loaded
   submission is the template with those slots filled in; no other byte changes.
3. Every ``--check-every`` submissions the generated rows are checked against the
   product again: the ebRIM blob is parsed by :func:`registry.ebrim.parse_registry_object`
   and :func:`registry.store.object_row` must give back exactly the generated query
   columns and keys.

Patients are INS (NIR + key, production OID) registered in ``patient`` in their
canonical CX form, as ``opendmp patient add`` does. Documents per patient follow a
Zipf-Mandelbrot law (weight of the r-th patient ∝ 1/(r + P/100)), every patient has at
least one; the submissions of a stage are shuffled, so one patient's documents are
scattered over the heap as if they had arrived over years. Foreign-key triggers are
off during the COPY (``session_replication_role = replica``): the rows are consistent
by construction (pks are assigned here), and the per-row RI checks would dominate.
"""
from __future__ import annotations

import hashlib
import itertools
import random
import re
import struct
import time
from dataclasses import dataclass, field
from xml.sax.saxutils import escape

import psycopg
from lxml import etree
from sqlalchemy import select

import benchmarks  # noqa: F401  (tests/ on sys.path)
import factory as F
from opendmp.db import make_engine, write_transaction
from opendmp.schema import metadata, object_key, registry_object
from registry import store
from registry.affinity import AffinityDomain
from registry.ebrim import parse_registry_object
from registry.hl7types import parse_cx
from registry.iti42 import read_submit_objects_request, register_submission

# Sentinels written into the template; each is replaced per loaded submission.
_SENTINEL_NIR = "1991299999999"  # department 99: never produced by patient_nir()
SENTINEL_PATIENT = f"{_SENTINEL_NIR}{F.ins_key(_SENTINEL_NIR)}^^^&{F.INS_NIR}&ISO^NH"
SENTINEL_DE_UID = "1.2.250.1.999.424242.7001"
SENTINEL_SS_UID = "1.2.250.1.999.424242.7002"
SENTINEL_CREATION = "20241015103000"
SENTINEL_START = "202410150915"
SENTINEL_SUBMISSION = "20241015110000"
DOCUMENT_BYTES = 143_872  # size slot of the template documents (a median DMP CDA)
SENTINEL_HASH = hashlib.sha1(bytes(DOCUMENT_BYTES)).hexdigest()

TEXT_TOKENS = {
    "PATIENT": SENTINEL_PATIENT,
    "DE_UID": SENTINEL_DE_UID,
    "SS_UID": SENTINEL_SS_UID,
    "CREATION": SENTINEL_CREATION,
    "START": SENTINEL_START,
    "SUBMISSION": SENTINEL_SUBMISSION,
    "HASH": SENTINEL_HASH,
}
TIME_INT_TOKENS = {
    store.dtm_key(SENTINEL_CREATION): "CREATION_INT",
    store.dtm_key(SENTINEL_START): "START_INT",
    store.dtm_key(SENTINEL_SUBMISSION): "SUBMISSION_INT",
}
TIME_COLUMNS = ("creation_time", "service_start_time", "service_stop_time",
                "submission_time", "last_update_time")
UUID_RE = re.compile(r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
#: names of the object ids among the UUID slots (fixed slot numbers, see uuid_value).
OBJECT_ID_SLOTS = {3: "SS_ID", 1: "DE_ID", 5: "AS_ID"}  # by Kind
UUID_SLOT_NUMBER = {"DE_ID": 0, "SS_ID": 1, "AS_ID": 2}

#: the document kinds of the dataset and their share.
KINDS = (("CR-BIO", F.CR_BIO, 0.75), ("VAC", F.VACCINATION, 0.25))

# ----------------------------------------------------------------- patients


def patient_nir(i: int) -> str:
    """A distinct, well-formed 13-character NIR for every i < 2.2e10."""
    sex, r = 1 + i % 2, i // 2
    order, r = 1 + r % 999, r // 999
    commune, r = 1 + r % 999, r // 999
    month, r = 1 + r % 12, r // 12
    dept, r = 1 + r % 95, r // 95
    if r >= 100:
        raise ValueError("patient index out of range")
    return f"{sex}{r:02d}{month:02d}{dept:02d}{commune:03d}{order:03d}"


def patient_cx(i: int) -> str:
    """The i-th patient's identifier as a DMP document source sends it (INS-NIR, CX.5 NH)."""
    nir = patient_nir(i)
    return f"{nir}{F.ins_key(nir)}^^^&{F.INS_NIR}&ISO^NH"


# ----------------------------------------------------------------- templates


class Text:
    """A str/bytes value with named slots: segments interleaved with slot names."""

    __slots__ = ("segs", "names")

    def __init__(self, segs, names):
        self.segs, self.names = tuple(segs), tuple(names)

    @classmethod
    def compile(cls, value, needles: dict[str, object]) -> "Text | None":
        """Split ``value`` on the needles (name -> needle of value's type), longest first."""
        if not needles:
            return None
        by_needle = {n: name for name, n in needles.items()}
        pattern = b"|" if isinstance(value, bytes) else "|"
        regex = re.compile(pattern.join(re.escape(n) for n in
                                        sorted(by_needle, key=len, reverse=True)))
        segs, names, pos = [], [], 0
        for m in regex.finditer(value):
            segs.append(value[pos:m.start()])
            names.append(by_needle[m.group(0)])
            pos = m.end()
        if not names:
            return None
        segs.append(value[pos:])
        return cls(segs, names)

    def render(self, vals: dict):
        out = [self.segs[0]]
        for name, seg in zip(self.names, self.segs[1:]):
            out.append(vals[name])
            out.append(seg)
        return out[0][:0].join(out)


@dataclass
class ObjectTemplate:
    """One registry_object row (and its object_key rows) with slots."""

    kind: int
    #: column -> constant, Text (str columns render with str values, ebrim with bytes),
    #: or ("int", slot name)
    row: dict
    keys: list[tuple[int, object]]


@dataclass
class SubmissionTemplate:
    name: str
    objects: list[ObjectTemplate]
    #: UUID slot names in slot-number order (uuid_value(n, number))
    uuid_slots: list[str]
    weight: float = 1.0
    #: compiled binary COPY parts (see Encoder)
    compiled: list = field(default_factory=list)


def _register_once(kind: dict) -> tuple[list[dict], list[tuple[int, int, str]]]:
    """Register the kind's template submission through the ITI-42 code path into a fresh
    in-memory SQLite database; return its registry_object rows (pk order) and keys."""
    engine = make_engine("sqlite://")
    metadata.create_all(engine)
    domain = AffinityDomain.from_settings({})
    with write_transaction(engine) as conn:
        store.add_patient(conn, parse_cx(SENTINEL_PATIENT).canonical)
    sub = F.submission(SENTINEL_PATIENT, creation_time=SENTINEL_CREATION, kind=kind,
                       content=bytes(DOCUMENT_BYTES), unique_id=SENTINEL_DE_UID,
                       service_start_time=SENTINEL_START)
    sub.submission_set.unique_id = SENTINEL_SS_UID
    sub.submission_set.submission_time = SENTINEL_SUBMISSION
    wire = etree.tostring(F.submit_objects_request(sub))
    parsed = read_submit_objects_request(etree.fromstring(wire))
    with write_transaction(engine) as conn:
        register_submission(conn, parsed, domain)
    with engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(
            select(registry_object).order_by(registry_object.c.pk)).mappings()]
        keys = [tuple(r) for r in conn.execute(
            select(object_key.c.object_pk, object_key.c.key, object_key.c.value)
            .order_by(object_key.c.object_pk, object_key.c.key, object_key.c.value))]
    engine.dispose()
    return rows, keys


def _uuids_in_order(rows: list[dict]) -> list[str]:
    seen: dict[str, None] = {}
    for r in rows:
        for v in r.values():
            text = v.decode() if isinstance(v, bytes) else v
            if isinstance(text, str):
                for u in UUID_RE.findall(text):
                    seen.setdefault(u)
    return list(seen)


def build_template(name: str, kind: dict, weight: float) -> SubmissionTemplate:
    """Register the template twice; the UUIDs that differ become slots."""
    rows_a, keys_a = _register_once(kind)
    rows_b, keys_b = _register_once(kind)
    uuids_a, uuids_b = _uuids_in_order(rows_a), _uuids_in_order(rows_b)
    fixed = set(uuids_a) & set(uuids_b)
    var_a = [u for u in uuids_a if u not in fixed]
    var_b = [u for u in uuids_b if u not in fixed]
    assert len(var_a) == len(var_b), "template registrations differ in structure"
    slot_of = {}
    for r in rows_a:
        slot_of[r["uuid"]] = OBJECT_ID_SLOTS[r["kind"]]
    others = [u for u in var_a if u not in slot_of]
    for j, u in enumerate(others):
        slot_of[u] = f"U{j}"
    uuid_slots = ["DE_ID", "SS_ID", "AS_ID"] + [f"U{j}" for j in range(len(others))]

    def needles(as_bytes: bool, xml: bool) -> dict:
        d = {slot_of[u]: u for u in var_a}
        d.update(TEXT_TOKENS)
        if xml:
            d["PATIENT_X"] = escape(d.pop("PATIENT"))
        return {k: (v.encode() if as_bytes else v) for k, v in d.items()}

    str_needles, blob_needles = needles(False, False), needles(True, True)
    pk_index = {r["pk"]: i for i, r in enumerate(rows_a)}
    objects = []
    for r in rows_a:
        row = {}
        for col, v in r.items():
            if col == "pk":
                row[col] = ("int", "PK")
            elif col == "patient_pk" and v is not None:
                row[col] = ("int", "PATIENT_PK")
            elif col in TIME_COLUMNS and v in TIME_INT_TOKENS:
                row[col] = ("int", TIME_INT_TOKENS[v])
            elif isinstance(v, bytes):
                row[col] = Text.compile(v, blob_needles) or v
            elif isinstance(v, str):
                row[col] = Text.compile(v, str_needles) or v
            else:
                row[col] = v
        objects.append(ObjectTemplate(r["kind"], row, []))
    for pk, k, v in keys_a:
        objects[pk_index[pk]].keys.append((k, Text.compile(v, str_needles) or v))

    tpl = SubmissionTemplate(name, objects, uuid_slots, weight)
    # The slots must explain every difference between the two registrations.
    map_b = dict(zip(var_a, var_b))
    vals = {slot_of[a]: b for a, b in map_b.items()}
    vals.update(TEXT_TOKENS)
    vals["PATIENT_X"] = escape(SENTINEL_PATIENT)
    for obj, rb in zip(objects, rows_b):
        got = _render_row(obj, vals, {"PK": rb["pk"], "PATIENT_PK": rb["patient_pk"],
                                      **{n: k for k, n in TIME_INT_TOKENS.items()}})
        assert got == rb, f"template {name}: slots do not explain the second registration"
    return tpl


def _render_row(obj: ObjectTemplate, svals: dict, ivals: dict) -> dict:
    bvals = {k: v.encode() for k, v in svals.items()}
    out = {}
    for col, v in obj.row.items():
        if isinstance(v, tuple):
            out[col] = ivals[v[1]]
        elif isinstance(v, Text):
            out[col] = v.render(bvals if isinstance(v.segs[0], bytes) else svals)
        else:
            out[col] = v
    return out


def build_templates() -> list[SubmissionTemplate]:
    return [build_template(name, kind, w) for name, kind, w in KINDS]


# ----------------------------------------------------------------- per-submission values


class Values:
    """Slot values of loaded submission number ``n`` (deterministic in n, rng)."""

    def __init__(self, prefix: str):
        #: the first three groups of every generated UUID (random per run)
        self.prefix = prefix

    def uuid(self, n: int, slot: int) -> str:
        return f"urn:uuid:{self.prefix}-{0x8000 | slot:04x}-{n:012x}"

    def document_uuid(self, n: int) -> str:
        return self.uuid(n, UUID_SLOT_NUMBER["DE_ID"])

    def make(self, tpl: SubmissionTemplate, n: int, cx: str, cx_xml: str, patient_pk: int,
             rng: random.Random, root: str) -> tuple[dict, dict]:
        """(str values, int values) of the slots."""
        y, mo, d = rng.randint(2012, 2025), rng.randint(1, 12), rng.randint(1, 28)
        h, mi, s = rng.randint(7, 19), rng.randint(0, 59), rng.randint(0, 59)
        creation = f"{y}{mo:02d}{d:02d}{h:02d}{mi:02d}{s:02d}"
        submission = f"{y}{mo:02d}{d:02d}{h + 1:02d}{mi:02d}{s:02d}"
        sv = {name: self.uuid(n, i) for i, name in enumerate(tpl.uuid_slots)}
        sv.update(PATIENT=cx, PATIENT_X=cx_xml, DE_UID=f"{root}.1.{n}", SS_UID=f"{root}.2.{n}",
                  CREATION=creation, START=creation[:12], SUBMISSION=submission,
                  HASH=hashlib.sha1(b"%d" % n).hexdigest())
        iv = {"PATIENT_PK": patient_pk, "CREATION_INT": int(creation),
              "START_INT": int(creation[:12] + "00"), "SUBMISSION_INT": int(submission)}
        return sv, iv


# ----------------------------------------------------------------- binary COPY

COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" * 2
COPY_TRAILER = b"\xff\xff"
_I32 = struct.Struct(">i")
_FIELD = {"bigint": struct.Struct(">iq"), "integer": struct.Struct(">ii"),
          "smallint": struct.Struct(">ih")}
_SIZE = {"bigint": 8, "integer": 4, "smallint": 2}
_NULL = b"\xff\xff\xff\xff"


def encode_field(value, pgtype: str) -> bytes:
    """One field of a binary COPY row (the slow, obvious way; used to check Encoder)."""
    if value is None:
        return _NULL
    if pgtype in _FIELD:
        return _FIELD[pgtype].pack(_SIZE[pgtype], value)
    data = value if isinstance(value, bytes) else value.encode()
    return _I32.pack(len(data)) + data


class Encoder:
    """Binary COPY rows for registry_object / object_key from the templates."""

    def __init__(self, ro_types: dict[str, str], templates: list[SubmissionTemplate]):
        self.ro_columns = list(ro_types)
        self.ro_types = ro_types
        self.ro_count = struct.pack(">h", len(self.ro_columns))
        for tpl in templates:
            tpl.compiled = [self._compile(obj) for obj in tpl.objects]

    def _compile(self, obj: ObjectTemplate):
        items: list = []
        const = [self.ro_count]
        for col in self.ro_columns:
            v, t = obj.row[col], self.ro_types[col]
            if isinstance(v, tuple):
                items.append((0, b"".join(const)))
                const = []
                items.append((2, _FIELD[t], _SIZE[t], v[1]))
            elif isinstance(v, Text):
                items.append((0, b"".join(const)))
                const = []
                segs = tuple(s if isinstance(s, bytes) else s.encode() for s in v.segs)
                items.append((1, segs, v.names))
            else:
                const.append(encode_field(v, t))
        items.append((0, b"".join(const)))
        keys = []
        for k, v in obj.keys:
            head = struct.pack(">h", 3)
            kfield = encode_field(k, "smallint")
            if isinstance(v, Text):
                keys.append((head, kfield, tuple(s.encode() for s in v.segs), v.names))
            else:
                keys.append((head, kfield + encode_field(v, "character varying"), None, None))
        return items, keys

    @staticmethod
    def row(items, bvals: dict, ivals: dict) -> bytes:
        out = []
        for it in items:
            tag = it[0]
            if tag == 0:
                out.append(it[1])
            elif tag == 1:
                segs, names = it[1], it[2]
                parts = [segs[0]]
                for name, seg in zip(names, segs[1:]):
                    parts.append(bvals[name])
                    parts.append(seg)
                data = b"".join(parts)
                out.append(_I32.pack(len(data)))
                out.append(data)
            else:
                out.append(it[1].pack(it[2], ivals[it[3]]))
        return b"".join(out)

    @staticmethod
    def key_rows(keys, pk: int, bvals: dict) -> list[bytes]:
        out = []
        pkf = _FIELD["bigint"].pack(8, pk)
        for head, rest, segs, names in keys:
            if segs is None:
                out.append(head + pkf + rest)
            else:
                parts = [segs[0]]
                for name, seg in zip(names, segs[1:]):
                    parts.append(bvals[name])
                    parts.append(seg)
                data = b"".join(parts)
                out.append(head + pkf + rest + _I32.pack(len(data)) + data)
        return out


# ----------------------------------------------------------------- the loader


@dataclass
class StageStats:
    patients: int = 0
    submissions: int = 0
    ro_rows: int = 0
    key_rows: int = 0
    bytes: int = 0
    #: wall time of the COPYs (generation interleaved), of VACUUM ANALYZE
    copy_s: float = 0.0
    vacuum_s: float = 0.0
    #: CHECKPOINT + sync + wait for an idle machine before measuring (benchmarks.registry)
    quiesce_s: float = 0.0
    #: Python time spent generating/encoding rows (part of copy_s)
    encode_s: float = 0.0
    checked: int = 0
    docs_per_patient: list[int] = field(default_factory=list)


def zipf_counts(n_patients: int, n_entries: int, rng: random.Random) -> list[int]:
    """Documents per patient: at least one each, the rest by Zipf-Mandelbrot weights
    1/(r + q) with q = P/100 over a random permutation of the patients."""
    if n_patients <= 0:
        return []
    q = max(1.0, n_patients / 100)
    cum = list(itertools.accumulate(1.0 / (r + q) for r in range(n_patients)))
    counts = [1] * n_patients
    for r in rng.choices(range(n_patients), cum_weights=cum, k=max(0, n_entries - n_patients)):
        counts[r] += 1
    rng.shuffle(counts)
    return counts


def conninfo(sqlalchemy_url: str) -> str:
    return "postgresql://" + sqlalchemy_url.split("://", 1)[1]


class Dataset:
    """The loaded content so far: patients (index -> CX, pk) and submission numbers
    0..submissions-1 (the DocumentEntry of n has UUID ``values.document_uuid(n)``)."""

    def __init__(self, url: str, seed: int, batch: int = 20_000, check_every: int = 50_000):
        self.url = url
        self.rng = random.Random(seed)
        prefix_rng = random.Random(seed ^ 0x5EED)
        self.values = Values(f"{prefix_rng.getrandbits(32):08x}-{prefix_rng.getrandbits(16):04x}-"
                             f"4{prefix_rng.getrandbits(12):03x}")
        self.root = f"1.2.250.1.999.{prefix_rng.randint(10**6, 10**7 - 1)}"
        self.batch = batch
        self.check_every = check_every
        self.templates = build_templates()
        self.cum_weights = list(itertools.accumulate(t.weight for t in self.templates))
        self.patients_cx: list[str] = []
        self.patients_pk: list[int] = []
        self.submissions = 0
        self.encoder: Encoder | None = None

    def _connect(self) -> psycopg.Connection:
        return psycopg.connect(conninfo(self.url))

    def _setup(self, conn: psycopg.Connection) -> None:
        if self.encoder is not None:
            return
        rows = conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_name = 'registry_object' ORDER BY ordinal_position").fetchall()
        types = dict(rows)
        known = {"bigint", "integer", "smallint", "character varying", "bytea"}
        assert set(types.values()) <= known, types
        assert set(types) == set(self.templates[0].objects[0].row), "schema changed"
        self.encoder = Encoder(types, self.templates)

    def load(self, n_patients: int, n_entries: int, log=print) -> StageStats:
        """Add ``n_patients`` new patients and ``n_entries`` submissions (one DocumentEntry
        each) for them; VACUUM ANALYZE afterwards."""
        st = StageStats(patients=n_patients, submissions=n_entries)
        rng = self.rng
        with self._connect() as conn:
            self._setup(conn)
            conn.execute("SET session_replication_role = replica")
            p0 = len(self.patients_cx)
            pk0 = conn.execute("SELECT coalesce(max(pk), 0) + 1 FROM patient").fetchone()[0]
            cxs = [patient_cx(i) for i in range(p0, p0 + n_patients)]
            with conn.cursor() as cur:
                with cur.copy("COPY patient (pk, cx) FROM STDIN") as cp:
                    for j, cx in enumerate(cxs):
                        cp.write_row((pk0 + j, parse_cx(cx).canonical))
            conn.commit()
            self.patients_cx += cxs
            self.patients_pk += range(pk0, pk0 + n_patients)

            counts = zipf_counts(n_patients, n_entries, rng)
            st.docs_per_patient = sorted(counts)
            order = [p0 + j for j, c in enumerate(counts) for _ in range(c)]
            rng.shuffle(order)
            next_pk = conn.execute(
                "SELECT coalesce(max(pk), 0) + 1 FROM registry_object").fetchone()[0]
            n0 = self.submissions
            cols = ", ".join(self.encoder.ro_columns)
            t_start = time.perf_counter()
            for b0 in range(0, len(order), self.batch):
                chunk = order[b0:b0 + self.batch]
                key_parts = [COPY_HEADER]
                with conn.cursor() as cur:
                    with cur.copy(f"COPY registry_object ({cols}) FROM STDIN (FORMAT BINARY)") as cp:
                        cp.write(COPY_HEADER)
                        buf: list[bytes] = []
                        t_enc = time.perf_counter()
                        for i, p in enumerate(chunk):
                            n = n0 + b0 + i
                            rows, keys, next_pk = self._submission(n, p, next_pk, rng)
                            buf += rows
                            key_parts += keys
                            st.ro_rows += len(rows)
                            st.key_rows += len(keys)
                            if len(buf) >= 96:
                                data = b"".join(buf)
                                st.bytes += len(data)
                                st.encode_s += time.perf_counter() - t_enc
                                cp.write(data)
                                t_enc = time.perf_counter()
                                buf = []
                        data = b"".join(buf)
                        st.bytes += len(data)
                        st.encode_s += time.perf_counter() - t_enc
                        cp.write(data + COPY_TRAILER)
                    key_parts.append(COPY_TRAILER)
                    with cur.copy("COPY object_key (object_pk, key, value) FROM STDIN "
                                  "(FORMAT BINARY)") as cp:
                        cp.write(b"".join(key_parts))
                conn.commit()
                done = b0 + len(chunk)
                el = time.perf_counter() - t_start
                log(f"  loaded {done:,}/{len(order):,} submissions "
                    f"({done / el:,.0f}/s, python encode {st.encode_s:.0f} s of {el:.0f} s)")
            self.submissions = n0 + len(order)
            st.copy_s = time.perf_counter() - t_start
            st.checked = self._check_sample(conn, n0, len(order))
            for table in ("patient", "registry_object"):
                conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'pk'), "
                             f"(SELECT max(pk) FROM {table}))")
            conn.commit()
        t = time.perf_counter()
        with psycopg.connect(conninfo(self.url), autocommit=True) as conn:
            conn.execute("VACUUM (ANALYZE) patient, registry_object, object_key")
        st.vacuum_s = time.perf_counter() - t
        return st

    def _pick_template(self, rng: random.Random) -> SubmissionTemplate:
        return rng.choices(self.templates, cum_weights=self.cum_weights)[0]

    def _submission(self, n: int, p: int, next_pk: int, rng: random.Random):
        tpl = self._pick_template(rng)
        cx = self.patients_cx[p]
        sv, iv = self.values.make(tpl, n, cx, escape(cx), self.patients_pk[p], rng, self.root)
        bv = {k: v.encode() for k, v in sv.items()}
        rows, keys = [], []
        for items, key_tpl in tpl.compiled:
            iv["PK"] = next_pk
            rows.append(self.encoder.row(items, bv, iv))
            keys += self.encoder.key_rows(key_tpl, next_pk, bv)
            next_pk += 1
        if n % self.check_every == 0:
            self._check(tpl, sv, iv, rows, keys, next_pk - len(rows))
        return rows, keys, next_pk

    def _check(self, tpl, sv, iv, rows, keys, first_pk) -> None:
        """The fast encoding equals the obvious one, and store.object_row on the parsed
        blob gives back the generated query columns and keys (product code path)."""
        expect_keys = []
        for j, obj in enumerate(tpl.objects):
            ivals = dict(iv, PK=first_pk + j)
            row = _render_row(obj, sv, ivals)
            slow = self.encoder.ro_count + b"".join(
                encode_field(row[c], self.encoder.ro_types[c]) for c in self.encoder.ro_columns)
            assert slow == rows[j], f"encoder mismatch on {tpl.name} object {j}"
            parsed = parse_registry_object(row["ebrim"])
            again, again_keys = store.object_row(parsed, row["patient_pk"])
            again["pk"] = row["pk"]
            diff = {c for c in row if row[c] != again.get(c)}
            assert not diff, f"object_row disagrees with generated row on {sorted(diff)}"
            rendered = [(k, v.render(sv) if isinstance(v, Text) else v) for k, v in obj.keys]
            assert sorted(rendered) == sorted((int(k), v) for k, v in again_keys), \
                "object_row keys disagree"
            expect_keys += [struct.pack(">h", 3) + encode_field(row["pk"], "bigint")
                            + encode_field(k, "smallint") + encode_field(v, "character varying")
                            for k, v in rendered]
        assert expect_keys == keys, "object_key encoding mismatch"

    def _check_sample(self, conn: psycopg.Connection, n0: int, count: int) -> int:
        """Read back a few loaded DocumentEntries: their blob is a parsable ebRIM
        ExtrinsicObject of the right patient."""
        checked = 0
        for n in (n0, n0 + count // 2, n0 + count - 1):
            if count <= 0:
                break
            row = conn.execute("SELECT patient_pk, ebrim FROM registry_object WHERE uuid = %s",
                               (self.values.document_uuid(n),)).fetchone()
            assert row is not None, f"document {n} not found"
            obj = parse_registry_object(row[1])
            assert obj.id == self.values.document_uuid(n)
            assert self.patients_pk[self.patients_cx.index(obj.patient_id)] == row[0]
            checked += 1
        return checked
