"""Content-addressed artifact storage on the controller: uploads are hashed while written, then renamed into place."""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


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
        return target

    def read(self, sha256: str, offset: int, length: int) -> tuple[bytes, int]:
        """One byte range and the artifact's total size."""
        with open(self.path(sha256), "rb") as f:
            total = os.fstat(f.fileno()).st_size
            return os.pread(f.fileno(), length, offset), total
