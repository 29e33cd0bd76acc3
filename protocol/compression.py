"""When an artifact travels zstd-compressed: one policy for the controller's copies and the converters' reports."""

from __future__ import annotations

ZSTD_LEVEL = 3  # compressed transfer: the controller's copies and the converters' reported transfer sizes
# An artifact travels zstd-compressed only when that saves at least this share. Dense float weights shrink ~7.5%, and
# on a LAN decompressing costs more than those bytes: bench/e2e.py measured a 50 MB model at 95 MiB/s compressed
# against ~200 MiB/s raw. Pruned and sparse models shrink 35-70%.
ZSTD_MIN_SAVING = 0.10


def worth_compressing(raw_bytes: int, compressed_bytes: int | None) -> bool:
    """Whether the compressed copy saves at least ZSTD_MIN_SAVING of the raw size."""
    return compressed_bytes is not None and compressed_bytes <= (1 - ZSTD_MIN_SAVING) * raw_bytes
