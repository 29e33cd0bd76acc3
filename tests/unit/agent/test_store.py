"""The device's model store: verified commits, resumable partials, compressed downloads checked as they unpack, records
that survive restarts, retention."""

from __future__ import annotations

import hashlib

import pytest

from agent.fetch.store import Installed, ModelStore, VerifyError


def download(store: ModelStore, data: bytes) -> str:
    sha = hashlib.sha256(data).hexdigest()
    store.partial_path(sha).write_bytes(data)
    store.commit(sha, hashlib.sha256(data).hexdigest())
    return sha


def test_commit_verifies_and_discards_mismatches(tmp_path):
    store = ModelStore(tmp_path)
    sha = download(store, b"model bytes")
    assert store.has(sha) and store.verify(sha)
    wrong = "0" * 64
    store.partial_path(wrong).write_bytes(b"other bytes")
    with pytest.raises(VerifyError, match="sha256 mismatch"):
        store.commit(wrong, hashlib.sha256(b"other bytes").hexdigest())
    assert not store.has(wrong) and not store.partial_path(wrong).exists()
    store.path(sha).write_bytes(b"bit rot")
    assert not store.verify(sha)


def test_resume_point_cuts_back_to_a_chunk_boundary(tmp_path):
    store = ModelStore(tmp_path)
    sha = "a" * 64
    store.partial_path(sha).write_bytes(b"x" * 2500)
    offset, hasher = store.resume_point(sha, 1000)
    assert offset == 2000 and store.partial_path(sha).stat().st_size == 2000
    assert hasher.hexdigest() == hashlib.sha256(b"x" * 2000).hexdigest()
    with pytest.raises(ValueError):
        store.partial_path("../../etc/passwd")


def test_records_survive_restart_and_track_previous(tmp_path):
    store = ModelStore(tmp_path)
    a, b = download(store, b"v1"), download(store, b"v2")
    store.mark_serving("m", Installed("1", a))
    store.mark_serving("m", Installed("2", b))
    again = ModelStore(tmp_path)
    assert again.records["m"].serving.sha256 == b
    assert again.records["m"].previous.sha256 == a
    (tmp_path / "models.json").write_text("{corrupt")
    assert ModelStore(tmp_path).records == {}


def test_garbage_collection_never_removes_serving_or_previous(tmp_path):
    store = ModelStore(tmp_path)
    shas = [download(store, f"v{i}".encode()) for i in range(5)]
    for i, sha in enumerate(shas):
        store.mark_serving("m", Installed(str(i), sha))
    pinned_partial = "b" * 64
    store.partial_path(pinned_partial).write_bytes(b"half")
    store.partial_path("c" * 64).write_bytes(b"stale")
    removed = store.collect_garbage(keep_versions=2, pinned={pinned_partial})
    assert set(removed) == set(shas[:3])
    assert {p.name for p in store.objects.iterdir()} == set(shas[3:])
    assert [p.name for p in store.partial.iterdir()] == [f"{pinned_partial}.part"]


def test_store_rejects_corrupt_or_wrong_compressed_download(tmp_path):
    zstandard = pytest.importorskip("zstandard")
    store = ModelStore(tmp_path)
    raw = b"model bytes " * 1000
    sha = hashlib.sha256(raw).hexdigest()

    store.partial_path(sha, "zstd").write_bytes(b"not a zstd stream")
    with pytest.raises(VerifyError, match="does not decompress"):
        store.commit_compressed(sha, len(raw))
    assert list(store.partial.iterdir()) == [] and not store.has(sha)

    store.partial_path(sha, "zstd").write_bytes(zstandard.ZstdCompressor().compress(raw[:-8] + b"tampered"))
    with pytest.raises(VerifyError, match="sha256 mismatch"):
        store.commit_compressed(sha, len(raw))
    assert not store.has(sha)

    # a bomb: 16 KiB on the wire that would unpack to 512 MiB stops at the size the desired state gave
    bomb = zstandard.ZstdCompressor(level=19).compress(b"\0" * (512 << 20))
    assert len(bomb) < 64 << 10
    store.partial_path(sha, "zstd").write_bytes(bomb)
    with pytest.raises(VerifyError, match="more than the 12000 bytes"):
        store.commit_compressed(sha, len(raw))
    assert list(store.partial.iterdir()) == []

    store.partial_path(sha, "zstd").write_bytes(zstandard.ZstdCompressor().compress(raw))
    assert store.commit_compressed(sha, len(raw)).read_bytes() == raw
    assert list(store.partial.iterdir()) == []
