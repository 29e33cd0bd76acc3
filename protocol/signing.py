"""Ed25519 signatures over model manifests: the controller signs what it deploys, agents configured with trusted
public keys refuse anything unsigned or signed by another key. Several trusted keys allow rotation without downtime."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocol.errors import EdgeError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

SIGNING_CONTEXT = b"edgefleet-manifest-v1\n"
# Each kind of signed thing has its own context, so a signature made for one can never pass as another (a model
# version "1+int8" as variant int8 of version 1, a manifest as a whole desired state).
VARIANT_CONTEXT = b"edgefleet-variant-v1\n"
STATE_CONTEXT = b"edgefleet-desired-state-v1\n"
STATE_UNSIGNED = ("signature", "v")  # what a desired state's signature does not cover
MANIFEST_FIELDS = ("name", "version", "sha256", "size", "format")
OPTIONAL_FIELDS = ("samples", "input_shapes")  # signed when present: the inputs every decision on the device runs on


class SignatureError(EdgeError, ValueError):
    """A manifest is unsigned, signed by an untrusted key, or does not match its signature."""

    code = "signature_invalid"  # what the device status reports for it


def canonical_manifest(manifest: dict[str, Any], context: bytes = SIGNING_CONTEXT) -> bytes:
    """The exact bytes that are signed: a context prefix and the manifest's fields as sorted, compact JSON."""
    missing = [f for f in MANIFEST_FIELDS if f not in manifest]
    if missing:
        raise SignatureError(f"manifest lacks {missing}")
    body = {f: manifest[f] for f in (*MANIFEST_FIELDS, *OPTIONAL_FIELDS) if f in manifest}

    return context + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def canonical_state(state: dict[str, Any]) -> bytes:
    """The bytes of a whole desired state that are signed: every field as sent (the JSON object, so fields an older
    agent does not know are covered too), but the signature itself and the schema version."""
    body = {k: v for k, v in state.items() if k not in STATE_UNSIGNED}
    return STATE_CONTEXT + json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def key_id(public_raw: bytes) -> str:
    """Short stable name of a public key (first 16 hex digits of its sha256)."""
    return hashlib.sha256(public_raw).hexdigest()[:16]


@dataclass(frozen=True)
class Signature:
    key_id: str
    value: str  # base64 Ed25519 signature

    def as_dict(self) -> dict[str, str]:
        return {"key_id": self.key_id, "value": self.value}


class Signer:
    """Holds the controller's private key."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        from cryptography.hazmat.primitives import serialization

        self._key = private_key
        self.public_raw = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.key_id = key_id(self.public_raw)

    @classmethod
    def generate(cls) -> Signer:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: Path) -> Signer:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        try:
            key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        except (OSError, ValueError, TypeError) as exc:
            raise SignatureError(f"cannot read signing key {path}: {exc}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise SignatureError(f"{path} is not an Ed25519 private key")
        return cls(key)

    def save(self, path: Path) -> None:
        from cryptography.hazmat.primitives import serialization

        pem = self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # never readable by others, not even briefly
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        path.chmod(0o600)

    @property
    def public_key_b64(self) -> str:
        """The form agents put in `trusted_keys`."""
        return base64.b64encode(self.public_raw).decode()

    def sign(self, manifest: dict[str, Any], context: bytes = SIGNING_CONTEXT) -> Signature:
        return self._sign(canonical_manifest(manifest, context))

    def sign_state(self, state: dict[str, Any]) -> Signature:
        """A whole desired state as JSON (protocol.Desired dumped): device, generation, expiry, every model."""
        return self._sign(canonical_state(state))

    def _sign(self, data: bytes) -> Signature:
        return Signature(self.key_id, base64.b64encode(self._key.sign(data)).decode())


class Verifier:
    """Trusted public keys (base64 raw Ed25519, as printed by `edge-controller keygen`), by key id."""

    def __init__(self, trusted: list[str]) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        self._keys = {}
        for text in trusted:
            try:
                raw = base64.b64decode(text, validate=True)
                key = Ed25519PublicKey.from_public_bytes(raw)
            except ValueError:
                raise SignatureError(f"trusted key {text[:12]}… is not a base64 Ed25519 public key") from None
            self._keys[key_id(raw)] = key

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._keys)

    def verify(
        self, manifest: dict[str, Any], signature: dict[str, Any] | None, context: bytes = SIGNING_CONTEXT
    ) -> str:
        """Return the signing key id, or raise SignatureError saying what is wrong."""
        if not signature:
            raise SignatureError("the deployment is not signed, and this agent only accepts signed models")
        return self._verify(canonical_manifest(manifest, context), signature, "the manifest")

    def verify_state(self, state: dict[str, Any]) -> str:
        """A whole desired state as received (its JSON object): the signing key id, or SignatureError."""
        signature = state.get("signature")
        if not isinstance(signature, dict):
            raise SignatureError("the desired state is not signed, and this agent only accepts signed states")
        return self._verify(canonical_state(state), signature, "the desired state")

    def _verify(self, data: bytes, signature: dict[str, Any], what: str) -> str:
        from cryptography.exceptions import InvalidSignature

        key = self._keys.get(str(signature.get("key_id")))
        if key is None:
            raise SignatureError(
                f"signed by key {signature.get('key_id')!r}, which this agent does not trust (trusted: {self.key_ids})"
            )
        try:
            key.verify(base64.b64decode(str(signature.get("value")), validate=True), data)
        except (InvalidSignature, ValueError):
            raise SignatureError(f"signature by key {signature['key_id']} does not match {what}") from None
        return str(signature["key_id"])
