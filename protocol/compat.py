"""What Python 3.10+ added that the agent's packages use, kept here so the agent also runs on 3.9 devices
(Raspberry Pi OS bullseye ships 3.9, JetPack 6 ships 3.10)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeVar

A = TypeVar("A")
B = TypeVar("B")


def zip_strict(first: Sequence[A], second: Sequence[B]) -> Iterator[tuple[A, B]]:
    """`zip(first, second, strict=True)` of 3.10+: pairs of two sequences that must be of one length."""
    if len(first) != len(second):
        raise ValueError(f"zip_strict: lengths differ ({len(first)} != {len(second)})")
    return zip(first, second)
