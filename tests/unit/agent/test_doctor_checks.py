"""The doctor's local checks in process (agent.doctor): a data directory it cannot write fails with a fix, the free
space is reported, and a clock far in the past fails (`edge-agent doctor` as a process: tests/integration)."""

from __future__ import annotations

import datetime as dt
import os

from agent.doctor import check_clock, check_data_dir


def test_data_dir_not_writable_and_clock(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        writable, space = check_data_dir(locked / "data")
        if os.geteuid() != 0:  # root writes anywhere
            assert writable.outcome == "fail" and writable.fix
        assert space.outcome in ("ok", "warn", "fail") and "GiB free" in space.detail
    finally:
        locked.chmod(0o700)
    assert check_data_dir(tmp_path)[0].outcome == "ok"
    assert check_clock(dt.datetime(2001, 1, 1, tzinfo=dt.timezone.utc)).outcome == "fail"
    assert check_clock().outcome == "ok"
