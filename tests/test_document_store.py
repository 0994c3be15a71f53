"""Document store of the repository (ITI-41 storage, ITI-43 retrieval): encryption at rest
(AES-256-GCM STREAM, data keys wrapped per RFC 3394), master keys, staging and recovery."""
from __future__ import annotations

import base64
import errno
import hashlib
import os
import random
import resource
import signal
import stat
import subprocess
import threading
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from repository import storage
from repository.crypto import (
    DEFAULT_CHUNK_SIZE,
    HEADER_SIZE,
    MAGIC,
    REWRAP_SPAN,
    TAG_SIZE,
    Decryptor,
    Encryptor,
    Header,
    MissingKey,
    StoreCorruption,
    StoreWriteError,
    sealed_size,
    verify_sha1,
)
from repository.keys import (
    ENV_KEY,
    ENV_KEY_ID,
    KeyConfigError,
    Keyring,
    MasterKey,
    key_file,
    load_keyring,
    rotate,
)
from repository.storage import (
    DocumentNotFound,
    DocumentStore,
    FileSystemStore,
    RewrapResult,
    StagedDocument,
    open_store,
)

C = DEFAULT_CHUNK_SIZE


def make_keyring(key_id: str = "k1", key: bytes | None = None) -> Keyring:
    return Keyring([MasterKey(key_id, key or os.urandom(32))], key_id)


#: for hypothesis tests, which share one store directory across examples
KEYRING = make_keyring("shared")


@pytest.fixture
def keyring() -> Keyring:
    return make_keyring()


@pytest.fixture
def store(tmp_path: Path, keyring: Keyring) -> FileSystemStore:
    return FileSystemStore(tmp_path / "documents", keyring)


@pytest.fixture
def small_store(tmp_path: Path, keyring: Keyring) -> FileSystemStore:
    """Chunks of 1000 bytes, so that a few KB make several chunks."""
    return FileSystemStore(tmp_path / "documents", keyring, chunk_size=1000)


def stage(store: DocumentStore, data: bytes, piece: int | None = None) -> StagedDocument:
    with store.begin() as w:
        step = piece or max(1, len(data))
        for i in range(0, len(data), step):
            w.write(data[i:i + step])
        return w.finish()


def put(store: DocumentStore, data: bytes, piece: int | None = None) -> StagedDocument:
    staged = stage(store, data, piece)
    store.commit(staged)
    return staged


def read(store: DocumentStore, key: str) -> bytes:
    with store.open(key) as doc:
        return b"".join(doc)


def object_file(store: FileSystemStore, key: str) -> Path:
    (path,) = store.root.glob(f"objects/*/*/{key}")
    return path


def files_under(path: Path) -> list[Path]:
    return sorted(p for p in path.rglob("*") if p.is_file())


def assert_corrupt(store: DocumentStore, key: str) -> None:
    with pytest.raises(StoreCorruption):
        read(store, key)


# ---------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("size", [0, 1, C - 1, C, C + 1, 2 * C, 3 * C + 7, 5 * 1024 * 1024 + 3])
def test_round_trip_keeps_bytes_size_and_sha1(store, size):
    data = random.Random(size).randbytes(size)
    staged = put(store, data, piece=65_521)          # writes that straddle chunk edges
    assert staged.size == size
    assert staged.sha1_hex == hashlib.sha1(data).hexdigest()
    assert staged.key_id == "k1"
    with store.open(staged.key) as doc:
        assert (doc.size, doc.sha1_hex, doc.key_id) == (size, staged.sha1_hex, "k1")
        assert b"".join(doc) == data
    assert object_file(store, staged.key).stat().st_size == HEADER_SIZE + sealed_size(size, C)


@pytest.mark.parametrize("data", [b"\r\n", b"\n", b"\r", b"\r\n\r\n",
                                  b"\r\nMSH|^~\\&|LAB\r\nOBX|1\r\n",
                                  b"\n" + b"x" * (C - 2) + b"\r", b"\r\n" * C])
def test_round_trip_keeps_leading_and_trailing_cr_lf(store, data):
    staged = put(store, data)
    assert read(store, staged.key) == data
    assert staged.sha1_hex == hashlib.sha1(data).hexdigest()


def test_round_trip_of_one_write_of_many_chunks_and_of_byte_by_byte_writes(small_store):
    data = os.urandom(5_432)
    assert read(small_store, put(small_store, data).key) == data
    assert read(small_store, put(small_store, data, piece=1).key) == data


@pytest.fixture(scope="module")
def shared_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("shared") / "documents"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=3000), chunk_size=st.integers(1, 300),
       cuts=st.lists(st.integers(0, 3000), max_size=8))
def test_round_trip_any_content_any_writes_any_chunk_size(shared_root, data, chunk_size, cuts):
    store = FileSystemStore(shared_root, KEYRING, chunk_size=chunk_size)
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    with store.begin() as w:
        for a, b in zip(bounds, bounds[1:]):
            w.write(data[a:b])
        staged = w.finish()
    store.commit(staged)
    assert (staged.size, staged.sha1_hex) == (len(data), hashlib.sha1(data).hexdigest())
    assert read(store, staged.key) == data
    assert store.delete(staged.key)



@given(data=st.binary(max_size=2000), chunk_size=st.integers(1, 200),
       writes=st.lists(st.integers(1, 500), max_size=10))
def test_sealing_is_pure_and_opens_back_chunk_by_chunk(data, chunk_size, writes):
    master = os.urandom(32)
    enc = Encryptor("m", master, "obj", chunk_size)
    body, pos = [], 0
    for n in writes:
        body += enc.update(data[pos:pos + n])
        pos += n
    body += enc.update(data[pos:])
    body.append(enc.finalize())
    header = Header.parse(enc.header())
    assert header.plaintext_size == len(data) and header.chunk_count == len(body)
    assert all(len(s) == chunk_size + TAG_SIZE for s in body[:-1])
    dec = Decryptor(header, master, "obj")
    assert dec.sha1 == hashlib.sha1(data).digest()
    assert list(dec.sealed_lengths()) == [len(s) for s in body]
    assert b"".join(dec.open_chunk(i, s) for i, s in enumerate(body)) == data


# ---------------------------------------------------------------------------- file format


def test_header_fields_sit_at_the_documented_offsets(store):
    staged = put(store, b"hello")
    raw = object_file(store, staged.key).read_bytes()
    assert raw[0:8] == MAGIC == b"ODMPDOC\n"
    assert int.from_bytes(raw[8:10], "big") == 1                      # version
    assert int.from_bytes(raw[10:12], "big") == HEADER_SIZE == 160
    assert int.from_bytes(raw[12:16], "big") == C
    assert int.from_bytes(raw[16:24], "big") == 5                     # plaintext size
    assert raw[32] == 2 and raw[33:35] == b"k1" and raw[35:65] == bytes(30)
    assert raw[141:160] == bytes(19)                                   # reserved
    assert len(raw) == 160 + 5 + 16                                    # one sealed chunk
    assert REWRAP_SPAN == (32, 105)


def test_nothing_of_a_document_is_readable_on_disk(tmp_path, store, keyring):
    phrase = "Compte rendu opératoire : patient DUPONT Jean, INS 184057512345625".encode()
    document = b"<ClinicalDocument>" + phrase * 200 + b"</ClinicalDocument>"
    put(store, document)                                   # committed
    stage(store, document)                                 # staged, not committed
    writer = store.begin()                                 # being written
    writer.write(document)
    try:
        control = tmp_path / "control"
        control.mkdir()
        (control / "plain.xml").write_bytes(document)
        grep = ["grep", "-r", "-a", "-F", "-l", "DUPONT Jean"]
        assert subprocess.run([*grep, str(control)], capture_output=True).returncode == 0
        found = subprocess.run([*grep, str(store.root)], capture_output=True, text=True)
        assert found.returncode == 1, found.stdout
        on_disk = b"".join(p.read_bytes() for p in files_under(store.root))
        master = keyring.current.key
        for secret in (phrase[:16], b"ClinicalDocument", master, base64.b64encode(master)):
            assert secret not in on_disk
    finally:
        writer.abort()


# ---------------------------------------------------------------------------- tampering


def test_a_changed_byte_in_a_chunk_is_detected_before_that_chunk_is_served(small_store):
    data = os.urandom(3_500)                                  # chunks 1000, 1000, 1000, 500
    key = put(small_store, data).key
    path = object_file(small_store, key)
    raw = bytearray(path.read_bytes())
    raw[HEADER_SIZE + (1000 + TAG_SIZE) + 10] ^= 0x01         # inside chunk 1
    path.write_bytes(raw)
    served = []
    with pytest.raises(StoreCorruption, match="chunk 1 of 4"):
        with small_store.open(key) as doc:
            for chunk in doc:
                served.append(chunk)
    assert b"".join(served) == data[:1000]                    # chunk 0 only, verified


@pytest.mark.parametrize("cut", [1, TAG_SIZE, 500 + TAG_SIZE, 2_000])
def test_a_truncated_file_is_detected_when_opened(small_store, cut):
    key = put(small_store, os.urandom(3_500)).key
    path = object_file(small_store, key)
    os.truncate(path, path.stat().st_size - cut)
    with pytest.raises(StoreCorruption, match="truncated"):
        small_store.open(key)


@pytest.mark.parametrize("length", [0, 10, HEADER_SIZE])
def test_a_file_cut_into_its_header_is_detected(small_store, length):
    key = put(small_store, os.urandom(3_500)).key
    os.truncate(object_file(small_store, key), length)
    assert_corrupt(small_store, key)


def test_dropping_final_chunks_and_editing_the_size_is_detected(small_store):
    key = put(small_store, os.urandom(3_500)).key
    path = object_file(small_store, key)
    raw = bytearray(path.read_bytes())
    del raw[HEADER_SIZE + 2 * (1000 + TAG_SIZE):]             # keep chunks 0 and 1
    raw[16:24] = (2000).to_bytes(8, "big")                    # and claim 2000 bytes
    path.write_bytes(raw)
    with pytest.raises(StoreCorruption, match="header does not authenticate"):
        small_store.open(key)


def test_an_appended_byte_is_detected(small_store):
    key = put(small_store, os.urandom(3_500)).key
    with open(object_file(small_store, key), "ab") as f:
        f.write(b"\0")
    with pytest.raises(StoreCorruption, match="extended"):
        small_store.open(key)


def _chunk_span(i: int) -> slice:
    start = HEADER_SIZE + i * (1000 + TAG_SIZE)
    return slice(start, start + 1000 + TAG_SIZE)


def test_swapped_chunks_are_detected(small_store):
    key = put(small_store, os.urandom(4_000)).key
    path = object_file(small_store, key)
    raw = bytearray(path.read_bytes())
    raw[_chunk_span(1)], raw[_chunk_span(2)] = raw[_chunk_span(2)], raw[_chunk_span(1)]
    path.write_bytes(raw)
    assert_corrupt(small_store, key)


def test_a_duplicated_chunk_is_detected(small_store):
    key = put(small_store, os.urandom(4_000)).key
    path = object_file(small_store, key)
    raw = bytearray(path.read_bytes())
    raw[_chunk_span(2)] = raw[_chunk_span(1)]
    path.write_bytes(raw)
    assert_corrupt(small_store, key)


def test_a_chunk_taken_from_another_document_is_detected(small_store):
    a, b = put(small_store, os.urandom(4_000)).key, put(small_store, os.urandom(4_000)).key
    pa, pb = object_file(small_store, a), object_file(small_store, b)
    raw = bytearray(pa.read_bytes())
    raw[_chunk_span(1)] = pb.read_bytes()[_chunk_span(1)]
    pa.write_bytes(raw)
    assert_corrupt(small_store, a)
    assert read(small_store, b)


def test_swapped_headers_of_two_documents_are_detected(small_store):
    a, b = put(small_store, os.urandom(4_000)).key, put(small_store, os.urandom(4_000)).key
    pa, pb = object_file(small_store, a), object_file(small_store, b)
    ra, rb = pa.read_bytes(), pb.read_bytes()
    pa.write_bytes(rb[:HEADER_SIZE] + ra[HEADER_SIZE:])
    pb.write_bytes(ra[:HEADER_SIZE] + rb[HEADER_SIZE:])
    assert_corrupt(small_store, a)
    assert_corrupt(small_store, b)


def test_swapped_document_files_are_detected(small_store):
    """A whole file moved under another key does not open: the key is bound in the AAD."""
    a, b = put(small_store, os.urandom(4_000)).key, put(small_store, os.urandom(4_000)).key
    pa, pb = object_file(small_store, a), object_file(small_store, b)
    ra, rb = pa.read_bytes(), pb.read_bytes()
    pa.write_bytes(rb)
    pb.write_bytes(ra)
    assert_corrupt(small_store, a)
    assert_corrupt(small_store, b)


@settings(max_examples=200, deadline=None)
@given(size=st.integers(0, 2_500), where=st.floats(0, 1, exclude_max=True),
       flip=st.integers(1, 255))
def test_any_changed_byte_anywhere_in_the_file_is_detected(shared_root, size, where, flip):
    store = FileSystemStore(shared_root, KEYRING, chunk_size=1000)
    key = put(store, random.Random(size).randbytes(size)).key
    path = object_file(store, key)
    raw = bytearray(path.read_bytes())
    raw[int(where * len(raw))] ^= flip
    path.write_bytes(raw)
    assert_corrupt(store, key)
    store.delete(key)


def test_every_byte_of_a_small_file_is_authenticated(tmp_path, keyring):
    """Flip each byte of a 3-chunk document in turn: every single change is caught."""
    store = FileSystemStore(tmp_path, keyring, chunk_size=16)
    key = put(store, os.urandom(40)).key
    path = object_file(store, key)
    original = path.read_bytes()
    assert len(original) == HEADER_SIZE + 40 + 3 * TAG_SIZE
    for i in range(len(original)):
        changed = bytearray(original)
        changed[i] ^= 0x80
        path.write_bytes(changed)
        with pytest.raises(StoreCorruption):
            read(store, key)
    path.write_bytes(original)
    assert len(read(store, key)) == 40


def test_a_wrong_master_key_is_detected(tmp_path):
    original = make_keyring("k1")
    key = put(FileSystemStore(tmp_path, original), b"secret").key
    impostor = FileSystemStore(tmp_path, make_keyring("k1"))       # same id, other key
    with pytest.raises(StoreCorruption, match="wrong master key"):
        impostor.open(key)
    stranger = FileSystemStore(tmp_path, make_keyring("k2"))
    with pytest.raises(MissingKey, match="'k1'"):
        stranger.open(key)


# ---------------------------------------------------------------------------- SHA-1 check


def test_verify_sha1_passes_a_matching_stream_in_any_hex_case(small_store):
    data = os.urandom(3_500)
    staged = put(small_store, data)
    with small_store.open(staged.key) as doc:
        assert b"".join(verify_sha1(doc, staged.sha1_hex.upper())) == data


def test_verify_sha1_holds_back_the_last_chunk_of_a_mismatching_stream(small_store):
    data = os.urandom(3_500)
    staged = put(small_store, data)
    served = []
    with small_store.open(staged.key) as doc:
        with pytest.raises(StoreCorruption, match="SHA-1 mismatch"):
            for chunk in verify_sha1(doc, hashlib.sha1(b"other").hexdigest()):
                served.append(chunk)
    assert b"".join(served) == data[:3000]


def test_verify_sha1_closes_its_source():
    class Source(list):
        closed = False

        def close(self):
            self.closed = True
    source = Source([b"a", b"b"])
    assert list(verify_sha1(source, hashlib.sha1(b"ab").hexdigest())) == [b"a", b"b"]
    assert source.closed


# ---------------------------------------------------------------------------- master keys


def test_first_start_creates_a_0600_key_file_in_a_0700_directory(tmp_path):
    home = tmp_path / "home"
    old = os.umask(0)                                  # even with a permissive umask
    try:
        ring = load_keyring({}, home)
    finally:
        os.umask(old)
    path = key_file(home, ring.current.key_id)
    assert stat.S_IMODE(os.stat(home / "keys").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert base64.b64decode(path.read_text().strip(), validate=True) == ring.current.key
    assert load_keyring({}, home).current == ring.current          # kept across starts
    assert "key=" not in repr(ring.current) and repr(ring.current.key) not in repr(ring)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_a_key_file_readable_by_group_or_others_is_refused(tmp_path, mode):
    home = tmp_path / "home"
    path = key_file(home, load_keyring({}, home).current.key_id)
    os.chmod(path, mode)
    with pytest.raises(KeyConfigError, match=r"group or others.*chmod 600"):
        load_keyring({}, home)


def test_a_key_directory_open_to_others_is_refused(tmp_path):
    home = tmp_path / "home"
    load_keyring({}, home)
    os.chmod(home / "keys", 0o755)
    with pytest.raises(KeyConfigError, match="chmod 700"):
        load_keyring({}, home)


def test_a_symlinked_key_file_is_refused(tmp_path):
    home = tmp_path / "home"
    path = key_file(home, load_keyring({}, home).current.key_id)
    target = tmp_path / "elsewhere.key"
    os.rename(path, target)
    path.symlink_to(target)
    with pytest.raises(KeyConfigError, match="symbolic link"):
        load_keyring({}, home)


def test_the_configured_master_key_wraps_and_no_key_file_is_written(tmp_path):
    secret = os.urandom(32)
    env = {ENV_KEY: base64.b64encode(secret).decode(), ENV_KEY_ID: "prod-2025"}
    ring = load_keyring(env, tmp_path / "home")
    assert (ring.current.key_id, ring.current.key) == ("prod-2025", secret)
    assert not (tmp_path / "home" / "keys").exists()
    unnamed = load_keyring({ENV_KEY: env[ENV_KEY]}, tmp_path / "home")
    assert unnamed.current.key_id.startswith("env-") and unnamed.current.key == secret


@pytest.mark.parametrize("env, message", [
    ({ENV_KEY: "not base64!"}, "not base64"),
    ({ENV_KEY: base64.b64encode(b"x" * 16).decode()}, "32 bytes"),
    ({ENV_KEY: base64.b64encode(b"x" * 32).decode(), ENV_KEY_ID: "a/b"}, "invalid master key id"),
    ({ENV_KEY_ID: "k"}, "OPENDMP_MASTER_KEY is not"),
])
def test_a_bad_master_key_setting_is_refused_clearly(tmp_path, env, message):
    with pytest.raises(KeyConfigError, match=message):
        load_keyring(env, tmp_path)


def test_workers_starting_together_share_one_first_key(tmp_path):
    home, rings, barrier = tmp_path / "home", [], threading.Barrier(8)

    def start():
        barrier.wait()
        rings.append(load_keyring({}, home))
    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({r.current for r in rings}) == 1
    assert len(list((home / "keys").glob("master-*.key"))) == 1


def test_rotate_then_rewrap_lets_the_old_key_go_and_leaves_bodies_untouched(tmp_path):
    home = tmp_path / "home"
    ring = load_keyring({}, home)
    old_id = ring.current.key_id
    store = FileSystemStore(home / "documents", ring, chunk_size=1000)
    contents = [os.urandom(n) for n in (0, 1, 999, 1000, 1001, 50_000)]
    keys = [put(store, data).key for data in contents]
    staged = stage(store, b"staged, awaiting its registration")
    before = {k: object_file(store, k).read_bytes() for k in keys}
    staged_path = store.root / "staging" / f"{staged.key}.staged"
    staged_before = staged_path.read_bytes()

    new_id = rotate(home)
    ring2 = load_keyring({}, home)
    assert ring2.current.key_id == new_id != old_id and old_id in ring2
    result = store.rewrap(ring2)
    assert result == RewrapResult(rewrapped=7, already_current=0, failed={})

    start, end = REWRAP_SPAN
    for k in keys:
        after = object_file(store, k).read_bytes()
        assert after[HEADER_SIZE:] == before[k][HEADER_SIZE:]          # body unchanged
        assert after[:start] == before[k][:start] and after[end:] == before[k][end:]
        assert after[start:end] != before[k][start:end]
    assert staged_path.read_bytes()[HEADER_SIZE:] == staged_before[HEADER_SIZE:]
    assert store.key_usage() == {new_id: 7}
    assert store.rewrap(ring2) == RewrapResult(rewrapped=0, already_current=7)

    key_file(home, old_id).unlink()
    ring3 = load_keyring({}, home)
    assert old_id not in ring3
    store3 = FileSystemStore(home / "documents", ring3, chunk_size=1000)
    for k, data in zip(keys, contents):
        assert read(store3, k) == data
    assert store3.staged_info(staged.key) == StagedDocument(
        staged.key, staged.size, staged.sha1_hex, new_id)


def test_without_rewrap_deleting_the_old_key_makes_documents_unreadable(tmp_path):
    home = tmp_path / "home"
    ring = load_keyring({}, home)
    key = put(open_store({}, home, ring), b"x").key
    rotate(home)
    key_file(home, ring.current.key_id).unlink()
    with pytest.raises(MissingKey):
        open_store({}, home).open(key)


def test_moving_from_a_key_file_to_a_configured_key(tmp_path):
    home = tmp_path / "home"
    file_ring = load_keyring({}, home)
    store = open_store({}, home, file_ring)
    key = put(store, b"before").key
    env = {ENV_KEY: base64.b64encode(os.urandom(32)).decode(), ENV_KEY_ID: "hsm-1"}
    env_ring = load_keyring(env, home)
    assert env_ring.current.key_id == "hsm-1" and file_ring.current.key_id in env_ring
    assert open_store(env, home, env_ring).rewrap(env_ring).rewrapped == 1
    assert open_store(env, home, env_ring).key_usage() == {"hsm-1": 1}
    key_file(home, file_ring.current.key_id).unlink()
    assert read(open_store(env, home), key) == b"before"


def test_a_keyring_finds_a_key_created_after_it_was_loaded(tmp_path):
    home = tmp_path / "home"
    early = load_keyring({}, home)                # a worker started before the rotation
    rotate(home)
    late_store = open_store({}, home)             # a worker restarted after it
    key = put(late_store, b"new").key
    assert read(open_store({}, home, early), key) == b"new"


# ---------------------------------------------------------------------------- write errors


def _failing_after(calls: int, err: int = errno.ENOSPC):
    real, count = storage._write_all, [0]

    def write_all(fd, data):
        count[0] += 1
        if count[0] > calls:
            raise OSError(err, os.strerror(err))
        real(fd, data)
    return write_all


@pytest.mark.parametrize("calls", [0, 1, 3])
def test_disk_full_while_writing_leaves_no_temporary_file(small_store, monkeypatch, calls):
    monkeypatch.setattr(storage, "_write_all", _failing_after(calls))
    with pytest.raises(StoreWriteError, match="No space left on device"):
        with small_store.begin() as w:
            w.write(os.urandom(10_000))
            w.finish()
    assert files_under(small_store.root) == []


def test_an_io_error_on_fsync_leaves_no_file(small_store, monkeypatch):
    def fsync(fd):
        raise OSError(errno.EIO, os.strerror(errno.EIO))
    monkeypatch.setattr(storage, "_fsync", fsync)
    w = small_store.begin()
    w.write(b"data")
    with pytest.raises(StoreWriteError, match="Input/output error"):
        w.finish()
    assert files_under(small_store.root) == []
    with pytest.raises(ValueError):
        w.write(b"more")


def test_a_real_file_size_limit_while_writing_leaves_no_temporary_file(small_store):
    """The kernel refuses the write (EFBIG, as with ENOSPC): RLIMIT_FSIZE of 64 KiB."""
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, old_limit[1]))
    try:
        with pytest.raises(StoreWriteError, match="too large"):
            with small_store.begin() as w:
                for _ in range(100):
                    w.write(os.urandom(1_000))
                w.finish()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
    assert files_under(small_store.root) == []


def test_an_exception_in_the_caller_aborts_the_write(store):
    with pytest.raises(RuntimeError):
        with store.begin() as w:
            w.write(b"half a document")
            raise RuntimeError("client went away")
    assert files_under(store.root) == []


# ---------------------------------------------------------------------------- staging, recovery


def test_a_staged_document_is_invisible_until_committed(store):
    staged = stage(store, b"pending registration")
    assert not store.exists(staged.key) and list(store.iter_keys()) == []
    with pytest.raises(DocumentNotFound):
        store.open(staged.key)
    store.commit(staged)
    store.commit(staged)                                        # idempotent
    assert store.exists(staged.key) and list(store.iter_keys()) == [staged.key]
    assert list(store.iter_staged()) == []
    assert stat.S_IMODE(object_file(store, staged.key).stat().st_mode) == 0o600


def test_recovery_lists_staged_but_uncommitted_documents_after_a_restart(tmp_path, keyring):
    before_crash = FileSystemStore(tmp_path / "documents", keyring)
    committed = put(before_crash, b"registered and committed")
    left = stage(before_crash, b"registered, then the process died")
    dropped = stage(before_crash, b"registration failed, then the process died")
    half = before_crash.begin()                                 # died mid-upload
    half.write(b"half")

    after = FileSystemStore(tmp_path / "documents", keyring)   # the restart
    assert sorted(after.iter_staged()) == sorted([left.key, dropped.key])
    assert after.staged_info(left.key) == left
    assert list(after.iter_keys()) == [committed.key]
    after.commit(left.key)
    assert after.discard(dropped.key) and not after.discard(dropped.key)
    assert list(after.iter_staged()) == []
    assert read(after, left.key) == b"registered, then the process died"

    assert after.sweep_partial(older_than=3600) == 0            # a live writer is young
    assert after.sweep_partial(older_than=0) == 1
    assert sorted(p.name for p in files_under(after.root)) == sorted([committed.key, left.key])
    half.abort()


def test_missing_and_malformed_keys_are_not_found(store):
    for key in ("0" * 32, "../../etc/passwd", "A" * 32, ""):
        assert not store.exists(key)
        with pytest.raises(DocumentNotFound):
            store.open(key)
    with pytest.raises(ValueError):
        store.commit("../x")


def test_delete_removes_a_committed_document(store):
    key = put(store, b"to be removed").key
    assert store.delete(key) and not store.exists(key) and not store.delete(key)


def test_a_reader_knows_its_size_up_front_and_is_read_once(store):
    key = put(store, b"abc" * 1000).key
    doc = store.open(key)
    assert doc.size == 3000 and len(doc.sha1_hex) == 40
    assert b"".join(doc) == b"abc" * 1000
    with pytest.raises(ValueError):
        iter(doc)
    doc.close()


def test_the_file_system_store_implements_the_interface(store):
    assert isinstance(store, DocumentStore)
    assert stat.S_IMODE(os.stat(store.root / "objects").st_mode) == 0o700


# ---------------------------------------------------------------------------- memory


def test_a_50_mb_document_is_stored_and_read_in_bounded_memory(store):
    piece, total = 65_537, 50 * 1024 * 1024
    expected = hashlib.sha1()
    tracemalloc.start()
    try:
        with store.begin() as w:
            sent = 0
            while sent < total:
                block = os.urandom(min(piece, total - sent))
                expected.update(block)
                w.write(block)
                sent += len(block)
            staged = w.finish()
        store.commit(staged)
        _, write_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        got, n = hashlib.sha1(), 0
        with store.open(staged.key) as doc:
            for chunk in doc:
                got.update(chunk)
                n += len(chunk)
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == total and got.hexdigest() == expected.hexdigest() == staged.sha1_hex
    assert write_peak < 2 * 1024 * 1024, write_peak
    assert read_peak < 2 * 1024 * 1024, read_peak
