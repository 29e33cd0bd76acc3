"""The shared file helpers: sha256 of a file (whole, or a prefix to resume from) and durable atomic writes."""

from __future__ import annotations

import hashlib

from protocol.files import BLOCK_BYTES, atomic_write, hash_file, sha256_file


def test_hash_file_whole_and_prefix_across_blocks(tmp_path):
    data = bytes(range(256)) * (BLOCK_BYTES // 128 + 3)  # more than two read blocks
    path = tmp_path / "model.onnx"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()
    for limit in (0, 1, BLOCK_BYTES, BLOCK_BYTES + 7):
        assert hash_file(path, limit).hexdigest() == hashlib.sha256(data[:limit]).hexdigest()
    resumed = hash_file(path, BLOCK_BYTES + 7)
    resumed.update(data[BLOCK_BYTES + 7 :])  # a download goes on from the prefix it hashed
    assert resumed.hexdigest() == sha256_file(path)


def test_atomic_write_replaces_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "models.json"
    atomic_write(path, b"old")
    atomic_write(path, b"new")
    assert path.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["models.json"]
