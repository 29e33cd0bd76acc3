"""A Jetson's GPU (nvmap) memory in the footprint (targets/gpu_memory.py, targets/footprint.py's Meter), on a copy of
the jetson-orin fixture tree's nvmap clients table (sys/kernel/debug/nvmap/iovmm/clients, as L4T's nvmap_debug.c
writes it). No Jetson here: verified on fixture trees only."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from targets import gpu_memory
from targets.footprint import Footprint, Meter
from targets.gpu_memory import CLIENTS, nvmap_bytes, parse_clients

FIXTURES = Path(__file__).parents[2] / "fixtures" / "probe"
KIB = 1024


def jetson_copy(tmp_path: Path) -> Path:
    root = tmp_path / "jetson-orin"
    shutil.copytree(FIXTURES / "jetson-orin", root)
    return root


def with_own_client(root: Path, *sizes_k: int) -> None:
    """The fixture's table with this process as a client (one line per size), before its `total` line."""
    lines = (FIXTURES / "jetson-orin" / CLIENTS).read_text().splitlines()
    own = [f"{'user':<18} {'python3':>18} {os.getpid():>8} {size:>10}K" for size in sizes_k]
    (root / CLIENTS).write_text("\n".join(lines[:-1] + own + lines[-1:]) + "\n")


def test_a_process_total_is_the_sum_of_its_clients():
    root = FIXTURES / "jetson-orin"
    assert nvmap_bytes(4242, root) == (183296 + 2048) * KIB  # two clients (python3 opened /dev/nvmap twice)
    assert nvmap_bytes("5120", root) == 412672 * KIB
    assert nvmap_bytes(3100, root) == 0  # a client holding nothing yet
    assert nvmap_bytes(99999, root) == 0  # readable, but no client: no GPU memory, which is a figure


def test_the_process_name_may_hold_spaces_and_the_total_line_is_no_client():
    text = "CLIENT PROCESS PID SIZE\nuser   my app   77   2048K\ntotal          77K\n"
    assert parse_clients(text, 77) == 2048 * KIB


def test_absent_or_unreadable_is_none(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="targets.gpu_memory")
    assert nvmap_bytes(4242, FIXTURES / "intel-nuc") is None  # not a Jetson: nothing said
    assert not caplog.records
    root = jetson_copy(tmp_path)
    (root / CLIENTS).unlink()
    assert nvmap_bytes(4242, root) is None
    assert nvmap_bytes(4242, root) is None
    assert len(caplog.records) == 1  # a Jetson without the table: one INFO line, once
    assert "not in model footprints" in caplog.text and str(root / CLIENTS) in caplog.text


def test_root_only_debugfs_is_none_and_says_why(tmp_path, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="targets.gpu_memory")
    root = jetson_copy(tmp_path)
    refused = root / CLIENTS
    real = Path.read_text

    def read_text(path: Path, *args: object, **kwargs: object) -> str:
        if path == refused:  # as an agent running as its own user finds /sys/kernel/debug (root's, mode 0700)
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "read_text", read_text)
    assert nvmap_bytes(4242, root) is None
    assert "debugfs is readable by root only" in caplog.text


def test_the_meter_reports_the_gpu_memory_a_load_grew(tmp_path):
    root = jetson_copy(tmp_path)
    with_own_client(root, 1024)  # the runtime's context, before the model
    meter = Meter(root)
    meter.start()
    with_own_client(root, 1024, 50 * 1024 + 512)  # the model's engine: 50.5 MiB through a second client
    footprint = meter.stop()
    assert footprint.unified_mb == 50.5
    assert footprint.rss_mb is not None and footprint.peak_mb is not None  # resident figures as before


def test_no_gpu_memory_before_the_runtime_opened_nvmap_counts_from_zero(tmp_path):
    root = jetson_copy(tmp_path)  # this process is no client yet: 0, not unknown
    meter = Meter(root)
    meter.start()
    with_own_client(root, 8 * 1024)
    assert meter.stop().unified_mb == 8.0


def test_without_the_table_the_footprint_is_resident_memory_only(tmp_path):
    meter = Meter(FIXTURES / "intel-nuc")
    meter.start()
    footprint = meter.stop()
    assert footprint.unified_mb is None and footprint.rss_mb is not None
    assert Footprint().unified_mb is None  # the default, where nothing is read


def test_the_explanation_is_once_per_root(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="targets.gpu_memory")
    gpu_memory._explained.discard(tmp_path / "jetson-orin")
    root = jetson_copy(tmp_path)
    (root / CLIENTS).unlink()
    for _ in range(3):
        Meter(root).start()
    assert sum("not in model footprints" in r.getMessage() for r in caplog.records) == 1
