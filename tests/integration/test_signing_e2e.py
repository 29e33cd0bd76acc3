"""Signed deployments: a controller with --signing-key signs every desired model (and each variant) and the whole
desired state; an agent that trusts the key serves it, an agent that trusts another key refuses it with
`signature_invalid`, and a hostile broker's replay of an older state or an unsigned "serve nothing" changes nothing
(published by a real MQTT client, as a broker could)."""

from __future__ import annotations

import json
import queue
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from conftest import wait_model_state, wait_until
from paho.mqtt.enums import CallbackAPIVersion
from test_api_token import TokenController

from edgectl.sample_models import mlp
from protocol import Desired, Topics, decode
from protocol.signing import VARIANT_CONTEXT, SignatureError, Signer, Verifier


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
    """Each VariantRef carries its own signature over (name, version+variant, sha256, size, format), in a signing
    context of its own: it never passes as the signature of a model version named "1+fp16", nor the reverse."""
    from controller.db.database import VariantRow

    fleet = signing_controller.bg.controller.fleet
    model = signing_controller.bg.controller.db.get_model(
        "mlp", signing_controller.client.upload_model(mlp_model, "mlp", None)["version"]
    )
    row = VariantRow("mlp", model.version, "fp16", "b" * 64, 123, "onnx", {}, True, 0.0)
    entry = fleet.desired_model(model, None, [row])
    (ref,) = entry.variants
    verifier = Verifier([signer.public_key_b64])
    assert verifier.verify(entry.variant_manifest(ref), ref.signature, VARIANT_CONTEXT) == signer.key_id
    assert entry.variant_manifest(ref)["version"] == f"{model.version}+fp16"
    with pytest.raises(SignatureError):  # the same fields as a model manifest: refused
        verifier.verify(entry.variant_manifest(ref), ref.signature)
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


def client(broker) -> mqtt.Client:
    host, port = broker.url.removeprefix("mqtt://").split(":")
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"hostile-{threading.get_ident()}-{time.time_ns()}")
    c.connect(host, int(port))
    c.loop_start()
    return c


def retained_payload(broker, topic: str) -> bytes:
    got: queue.Queue[bytes] = queue.Queue()
    c = client(broker)
    c.on_message = lambda _c, _u, msg: got.put(msg.payload)
    c.subscribe(topic, 1)
    try:
        return got.get(timeout=10)
    finally:
        c.loop_stop()
        c.disconnect()


def publish_retained(broker, topic: str, payload: bytes) -> None:
    c = client(broker)
    c.publish(topic, payload, qos=1, retain=True).wait_for_publish(10)
    c.loop_stop()
    c.disconnect()


def test_replayed_and_unsigned_states_change_nothing(
    signing_controller, start_agent, broker, prefix, signer, model_dir, tmp_path
):
    trust = f'trusted_keys = ["{signer.public_key_b64}"]\n'
    agent = start_agent("dev1", config=trust, wait_online=signing_controller)
    topic = Topics(prefix).device("dev1", "desired")
    c = signing_controller.client
    v1 = c.upload_model(mlp(model_dir / "ss1.onnx", seed=111), "m", None)
    c.deploy("m", v1["version"], ["dev1"])
    wait_model_state(signing_controller, "dev1", "m", v1["sha256"], {"serving"})
    old_state = retained_payload(broker, topic)
    assert Verifier([signer.public_key_b64]).verify_state(json.loads(old_state)) == signer.key_id
    v2 = c.upload_model(mlp(model_dir / "ss2.onnx", seed=112), "m", None)
    c.deploy("m", v2["version"], ["dev1"])
    wait_model_state(signing_controller, "dev1", "m", v2["sha256"], {"serving"})
    current = Desired.model_validate_json(retained_payload(broker, topic))
    assert current.expires > time.time() + 86400 and current.signature["key_id"] == signer.key_id

    publish_retained(broker, topic, old_state)  # a validly signed, older state: replayed
    wait_until(lambda: "replayed" in agent.log.read_text(), 20, "the replay refused")
    forged = Desired(device_id="dev1", generation=current.generation + 5, models=[])  # unsigned: serve nothing
    publish_retained(broker, topic, forged.encode())
    wait_until(lambda: "not signed" in agent.log.read_text(), 20, "the unsigned state refused")
    other = Signer.generate()
    tampered = json.loads(current.encode())
    tampered["models"][0]["backend"] = "openvino"  # one field changed after signing
    publish_retained(broker, topic, json.dumps(tampered).encode())
    wait_until(lambda: "does not match the desired state" in agent.log.read_text(), 20, "the tampered state refused")
    forged_signed = Desired(device_id="dev1", generation=current.generation + 9, models=[])
    forged_signed.signature = other.sign_state(json.loads(forged_signed.encode())).as_dict()
    publish_retained(broker, topic, forged_signed.encode())
    wait_until(lambda: "does not trust" in agent.log.read_text(), 20, "the state signed by another key refused")

    assert agent.metadata("m")["versions"] == [v2["version"]]  # served throughout, never removed or rolled back
    agent.stop()  # the generation followed is persisted: a restart does not reopen the replay
    publish_retained(broker, topic, old_state)
    agent.start()
    wait_until(lambda: agent.metadata("m"), 30, "serving from disk")
    wait_until(lambda: agent.log.read_text().count("replayed") >= 2, 20, "the replay refused after a restart")
    assert agent.metadata("m")["versions"] == [v2["version"]]
