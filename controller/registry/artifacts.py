"""Content-addressed artifact storage on the controller: uploads are hashed while written, fsynced, then renamed into
place (and the directory fsynced) before anything refers to them; an object already there is checked (size and hash)
and replaced when damaged. A zstd copy sits beside each artifact that compresses well enough to be worth sending."""

from __future__ import annotations

import logging
import os
import re
import uuid
from pathlib import Path

from protocol import ZSTD_LEVEL, Encoding, Transfer, worth_compressing
from protocol.files import fsync_dir, fsync_file, sha256_file

log = logging.getLogger(__name__)

_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
SAMPLE_BYTES = 4 << 20  # judge compressibility on a sample first: float weights rarely compress, skip them fast


class ArtifactStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.objects = root / "objects"
        self.incoming = root / "incoming"
        self.objects.mkdir(parents=True, exist_ok=True)
        self.incoming.mkdir(parents=True, exist_ok=True)
        self.sweep_incoming()

    def sweep_incoming(self) -> int:
        """Remove what aborted uploads and conversions left in `incoming` (at start nothing there is in use)."""
        import shutil

        removed = 0
        for leftover in self.incoming.iterdir():
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
            removed += 1
        if removed:
            log.info("removed %d leftover(s) of aborted uploads from %s", removed, self.incoming)
        return removed

    def path(self, sha256: str) -> Path:
        if not _SHA_RE.match(sha256):
            raise ValueError(f"not a sha256 digest: {sha256!r}")
        return self.objects / sha256[:2] / sha256

    def compressed_path(self, sha256: str) -> Path:
        return self.path(sha256).with_suffix(".zst")

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def begin(self) -> Path:
        """A fresh temporary path for an upload in progress."""
        return self.incoming / f"{uuid.uuid4().hex}.upload"

    def commit(self, tmp: Path, sha256: str) -> Path:
        """Move `tmp` (whose content hashes to `sha256`) into place, durably; an intact object already there is kept
        (and `tmp` removed), a damaged one (torn write, disk error) replaced."""
        target = self.path(sha256)
        target.parent.mkdir(exist_ok=True)
        if target.exists() and intact(target, sha256, tmp.stat().st_size):
            tmp.unlink(missing_ok=True)
        else:
            if target.exists():
                log.warning("artifact %s on disk is damaged; replacing it with the uploaded copy", sha256[:12])
                self.compressed_path(sha256).unlink(missing_ok=True)  # made from the damaged bytes
            fsync_file(tmp)
            os.replace(tmp, target)
            fsync_dir(target.parent)
        if not self.compressed_path(sha256).exists():
            self._compress(target, self.compressed_path(sha256))
        return target

    def transfer(self, sha256: str) -> Transfer | None:
        """The compressed encoding on offer for this artifact, if any."""
        try:
            return Transfer(encoding="zstd", size=self.compressed_path(sha256).stat().st_size)
        except FileNotFoundError:
            return None

    def read(self, sha256: str, offset: int, length: int, encoding: Encoding = "identity") -> tuple[bytes, int]:
        """One byte range of the artifact (or of its compressed copy) and that file's total size."""
        path = self.compressed_path(sha256) if encoding == "zstd" else self.path(sha256)
        with open(path, "rb") as f:
            total = os.fstat(f.fileno()).st_size
            return os.pread(f.fileno(), length, offset), total

    def _compress(self, target: Path, packed: Path) -> None:
        """Write `packed` (`<sha>.zst`) atomically when zstd saves enough (protocol.worth_compressing); without
        zstandard, skip."""
        try:
            import zstandard
        except ImportError:
            return
        size = target.stat().st_size
        compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=-1)
        with open(target, "rb") as f:
            sample = f.read(SAMPLE_BYTES)
        if not sample or not worth_compressing(len(sample), len(compressor.compress(sample))):
            return
        out = packed.with_name(packed.name + ".tmp")
        with open(target, "rb") as src, open(out, "wb") as dst:
            compressor.copy_stream(src, dst, size=size)
            dst.flush()
            os.fsync(dst.fileno())
        compressed = out.stat().st_size
        if worth_compressing(size, compressed):
            os.replace(out, packed)
            fsync_dir(packed.parent)
            log.info("%s travels zstd-compressed: %d -> %d bytes", target.name[:12], size, compressed)
        else:
            out.unlink()


def intact(path: Path, sha256: str, size: int) -> bool:
    """Whether the file has this size and this sha256 (the size first: a torn copy is usually short)."""
    try:
        return path.stat().st_size == size and sha256_file(path) == sha256
    except OSError:
        return False
