"""Ed25519 manifest signatures: valid, tampered, unsigned, untrusted, and key rotation."""

from __future__ import annotations

import pytest

from protocol.signing import SignatureError, Signer, Verifier

MANIFEST = {"name": "det", "version": "3", "sha256": "a" * 64, "size": 1234, "format": "onnx", "backend": None}


def test_sign_and_verify_and_reject_tampering():
    signer = Signer.generate()
    verifier = Verifier([signer.public_key_b64])
    signature = signer.sign(MANIFEST).as_dict()
    assert verifier.verify(MANIFEST, signature) == signer.key_id
    assert verifier.verify({**MANIFEST, "backend": "openvino"}, signature)  # not a signed field
    for field, value in (("sha256", "b" * 64), ("version", "4"), ("size", 1235), ("name", "other")):
        with pytest.raises(SignatureError, match="does not match"):
            verifier.verify({**MANIFEST, field: value}, signature)
    with pytest.raises(SignatureError, match="not signed"):
        verifier.verify(MANIFEST, None)
    with pytest.raises(SignatureError, match="does not match"):
        verifier.verify(MANIFEST, {"key_id": signer.key_id, "value": "!!notbase64"})


def test_key_rotation(tmp_path):
    old, new = Signer.generate(), Signer.generate()
    old.save(tmp_path / "old.pem")
    assert Signer.load(tmp_path / "old.pem").key_id == old.key_id
    during = Verifier([old.public_key_b64, new.public_key_b64])  # step 1: agents trust both keys
    assert during.verify(MANIFEST, old.sign(MANIFEST).as_dict()) == old.key_id
    assert during.verify(MANIFEST, new.sign(MANIFEST).as_dict()) == new.key_id  # step 2: controller signs with new
    after = Verifier([new.public_key_b64])  # step 3: old key retired
    with pytest.raises(SignatureError, match="does not trust"):
        after.verify(MANIFEST, old.sign(MANIFEST).as_dict())


def test_bad_keys_are_clear_errors(tmp_path):
    with pytest.raises(SignatureError, match="not a base64 Ed25519 public key"):
        Verifier(["not-a-key"])
    (tmp_path / "k.pem").write_text("garbage")
    with pytest.raises(SignatureError, match="cannot read signing key"):
        Signer.load(tmp_path / "k.pem")
