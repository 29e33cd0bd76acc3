"""sd_notify on its own (daemon.systemd_notify.Notifier): a no-op outside systemd, READY/STATUS/WATCHDOG/STOPPING on a
real path or abstract socket, and the watchdog interval only for this process (from a real agent: tests/integration)."""

from __future__ import annotations

import os

from conftest import wait_until

from daemon.systemd_notify import Notifier


def test_notifier_is_a_no_op_outside_systemd():
    notifier = Notifier({})
    assert not notifier.enabled and notifier.watchdog_interval is None
    assert notifier.ready("x") is False and notifier.watchdog() is False and notifier.stopping() is False


def test_notifier_path_and_abstract_sockets_and_watchdog_interval(notify_socket):
    for abstract in (False, True):
        sink = notify_socket(abstract)
        notifier = Notifier({"NOTIFY_SOCKET": sink.env_value, "WATCHDOG_USEC": "30000000"})
        assert notifier.watchdog_interval == 15.0
        assert notifier.ready("starting") and notifier.watchdog()
        assert notifier.status("starting") is False  # unchanged: not sent again
        assert notifier.status("serving 1 model")
        assert notifier.stopping()
        wait_until(lambda s=sink: s.count("STOPPING=1"), 5, "notifications")
        assert sink.lines() == ["READY=1", "STATUS=starting", "WATCHDOG=1", "STATUS=serving 1 model", "STOPPING=1"]
        notifier.close()


def test_watchdog_usec_for_another_pid_is_ignored():
    assert Notifier({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}).watchdog_usec is None
    assert Notifier({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}).watchdog_interval == 1.0
    assert Notifier({"WATCHDOG_USEC": "junk"}).watchdog_usec is None
    assert Notifier({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled is False
