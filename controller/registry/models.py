"""The model registry's front door: an upload's name and version checked, its bytes hashed, inspected and registered
once (the same bytes again are the version already there)."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterable

from controller.db.database import Database, ModelRow
from controller.registry.artifacts import ArtifactStore
from controller.registry.inspect import InvalidModel
from controller.registry.model_check import check_model
from controller.registry.uploads import Received, receive_file
from protocol import MODEL_NAME_PATTERN
from protocol.errors import EdgeError

MAX_UPLOAD_BYTES = 2 << 30  # protobuf's limit on one ONNX file (and a flatbuffer's): nothing larger is a model
_MODEL_NAME_RE = re.compile(MODEL_NAME_PATTERN)
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+\-]{0,63}$")


def check_name(name: str) -> None:
    if not _MODEL_NAME_RE.match(name):
        raise EdgeError(f"model name {name!r}: use letters, digits, '_', '-', '.' (max 128)", code="bad_name")


def check_version(version: str) -> None:
    if not _VERSION_RE.match(version):
        raise EdgeError(f"version {version!r}: use letters, digits, '_', '-', '.', '+'", code="bad_version")


class Registry:
    """Registers uploaded models in `db`, their bytes content-addressed in `artifacts`."""

    def __init__(self, db: Database, artifacts: ArtifactStore, max_upload_bytes: int = MAX_UPLOAD_BYTES) -> None:
        self.db = db
        self.artifacts = artifacts
        self.max_upload_bytes = max_upload_bytes

    async def receive(self, name: str, version: str | None, chunks: AsyncIterable[bytes]) -> Received:
        """Check the name and version, then stream the body to a hashed temp file (TooLarge past the limit)."""
        check_name(name)
        if version is not None:
            check_version(version)
        too_large = f"model exceeds the {self.max_upload_bytes >> 20} MiB upload limit"
        return await receive_file(chunks, self.artifacts.begin(), self.max_upload_bytes, too_large)

    def register(self, name: str, version: str | None, filename: str, upload: Received) -> tuple[ModelRow, bool]:
        """(the version, whether it is new): InvalidModel for a file that is no model, Conflict (version_exists) for
        other bytes under a version already registered. The temp file is consumed either way."""
        try:
            model_format, info = check_model(upload.path, filename)  # in a child with a memory limit
        except InvalidModel as exc:
            upload.path.unlink(missing_ok=True)
            raise InvalidModel(f"{filename}: {exc}") from None
        existing = self.db.find_model_by_sha(name, upload.sha256)
        self.artifacts.commit(upload.path, upload.sha256)  # repairs a damaged copy of the same bytes
        if existing and version in (None, existing.version):
            return existing, False
        row = ModelRow(
            name=name,
            version=version or self.db.next_version(name),
            sha256=upload.sha256,
            size=upload.size,
            format=model_format,
            filename=filename,
            info=info,
            created_at=time.time(),
        )
        return self.db.add_model(row), True

    def find(self, name: str, version: str | None = None) -> ModelRow:
        """The version (default: the newest), or unknown_model naming the registered models."""
        row = self.db.get_model(name, version)
        if row is None:
            known = ", ".join(sorted({m.name for m in self.db.list_models()})) or "none yet"
            what = f"model {name!r}" + (f" version {version!r}" if version else "")
            raise EdgeError(f"{what} is not registered; registered models: {known}", code="unknown_model")
        return row
