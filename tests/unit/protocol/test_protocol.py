"""The wire contract: topics, schema versions, size limits and chunk framing; the link's broker address and its
wait after a refused connection."""

from __future__ import annotations

import pytest

from protocol import (
    MAX_JSON_BYTES,
    ChunkHeader,
    Desired,
    DesiredModel,
    Presence,
    ProtocolError,
    SampleRef,
    Topics,
    VariantRef,
    decode,
    decode_frame,
    encode_frame,
)
from protocol.link import BrokerAddress, refusal_backoff


def test_topics_round_trip_and_reject_wildcards():
    t = Topics("fleet/a")
    assert t.device("cam-1", "rpc/request") == "fleet/a/v1/devices/cam-1/rpc/request"
    assert t.parse("fleet/a/v1/devices/cam-1/rpc/request") == ("cam-1", "rpc/request")
    assert t.parse("fleet/a/v1/devices/cam-1/unknown") is None
    assert t.parse("other/v1/devices/cam-1/state") is None
    for bad in ("a/b", "+", "#", "", "x" * 65):
        with pytest.raises(ValueError):
            t.device(bad, "state")
    with pytest.raises(ValueError):
        Topics("bad/+/prefix")


def test_decode_checks_schema_version_and_size():
    msg = Presence(device_id="d1", online=True, hardware={"arch": "x86_64"})
    assert decode(Presence, msg.encode()).hardware == {"arch": "x86_64"}
    with pytest.raises(ProtocolError, match="newer than supported"):
        decode(Presence, Presence(device_id="d1", online=True, v=2).encode())
    with pytest.raises(ProtocolError, match="exceeds"):
        decode(Presence, b" " * (MAX_JSON_BYTES + 1))
    with pytest.raises(ProtocolError, match="device_id"):
        decode(Presence, b'{"device_id": "a/b", "online": true}')
    # unknown fields are ignored (forward compatible), missing required ones are not
    assert decode(Desired, b'{"device_id": "d", "future_field": 1}').models == []
    with pytest.raises(ProtocolError):
        decode(Desired, b'{"models": []}')


def test_desired_state_allows_its_models_variants_and_samples():
    def digest(c: str) -> str:
        return c * 64

    desired = decode(
        Desired,
        Desired(
            device_id="cam-1",
            models=[
                DesiredModel(
                    name="det",
                    version="2",
                    sha256=digest("a"),
                    size=10,
                    variants=[VariantRef(variant="int8", sha256=digest("b"), size=5)],
                    samples=SampleRef(sha256=digest("c"), size=8, count=2),
                    url="http://controller/a",
                ),
                DesiredModel(name="cls", version="1", sha256=digest("d"), size=3),
            ],
        ).encode(),
    )
    assert desired.artifacts() == {digest("a"), digest("b"), digest("c"), digest("d")}
    assert desired.models[1].artifacts() == {digest("d")}
    assert Desired(device_id="cam-1").artifacts() == set()


def test_frames_round_trip_and_reject_lies():
    header = ChunkHeader(request_id="r1", sha256="a" * 64, offset=4, length=3, total=7)
    parsed, data = decode_frame(encode_frame(header, b"xyz"))
    assert parsed == header and bytes(data) == b"xyz"
    with pytest.raises(ProtocolError, match="header says"):
        decode_frame(encode_frame(header, b"toolong"))
    with pytest.raises(ProtocolError, match="magic"):
        decode_frame(b"ZZ\x01" + encode_frame(header, b"xyz")[3:])
    with pytest.raises(ProtocolError):
        decode_frame(b"EF")
    with pytest.raises(ProtocolError, match="out of bounds"):
        decode_frame(b"EF\x01\xff\xff\xff\xff{}")


@pytest.mark.parametrize(
    "url, expected",
    [
        ("mqtt://h:1884", ("h", 1884, False, None)),
        ("mqtts://u:p%40ss@h", ("h", 8883, True, "u")),
        ("localhost", ("localhost", 1883, False, None)),
    ],
)
def test_broker_address(url, expected):
    a = BrokerAddress.parse(url)
    assert (a.host, a.port, a.tls, a.username) == expected
    if a.username:
        assert a.password == "p@ss"


@pytest.mark.parametrize("url", ["http://h", "mqtt://", "mqtt://h:notaport"])
def test_broker_address_rejects(url):
    with pytest.raises(ValueError):
        BrokerAddress.parse(url)


def test_the_wait_doubles_up_to_a_minute():
    assert [refusal_backoff(n, 1.0) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert refusal_backoff(1, 0.7) == 0.7
