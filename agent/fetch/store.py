"""Content-addressed model store on the device: verified artifacts by sha256, resumable partial downloads, and the
record of what serves (and served before) each model, all written atomically so a crash never leaves a bad file."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Set as AbstractSet
from dataclasses import asdict, dataclass, field
from pathlib import Path

from protocol.errors import EdgeError
from protocol.files import atomic_write, fsync_dir, fsync_file, hash_file, sha256_file

log = logging.getLogger(__name__)

_SHA_RE = re.compile(r"^[0-9a-f]{64}$")


class VerifyError(EdgeError, RuntimeError):
    """Downloaded bytes do not hash to the expected sha256."""

    code = "hash_mismatch"


@dataclass
class Installed:
    """A verified version of a model that has served (or serves) on this device."""

    version: str
    sha256: str  # the artifact on disk
    format: str = "onnx"
    backend: str | None = None
    variant: str | None = None  # optimized variant served instead of the original
    desired_sha256: str | None = None  # the desired model this artifact stands for (None: itself)
    samples: str | None = None  # sha256 of the representative inputs given with the version
    input_shapes: dict[str, list[int]] | None = None  # shape hints given with the version

    @property
    def identity(self) -> str:
        return self.desired_sha256 or self.sha256


@dataclass
class Refusal:
    """A version that failed here (rolled back, or refused before its swap) and the attempt it failed at: it is
    deployed again only for a higher attempt (an operator's push --retry or rollback --to), never by itself."""

    reason: str
    code: str = "rolled_back"
    attempt: int = 0

    @classmethod
    def parse(cls, raw: object) -> Refusal:
        """From the records file (an older agent wrote the reason alone)."""
        return cls(reason=raw) if isinstance(raw, str) else cls(**raw)  # type: ignore[arg-type]


@dataclass
class ModelRecord:
    """Per model: what serves now, and the versions before it (newest first) kept for rollback."""

    serving: Installed | None = None
    history: list[Installed] = field(default_factory=list)
    rejected: dict[str, Refusal] = field(default_factory=dict)  # sha256 -> why it failed (not tried again)

    @property
    def previous(self) -> Installed | None:
        return self.history[0] if self.history else None


class ModelStore:
    """Layout: `objects/<sha256>` (verified), `partial/<sha256>.part` (downloading), `models.json` (records)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.objects = root / "objects"
        self.partial = root / "partial"
        for d in (self.objects, self.partial):
            d.mkdir(parents=True, exist_ok=True)
        self._records_path = root / "models.json"
        self.records: dict[str, ModelRecord] = self._load_records()

    # -- objects -------------------------------------------------------------------------------------------------

    def path(self, sha256: str) -> Path:
        if not _SHA_RE.match(sha256):
            raise ValueError(f"not a sha256 digest: {sha256!r}")
        return self.objects / sha256

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def partial_path(self, sha256: str, encoding: str = "identity") -> Path:
        self.path(sha256)  # validates the digest
        return self.partial / (f"{sha256}.zst.part" if encoding == "zstd" else f"{sha256}.part")

    def resume_point(self, sha256: str, chunk_bytes: int, encoding: str = "identity") -> tuple[int, hashlib._Hash]:
        """Bytes already downloaded (cut back to a chunk boundary) and the hash of exactly those bytes."""
        part = self.partial_path(sha256, encoding)
        if not part.exists():
            return 0, hashlib.sha256()
        size = part.stat().st_size
        keep = size - size % chunk_bytes
        if keep != size:
            with open(part, "r+b") as f:
                f.truncate(keep)
        return keep, hash_file(part, keep)

    def commit(self, sha256: str, digest: str) -> Path:
        """Move a finished download into the store if its digest matches; otherwise discard it."""
        part = self.partial_path(sha256)
        if digest != sha256:
            part.unlink(missing_ok=True)
            raise VerifyError(f"sha256 mismatch: expected {sha256[:12]}…, downloaded bytes hash to {digest[:12]}…")
        fsync_file(part)
        target = self.path(sha256)
        os.replace(part, target)
        fsync_dir(self.objects)
        return target

    def commit_compressed(self, sha256: str, size: int) -> Path:
        """Decompress a finished zstd download into the partial file while hashing it, then commit as usual: the raw
        bytes must hash to `sha256`. A corrupt stream is discarded like a hash mismatch, and so is one that goes on
        past the `size` the (signed) desired state gives: a small transfer never fills the disk."""
        import zstandard

        packed = self.partial_path(sha256, "zstd")
        hasher = hashlib.sha256()
        written = 0
        try:
            with open(packed, "rb") as src, open(self.partial_path(sha256), "wb") as dst:
                reader = zstandard.ZstdDecompressor().stream_reader(src)
                while block := reader.read(1 << 20):
                    written += len(block)
                    if written > size:
                        raise zstandard.ZstdError(f"it decompresses to more than the {size} bytes the model has")
                    hasher.update(block)
                    dst.write(block)
        except zstandard.ZstdError as exc:
            packed.unlink(missing_ok=True)
            self.partial_path(sha256).unlink(missing_ok=True)
            raise VerifyError(f"compressed download of {sha256[:12]}… does not decompress: {exc}") from None
        packed.unlink(missing_ok=True)
        return self.commit(sha256, hasher.hexdigest())

    def verify(self, sha256: str) -> bool:
        """Re-hash a stored object (used at start-up, so a corrupted file is never served)."""
        return self.has(sha256) and sha256_file(self.path(sha256)) == sha256

    # -- records -------------------------------------------------------------------------------------------------

    def _load_records(self) -> dict[str, ModelRecord]:
        if not self._records_path.exists():
            return {}
        try:
            raw = json.loads(self._records_path.read_text())
            return {
                name: ModelRecord(
                    serving=Installed(**rec["serving"]) if rec.get("serving") else None,
                    history=[Installed(**h) for h in rec.get("history", [])],
                    rejected={sha: Refusal.parse(r) for sha, r in rec.get("rejected", {}).items()},
                )
                for name, rec in raw.items()
            }
        except (ValueError, TypeError, KeyError) as exc:
            log.error("model records at %s are unreadable (%s); starting with none", self._records_path, exc)
            return {}

    def _save_records(self) -> None:
        data = {name: asdict(rec) for name, rec in self.records.items()}
        atomic_write(self._records_path, json.dumps(data, indent=1).encode())

    def mark_serving(self, name: str, installed: Installed) -> None:
        """Record a successful swap: the old serving version becomes the previous one."""
        rec = self.records.setdefault(name, ModelRecord())
        if rec.serving and rec.serving.sha256 != installed.sha256:
            rec.history = [rec.serving] + [h for h in rec.history if h.sha256 not in (rec.serving.sha256,)]
        rec.history = [h for h in rec.history if h.sha256 != installed.sha256]
        rec.serving = installed
        self._save_records()

    def reject(self, name: str, sha256: str, refusal: Refusal) -> None:
        """Remember that a version failed here, so the same attempt does not deploy it again."""
        rec = self.records.setdefault(name, ModelRecord())
        rec.history = [h for h in rec.history if sha256 not in (h.sha256, h.identity)]
        rest = {sha: r for sha, r in rec.rejected.items() if sha != sha256}
        rec.rejected = {**dict(list(rest.items())[-7:]), sha256: refusal}
        self._save_records()

    def fall_back(self, name: str, sha256: str) -> None:
        """If `sha256` is what serves `name`, serve the newest version kept before it instead (none: nothing)."""
        rec = self.records.get(name)
        if rec is None or rec.serving is None or sha256 not in (rec.serving.sha256, rec.serving.identity):
            return
        rec.serving = rec.history.pop(0) if rec.history else None
        self._save_records()

    def rejection(self, name: str, sha256: str) -> Refusal | None:
        rec = self.records.get(name)
        return rec.rejected.get(sha256) if rec else None

    def forget(self, name: str) -> None:
        if self.records.pop(name, None) is not None:
            self._save_records()

    # -- retention -----------------------------------------------------------------------------------------------

    def collect_garbage(self, keep_versions: int, pinned: AbstractSet[str] = frozenset()) -> list[str]:
        """Remove objects no model keeps; per model keep serving + previous + up to keep_versions in all."""
        keep = set(pinned)
        for rec in self.records.values():
            kept = ([rec.serving] if rec.serving else []) + rec.history
            n = max(keep_versions, 2)
            rec.history = rec.history[: max(n - (1 if rec.serving else 0), 1)]
            keep.update(i.sha256 for i in kept[:n])
        self._save_records()
        removed = []
        for obj in self.objects.iterdir():
            if obj.name not in keep and _SHA_RE.match(obj.name):
                obj.unlink(missing_ok=True)
                removed.append(obj.name)
        for part in self.partial.iterdir():
            if part.name.removesuffix(".part").removesuffix(".zst") not in keep:
                part.unlink(missing_ok=True)
        if removed:
            log.info("removed %d old artifact(s) from %s", len(removed), self.objects)
        return removed
