"""Versions and size limits of the wire contract: a message over its limit is dropped with a log line, never parsed."""

from __future__ import annotations

SCHEMA_VERSION = 1
TOPIC_VERSION = "v1"
DEFAULT_PREFIX = "edge"

MAX_JSON_BYTES = 1 << 20  # control messages (presence, state, desired, rpc)
MAX_CHUNK_BYTES = 4 << 20  # one artifact chunk's payload
MAX_SAMPLES_BYTES = 64 << 20  # the representative inputs given with one model version, packed
MAX_SAMPLES = 64

DEFAULT_CHUNK_BYTES = 2 << 20
MAX_FRAME_HEADER_BYTES = 16 << 10
# the largest message of the protocol on the wire (an artifact chunk frame: prefix, header, payload); what a broker's
# message_size_limit is set to (`edge-controller broker-config`)
MAX_MESSAGE_BYTES = MAX_CHUNK_BYTES + MAX_FRAME_HEADER_BYTES + 64
