"""Issue 26, finding 9: a signed desired state could be replayed for 30 days while its generation stood: new samples
(or input shapes) reach a device through a republish signed under the same generation, so the older state of that
generation stayed acceptable. A real agent that trusts the controller's key; the older state replayed on the broker."""

from __future__ import annotations

import json

import numpy as np
from conftest import wait_model_state, wait_until
from test_signing_e2e import publish_retained, retained_payload, signer, signing_controller  # noqa: F401

from edgectl.sample_models import mlp
from protocol import Desired, Topics


def test_a_state_replaced_by_new_samples_cannot_be_replayed(
    signing_controller,  # noqa: F811
    start_agent,
    broker,
    prefix,
    signer,  # noqa: F811
    model_dir,
    tmp_path,
):
    agent = start_agent("dev1", config=f'trusted_keys = ["{signer.public_key_b64}"]\n', wait_online=signing_controller)
    topic = Topics(prefix).device("dev1", "desired")
    c = signing_controller.client
    v1 = c.upload_model(mlp(model_dir / "gen1.onnx", seed=121), "m", None)
    c.deploy("m", v1["version"], ["dev1"])
    wait_model_state(signing_controller, "dev1", "m", v1["sha256"], {"serving"})
    before = retained_payload(broker, topic)
    old = Desired.model_validate_json(before)
    assert old.models[0].samples is None

    sample = tmp_path / "sample.npz"
    np.savez(sample, x=np.ones((1, 16), np.float32))
    c.upload_sample("m", v1["version"], sample)
    signing_controller.stop()  # the next publish (a restart's) carries the samples, signed
    signing_controller.start()
    wait_until(lambda: Desired.model_validate_json(retained_payload(broker, topic)).models[0].samples, 20, "samples")
    new = Desired.model_validate_json(retained_payload(broker, topic))
    print(f"generation {old.generation} without samples, {new.generation} with them")
    assert new.generation > old.generation
    followed = agent.data_dir / "desired-generation.json"
    wait_until(lambda: json.loads(followed.read_text())["generation"] == new.generation, 20, "the new state followed")

    publish_retained(broker, topic, before)  # the older, validly signed state replayed
    wait_until(lambda: "replayed" in agent.log.read_text(), 20, "the replay refused")
    # the same content published again (fresh URLs and expiry only) keeps its generation
    assert signing_controller.bg.controller.fleet.publish_desired("dev1").generation == new.generation


def test_a_content_change_without_a_restart_moves_the_generation_on(
    signing_controller,  # noqa: F811
    start_agent,
    broker,
    prefix,
    signer,  # noqa: F811
    model_dir,
    tmp_path,
):
    """The controller keeps running: only the content changes (samples, then input shapes, through the API), and the
    republish a reconnect makes (publish_desired, as the link's on-connect does) carries it. The bump at the first
    publish after a start cannot be what moves the generation here; each older signed state is refused."""
    agent = start_agent("dev1", config=f'trusted_keys = ["{signer.public_key_b64}"]\n', wait_online=signing_controller)
    topic = Topics(prefix).device("dev1", "desired")
    c, fleet = signing_controller.client, signing_controller.bg.controller.fleet
    v1 = c.upload_model(mlp(model_dir / "gen2.onnx", seed=122), "m", None)
    c.deploy("m", v1["version"], ["dev1"])
    wait_model_state(signing_controller, "dev1", "m", v1["sha256"], {"serving"})
    states = [retained_payload(broker, topic)]
    sample = tmp_path / "sample.npz"
    np.savez(sample, x=np.ones((1, 16), np.float32))
    c.upload_sample("m", v1["version"], sample)
    for change in ("samples", "input shapes"):
        if change == "input shapes":
            c.set_input_shapes("m", v1["version"], ["x=1x16"])
        published = fleet.publish_desired("dev1")  # the same controller, no restart in between
        assert published.models[0].samples and (change == "samples" or published.models[0].input_shapes)
        wait_until(lambda p=published: retained_payload(broker, topic) == p.encode(), 10, f"the state with {change}")
        states.append(retained_payload(broker, topic))
    generations = [Desired.model_validate_json(s).generation for s in states]
    print(f"generations: before {generations[0]}, with samples {generations[1]}, with input shapes {generations[2]}")
    assert generations[0] < generations[1] < generations[2]
    followed = agent.data_dir / "desired-generation.json"
    wait_until(lambda: json.loads(followed.read_text())["generation"] == generations[2], 20, "the newest followed")

    for older in states[1::-1]:  # the samples' state (same controller run), then the first one, replayed
        refused = agent.log.read_text().count("replayed")
        publish_retained(broker, topic, older)
        wait_until(lambda n=refused: agent.log.read_text().count("replayed") > n, 20, "the replay refused")
    assert json.loads(followed.read_text())["generation"] == generations[2]
