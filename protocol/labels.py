"""Device labels: what an operator selects devices by. A device's own labels (the agent's `labels` config, sent in its
presence as `hardware.labels`), the measured ones the controller derives from its hardware probe (`arch`,
`accelerator`, `board`, `ram_gb`: its *hardware class*), and operator labels the controller keeps. Shared by the
agent (validating its config), the controller (selecting) and edgectl (parsing `KEY=VALUE`)."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

LABEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
MAX_LABELS = 64
MEASURED_KEYS = ("arch", "accelerator", "board", "ram_gb")  # the hardware class, in this order
_LABEL = re.compile(LABEL_PATTERN)


class LabelError(ValueError):
    """A label that cannot be used; the message names it and what is allowed."""


def check_label(key: str, value: str, *, own: bool = True) -> None:
    """LabelError unless key and value are 1-63 letters, digits, '_', '.', '-' (starting with a letter or digit); an
    own or operator label may not use a measured key (those are what the device measures itself)."""
    for part, text in (("key", key), ("value", value)):
        if not isinstance(text, str) or not _LABEL.match(text):
            raise LabelError(
                f"label {part} {text!r} is invalid: use 1-63 letters, digits, '_', '.' or '-', starting with a "
                "letter or digit (e.g. site=lab-3)"
            )
    if own and key in MEASURED_KEYS:
        raise LabelError(
            f"label key {key!r} is measured by the device from its hardware; pick another key (measured: "
            f"{', '.join(MEASURED_KEYS)})"
        )


def parse_label(text: str, *, own: bool = True) -> tuple[str, str]:
    """`KEY=VALUE` as (key, value); LabelError naming the text when it is not one."""
    key, sep, value = text.partition("=")
    if not sep:
        raise LabelError(f"label {text!r} is not KEY=VALUE (e.g. site=lab-3)")
    key, value = key.strip(), value.strip()
    check_label(key, value, own=own)
    return key, value


def parse_selector(items: Iterable[str]) -> dict[str, str]:
    """Repeated `KEY=VALUE` as one selector (all must hold); measured keys are allowed here."""
    selector: dict[str, str] = {}
    for item in items:
        key, value = parse_label(item, own=False)
        if key in selector and selector[key] != value:
            raise LabelError(f"selector names {key} twice ({selector[key]!r} and {value!r}): nothing can match both")
        selector[key] = value
    return selector


def slug(text: Any) -> str:
    """A free-text hardware field as a label value: lower case, runs of other characters as '-', at most 63."""
    value = re.sub(r"[^a-z0-9_.]+", "-", str(text).lower()).strip("-._")[:63].rstrip("-._")
    return value or "unknown"


def ram_class(memory_mb: Any) -> str:
    """Memory as a class: GiB rounded up to a power of two (a board with 7.6 GiB usable is an 8 GiB board)."""
    if not isinstance(memory_mb, (int, float)) or memory_mb <= 0:
        return "unknown"
    gib = memory_mb / 1024
    return str(max(1, 2 ** math.ceil(math.log2(gib * 0.98)))) if gib > 0.5 else "0.5"


def accelerator(hardware: Mapping[str, Any]) -> str:
    """What the device computes on besides its CPU, as the probe tells it (an explicit `accelerator` wins)."""
    if hardware.get("accelerator"):
        return slug(hardware["accelerator"])
    if hardware.get("jetson"):
        return "jetson-gpu"
    if hardware.get("nvidia_gpu"):
        return "cuda"
    if hardware.get("intel_npu"):
        return "intel-npu"
    if hardware.get("intel_gpu"):
        return "intel-gpu"
    return "cpu"


def measured_labels(hardware: Mapping[str, Any] | None) -> dict[str, str]:
    """The labels a device's hardware probe says: arch, accelerator, board, ram_gb (each "unknown" when absent)."""
    hw = hardware or {}
    board = hw.get("board") or hw.get("raspberry_pi") or ((hw.get("jetson") or {}).get("model")) or "generic"
    return {
        "arch": slug(hw.get("arch") or "unknown"),
        "accelerator": accelerator(hw),
        "board": slug(board),
        "ram_gb": ram_class(hw.get("memory_mb")),
    }


def hardware_class(measured: Mapping[str, str]) -> str:
    """The hardware class: the measured labels joined in a fixed order (`x86_64/cpu/generic/8`)."""
    return "/".join(measured.get(k, "unknown") for k in MEASURED_KEYS)


def own_labels(hardware: Mapping[str, Any] | None) -> dict[str, str]:
    """The device's own labels as its presence carried them; invalid ones are dropped (an old or odd agent must
    not make the device unselectable)."""
    found = (hardware or {}).get("labels")
    if not isinstance(found, Mapping):
        return {}
    kept: dict[str, str] = {}
    for key, value in list(found.items())[:MAX_LABELS]:
        try:
            check_label(key, value)
        except LabelError:
            continue
        kept[key] = value
    return kept


def matches(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    """Every KEY=VALUE of the selector holds (an empty selector matches every device)."""
    return all(labels.get(k) == v for k, v in selector.items())
