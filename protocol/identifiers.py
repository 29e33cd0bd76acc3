"""What a device id, model name and sha256 may look like: each is safe as one MQTT topic level and a file name."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field

DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"
_DEVICE_ID_RE = re.compile(DEVICE_ID_PATTERN)
MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"
SHA256_PATTERN = r"^[0-9a-f]{64}$"

DeviceId = Annotated[str, Field(pattern=DEVICE_ID_PATTERN)]
ModelName = Annotated[str, Field(pattern=MODEL_NAME_PATTERN)]
Sha256 = Annotated[str, Field(pattern=SHA256_PATTERN)]


def valid_device_id(device_id: str) -> bool:
    """True when the id is safe as one MQTT topic level and a file name."""
    return bool(_DEVICE_ID_RE.match(device_id))
