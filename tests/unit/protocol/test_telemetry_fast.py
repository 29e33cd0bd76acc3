"""The controller's fast telemetry decoder (msgspec) against the contract's pydantic model: on realistic samples and
on thousands of mutated ones, it accepts exactly what the pydantic model accepts, and what it stores reads back as
the same message (a looser fast path would let through what the contract refuses)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import ProtocolError, Telemetry, decode
from protocol.telemetry_fast import decode_telemetry, encode_telemetry, plain


def sample() -> dict[str, Any]:
    """A full sample: two models (one with output statistics and classes), every resource field."""
    return {
        "v": 1,
        "ts": 1_700_000_000.5,
        "kind": "telemetry",
        "device_id": "cam-01.a_b",
        "seq": 41,
        "start": 1_699_999_990.5,
        "interval_s": 10.0,
        "dropped": 2,
        "models": [
            {
                "name": "detector",
                "version": "3",
                "requests": 200,
                "errors": 1,
                "latency": [[17, 2], [18, 7], [25, 190], [39, 1]],
                "latency_sum_ms": 620.25,
                "latency_max_ms": 10.6,
                "outputs": {
                    "scores": {
                        "sampled": 20,
                        "count": 20000,
                        "mean": 0.25,
                        "std": 0.1,
                        "min": -1.5,
                        "max": 3.0,
                        "nan": 0,
                        "inf": 3,
                        "classes": {"cat": 12, "dog": 8},
                        "class_counts": [[0, 12], [7, 8]],
                        "scores": "probabilities",
                        "top1_mean": 0.91,
                        "elements": {"rows": 20, "mean": [0.25, 0.75], "std": [0.1, 0.1]},
                        "top1_hist": [0, 0, 0, 0, 0, 1, 2, 3, 4, 10],
                    }
                },
                "inputs": {
                    "x": {
                        "sampled": 20,
                        "elements": {"rows": 20, "blocks": True, "mean": [0.5, -1.0], "std": [1.0, 2.5]},
                        "level": [[-0.5, 10.0], [0.5, 10.0]],
                        "spread": [[1.0, 20.0]],
                    }
                },
            },
            {"name": "ocr", "version": "2024-01", "latency": []},
        ],
        "resources": {
            "cpu_percent": 23.5,
            "cpu_per_core": [20.0, 27.0],
            "load1": 0.8,
            "mem_percent": 41.0,
            "mem_used_mb": 812.0,
            "rss_mb": 120.0,
            "disk_free_mb": 20480.0,
            "temperature_c": 61.5,
            "temperatures": {"cpu-thermal": 61.5, "gpu": 55},
            "net_rx_bytes": 1024,
            "net_tx_bytes": 4096,
            "gpu_load_percent": 12.0,
            "gpu_power_w": 4.5,
        },
    }


def outcome(payload: bytes, decoder: Any) -> tuple[str, Any]:
    try:
        return "ok", decoder(payload)
    except ProtocolError as exc:
        return "refused", str(exc)


def assert_same(payload: bytes) -> None:
    fast_kind, fast = outcome(payload, decode_telemetry)
    slow_kind, slow = outcome(payload, lambda p: decode(Telemetry, p))
    assert fast_kind == slow_kind, (payload, fast, slow)
    if fast_kind == "refused":
        assert fast == slow  # the operator reads the same reason either way
        return
    stored = Telemetry.model_validate_json(encode_telemetry(fast))
    if b'"ts"' not in payload:  # both filled in "now", a moment apart
        stored.ts = slow.ts
    assert stored == slow
    assert plain(fast.resources) == (slow.resources.model_dump(exclude_none=True) if slow.resources else {})
    for fast_model, slow_model in zip(fast.models, slow.models, strict=True):
        for name, stats in fast_model.outputs.items():
            assert plain(stats) == slow_model.outputs[name].model_dump(exclude_none=True)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into a JSON value (dict keys and list indexes)."""
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, inner in value.items():
            found += paths(inner, (*prefix, key))
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            found += paths(inner, (*prefix, index))
    return found


ODD_STRINGS = ["", "5", "1.5", "abc\n", "a\x00b", "x" * 129, "x" * 65, "telemetry", "NaN", "ünï", "cam 01", "-1"]
ODD_NUMBERS = [0, -1, 1, 5.0, 5.5, -0.0, 39, 40, 1e308, -1e308, 2**63 - 1, 2**63, 2**64, 10**30, 1e-320]
odd_values = st.sampled_from([None, True, False, *ODD_NUMBERS, *ODD_STRINGS])
json_values = st.recursive(
    odd_values  # the edges, most often
    | odd_values
    | odd_values
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(ODD_STRINGS + ["count"]), inner, max_size=3)
    ),
    max_leaves=6,
)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    message = sample()
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(paths(message)))
        parent = message
        for step in where[:-1]:
            parent = parent[step]
        action = draw(st.sampled_from(["replace", "delete", "extra"]))
        if action == "delete":
            del parent[where[-1]]
        elif action == "extra" and isinstance(parent, dict):
            parent[draw(st.sampled_from(["unknown", "x" * 200, "count"]))] = draw(json_values)
        else:
            parent[where[-1]] = draw(json_values)
    return json.dumps(message).encode()


def test_realistic_samples_are_read_alike() -> None:
    message = sample()
    assert_same(json.dumps(message).encode())
    bare = {"device_id": "d1", "ts": 5}
    assert_same(json.dumps(bare).encode())
    assert_same(json.dumps(copy.deepcopy(message) | {"future_field": {"nested": [1, 2]}}).encode())


@pytest.mark.parametrize(
    "change",
    [
        lambda m: m["models"][0].update(name="detector\n"),  # `$` in msgspec's re.search would let this through
        lambda m: m["resources"].update(cpu_percent=10**400),  # an infinity spelled as a number
        lambda m: m["models"][0].update(requests="5"),  # pydantic's lax mode takes it: the fallback keeps that
        lambda m: m["models"][0].update(latency=[[40, 1]]),  # bucket out of range
        lambda m: m.update(device_id="../etc"),
        lambda m: m.update(v=2),
        lambda m: m.update(kind="state"),
        lambda m: m["models"][0]["outputs"]["scores"].update(classes={f"c{i}": 1 for i in range(34)}),
        lambda m: m["models"][0]["outputs"]["scores"].update(class_counts=[[i, 1] for i in range(1024)]),
        lambda m: m["models"][0]["outputs"]["scores"].update(class_counts=[[i, 1] for i in range(1025)]),
        lambda m: m["models"][0]["outputs"]["scores"].update(class_counts=[[1024, 1]]),  # an index past the cap
        lambda m: m["models"][0]["outputs"]["scores"].update(class_counts=[[-1, 1]]),
        lambda m: m["models"][0]["outputs"]["scores"].update(scores="declared"),
        lambda m: m["models"][0]["outputs"]["scores"].update(scores="softmax"),  # not one of the three
        lambda m: m.update(models=[m["models"][1]] * 33),
        lambda m: m["models"][0].update(version="v" * 65),
        lambda m: m.update(seq=True),
        lambda m: m.update(seq=2**63),  # past a signed 64-bit column
    ],
)
def test_edges_of_the_contract(change: Any) -> None:
    message = sample()
    change(message)
    assert_same(json.dumps(message).encode())


def test_lax_values_are_stored_as_the_contract_reads_them() -> None:
    message = sample()
    message["models"][0]["requests"] = "5"
    stored = json.loads(encode_telemetry(decode_telemetry(json.dumps(message).encode())))
    assert stored["models"][0]["requests"] == 5


def test_not_json_and_too_big_are_refused_with_a_reason() -> None:
    with pytest.raises(ProtocolError, match="invalid Telemetry"):
        decode_telemetry(b"{not json")
    with pytest.raises(ProtocolError, match="exceeds"):
        decode_telemetry(b" " * (2 << 20))


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_samples_are_read_alike(payload: bytes) -> None:
    assert_same(payload)


def test_every_class_by_index_and_what_the_rows_were_are_read_and_bounded() -> None:
    """Issue 30 (G1, G2): `class_counts` (every class seen, by index, at most 1,024) and `scores` (probabilities,
    logits, declared) are optional OutputStats fields both decoders read alike and bound alike."""
    message = sample()
    stats = decode_telemetry(json.dumps(message).encode()).models[0].outputs["scores"]
    assert stats.class_counts == [(0, 12), (7, 8)] and stats.scores == "probabilities"
    del message["models"][0]["outputs"]["scores"]["class_counts"], message["models"][0]["outputs"]["scores"]["scores"]
    stats = decode_telemetry(json.dumps(message).encode()).models[0].outputs["scores"]  # an older agent's
    assert stats.class_counts is None and stats.scores is None
    for field, bad in (
        ("class_counts", [[i, 1] for i in range(1025)]),
        ("class_counts", [[1024, 1]]),
        ("scores", "softmax"),
    ):
        message = sample()
        message["models"][0]["outputs"]["scores"][field] = bad
        with pytest.raises(ProtocolError, match="invalid Telemetry"):
            decode_telemetry(json.dumps(message).encode())
