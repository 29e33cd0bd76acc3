"""Content-addressed artifact storage on the controller: uploads are hashed while written, then renamed into place,
with a zstd copy beside each artifact that compresses well enough to be worth sending instead."""

from __future__ import annotations

import logging
import os
import re
import uuid
from pathlib import Path

from protocol import ZSTD_LEVEL, Encoding, Transfer, worth_compressing

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
        target = self.path(sha256)
        target.parent.mkdir(exist_ok=True)
        if target.exists():
            tmp.unlink(missing_ok=True)
        else:
            os.replace(tmp, target)
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
            log.info("%s travels zstd-compressed: %d -> %d bytes", target.name[:12], size, compressed)
        else:
            out.unlink()
