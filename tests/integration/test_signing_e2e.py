"""Signed deployments: a controller with --signing-key signs every desired model (and each variant); an agent that
trusts the key serves it, an agent that trusts another key refuses it with `signature_invalid`."""

from __future__ import annotations

import queue
import threading

import paho.mqtt.client as mqtt
import pytest
from conftest import wait_model_state, wait_until
from paho.mqtt.enums import CallbackAPIVersion
from test_api_token import TokenController

from protocol import Desired, Topics, decode
from protocol.signing import SignatureError, Signer, Verifier


@pytest.fixture
def signer(tmp_path) -> Signer:
    key = Signer.generate()
    key.save(tmp_path / "signing.pem")
    return key


@pytest.fixture
def signing_controller(broker, tmp_path, prefix, signer):
    handle = TokenController(broker, tmp_path / "controller", prefix, signing_key=tmp_path / "signing.pem")
    yield handle
    handle.stop()


def retained_desired(broker, prefix: str, device_id: str, timeout: float = 10.0) -> Desired:
    """The retained desired message on the broker, as a device would receive it."""
    host, port = broker.url.removeprefix("mqtt://").split(":")
    got: queue.Queue[bytes] = queue.Queue()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"probe-{threading.get_ident()}")
    client.on_connect = lambda c, *_: c.subscribe(Topics(prefix).device(device_id, "desired"), 1)
    client.on_message = lambda c, u, msg: got.put(msg.payload)
    client.connect(host, int(port))
    client.loop_start()
    try:
        return decode(Desired, got.get(timeout=timeout))
    finally:
        client.loop_stop()
        client.disconnect()


def test_retained_desired_is_signed(signing_controller, start_agent, broker, prefix, signer, mlp_model):
    start_agent("dev1", wait_online=signing_controller)
    c = signing_controller.client
    record = c.upload_model(mlp_model, "mlp", None)
    c.deploy("mlp", record["version"], ["dev1"])
    desired = retained_desired(broker, prefix, "dev1")
    (entry,) = desired.models
    assert entry.sha256 == record["sha256"] and entry.signature["key_id"] == signer.key_id
    verifier = Verifier([signer.public_key_b64])
    assert verifier.verify(entry.manifest(), entry.signature) == signer.key_id
    with pytest.raises(SignatureError, match="does not match"):
        verifier.verify({**entry.manifest(), "sha256": "0" * 64}, entry.signature)
    with pytest.raises(SignatureError, match="does not trust"):
        Verifier([Signer.generate().public_key_b64]).verify(entry.manifest(), entry.signature)


def test_variants_are_signed_too(signing_controller, signer, mlp_model):
    """Each VariantRef carries its own signature over (name, version+variant, sha256, size, format)."""
    from controller.db import VariantRow

    fleet = signing_controller.bg.controller.fleet
    model = signing_controller.bg.controller.db.get_model(
        "mlp", signing_controller.client.upload_model(mlp_model, "mlp", None)["version"]
    )
    row = VariantRow("mlp", model.version, "fp16", "b" * 64, 123, "onnx", {}, True, 0.0)
    entry = fleet.desired_model(model, None, [row])
    (ref,) = entry.variants
    verifier = Verifier([signer.public_key_b64])
    assert verifier.verify(entry.variant_manifest(ref), ref.signature) == signer.key_id
    assert entry.variant_manifest(ref)["version"] == f"{model.version}+fp16"
    with pytest.raises(SignatureError):  # a variant signature is not valid for the original and vice versa
        verifier.verify(entry.manifest(), ref.signature)


def test_unsigned_controller_publishes_no_signature(controller, start_agent, broker, prefix, mlp_model):
    start_agent("dev1", wait_online=controller)
    record = controller.client.upload_model(mlp_model, "mlp", None)
    controller.client.deploy("mlp", record["version"], ["dev1"])
    (entry,) = retained_desired(broker, prefix, "dev1").models
    assert entry.signature is None


def test_bad_signing_key_is_a_clear_start_error(tmp_path):
    from controller.service import Controller, ControllerSettings, ControllerStartError

    (tmp_path / "bad.pem").write_text("not a key")
    with pytest.raises(ControllerStartError, match="--signing-key: cannot read signing key"):
        Controller(ControllerSettings(data_dir=tmp_path / "c", signing_key=tmp_path / "bad.pem"))


def test_trusting_agent_serves_and_other_key_is_refused(signing_controller, start_agent, signer, mlp_model):
    other = Signer.generate()
    start_agent("good", config=f'trusted_keys = ["{signer.public_key_b64}"]\n', wait_online=signing_controller)
    start_agent("bad", config=f'trusted_keys = ["{other.public_key_b64}"]\n', wait_online=signing_controller)
    c = signing_controller.client
    record = c.upload_model(mlp_model, "mlp", None)
    c.deploy("mlp", record["version"], ["good", "bad"])
    wait_model_state(signing_controller, "good", "mlp", record["sha256"], {"serving"})
    entry = wait_model_state(signing_controller, "bad", "mlp", record["sha256"], {"failed"})
    assert entry["reason"]["code"] == "signature_invalid"
    assert signer.key_id in entry["reason"]["message"]
    assert not entry.get("serving")


def test_key_rotation_end_to_end(
    signing_controller, start_agent, broker, prefix, signer, mlp_model, mlp_model_v2, tmp_path
):
    """The three steps of docs/security.md with a real agent: trust both, re-key the controller, retire the old key."""
    new = Signer.generate()
    new.save(tmp_path / "new.pem")
    both = f'trusted_keys = ["{signer.public_key_b64}", "{new.public_key_b64}"]\n'
    agent = start_agent("dev1", config=both, wait_online=signing_controller)  # step 1
    c = signing_controller.client
    v1 = c.upload_model(mlp_model, "mlp", None)
    c.deploy("mlp", v1["version"], ["dev1"])
    wait_model_state(signing_controller, "dev1", "mlp", v1["sha256"], {"serving"})

    signing_controller.stop()  # step 2: the controller restarts with the new key and re-signs what it publishes
    signing_controller.extra["signing_key"] = tmp_path / "new.pem"
    signing_controller.start()
    wait_until(lambda: retained_desired(broker, prefix, "dev1").models[0].signature["key_id"] == new.key_id, 10,
               "the desired state to be re-signed with the new key")  # fmt: skip
    c = signing_controller.client
    v2 = c.upload_model(mlp_model_v2, "mlp", None)
    c.deploy("mlp", v2["version"], ["dev1"])
    wait_model_state(signing_controller, "dev1", "mlp", v2["sha256"], {"serving"})

    agent.stop()  # step 3: the old key is retired; the agent keeps serving what the new key signed
    agent.data_dir.joinpath("agent.toml").write_text(
        f'topic_prefix = "{prefix}"\ntrusted_keys = ["{new.public_key_b64}"]\n'
    )
    agent.start()
    wait_until(lambda: signing_controller.device("dev1")["online"], 20, "dev1 back online")
    wait_model_state(signing_controller, "dev1", "mlp", v2["sha256"], {"serving"})
    assert agent.metadata("mlp")["versions"] == [v2["version"]]
    c.deploy("mlp", v1["version"], ["dev1"])  # signed by the new key only: accepted
    wait_model_state(signing_controller, "dev1", "mlp", v1["sha256"], {"serving"})

    stale = start_agent("stale", config=f'trusted_keys = ["{signer.public_key_b64}"]\n', wait_online=signing_controller)
    c.deploy("mlp", v1["version"], ["stale"])  # an agent left on the retired key refuses, and says which key signed
    entry = wait_model_state(signing_controller, "stale", "mlp", v1["sha256"], {"failed"})
    assert entry["reason"]["code"] == "signature_invalid" and new.key_id in entry["reason"]["message"]
    assert stale.metadata("mlp") is None
