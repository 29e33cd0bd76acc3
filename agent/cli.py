"""`edge-agent`: run the agent daemon, check the device (`doctor`), or print the hardware probe. argparse, not typer:
the agent stays small on the device (typer and click cost ~5 MiB of resident memory for three commands)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from agent import __version__
from agent.config import ENV_CONFIG, ConfigError, load_config
from daemon.logs import setup_logging
from protocol.labels import LabelError, parse_label

EX_CONFIG = 78  # sysexits.h: the unit does not restart on it
READY_GRACE_S = 20.0  # with no model on disk and no broker, report READY anyway (the API is up, MQTT retries)
TICK_S = 1.0

log = logging.getLogger("agent")
LABELS = {  # config key -> what to give it, as its help shows (argparse would say DATA_DIR, PASSWORD_FILE)
    "broker": "URL",
    "password_file": "FILE",
    "device_id": "ID",
    "data_dir": "DIR",
    "api": "HOST:PORT",
    "grpc": "HOST:PORT",
    "backend": "BACKEND",
    "mqtt_protocol": "VERSION",
    "topic_prefix": "PREFIX",
    "log_level": "LEVEL",
}
RUN_FLAGS = {  # flag -> (config key, help)
    "--broker": ("broker", "Broker URL, mqtt://HOST:PORT or mqtts://HOST:PORT."),
    "--broker-password-file": ("password_file", "File holding the broker password (kept out of configs and logs)."),
    "--device-id": ("device_id", "This device's id (default: hostname)."),
    "--data-dir": ("data_dir", "Where models and state live."),
    "--api": ("api", "HOST:PORT of the local v2 inference API."),
    "--grpc": (
        "grpc",
        "HOST:PORT of the v2 inference API over gRPC (KServe v2; needs the `grpc` extra); off by default.",
    ),
    "--backend": ("backend", "Force a backend instead of choosing one."),
    "--mqtt-protocol": ("mqtt_protocol", "auto, 5 or 3.1.1."),
    "--topic-prefix": ("topic_prefix", "Topic prefix shared with the controller (default: edge)."),
    "--log-level": ("log_level", "DEBUG, INFO, WARNING or ERROR."),
}


def run(args: argparse.Namespace) -> int:
    """Run the agent until SIGTERM/SIGINT. Serves models already on disk before the broker answers."""
    overrides = {key: getattr(args, key) for key, _ in RUN_FLAGS.values()}
    if args.insecure:
        overrides["insecure"] = True
    try:
        if args.labels:
            overrides["labels"] = dict(parse_label(item) for item in args.labels)
        cfg = load_config(args.config, overrides)
    except LabelError as exc:
        print(f"edge-agent: invalid --label: {exc}", file=sys.stderr)
        return EX_CONFIG
    except ConfigError as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return EX_CONFIG
    exposed = cfg.exposure_problem()
    if exposed:
        print(f"edge-agent: {exposed}", file=sys.stderr)
        return EX_CONFIG
    setup_logging(cfg.log_level)
    if cfg.insecure and cfg.api_token_file is None:
        log.warning("INSECURE: the inference API on %s has no token (--insecure)", cfg.api)
    problem = data_dir_problem(Path(cfg.data_dir))
    if problem:
        print(f"edge-agent: {problem}", file=sys.stderr)
        return EX_CONFIG
    from agent.service import Agent
    from daemon.systemd_notify import Notifier
    from targets.footprint import pin_allocator

    pin_allocator()  # before the first load: the trial worker's footprints are taken with the same allocator setting

    notifier = Notifier()
    try:
        agent = Agent(cfg, notifier)
    except OSError as exc:  # a file under data_dir or a TLS file it could not open: name it, no traceback
        if debugging():
            raise
        print(f"edge-agent: cannot start: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return EX_CONFIG
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        agent.start()
    except OSError as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return 1
    supervise(agent, notifier, stop)
    notifier.stopping("stopping: finishing in-flight inferences")
    agent.stop()
    notifier.close()
    return 0


def debugging() -> bool:
    """EDGE_DEBUG=1: a start-up failure shows its traceback instead of one line."""
    return os.environ.get("EDGE_DEBUG", "").strip().lower() in ("1", "true", "yes")


def data_dir_problem(data_dir: Path) -> str | None:
    """Why the agent cannot keep its models in `data_dir` (one line naming the setting), or None."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        return (
            f"data_dir {data_dir}: cannot create it ({reason}); give a writable directory with --data-dir or data_dir"
        )
    if not os.access(data_dir, os.W_OK | os.X_OK):
        return f"data_dir {data_dir}: not writable by this user; give a writable directory with --data-dir or data_dir"
    return None


def supervise(agent, notifier, stop: threading.Event) -> None:
    """The main loop until `stop`: STATUS= when it changes, READY=1 after a grace period at the latest, and
    WATCHDOG=1 only while the agent's threads are alive and its state lock is free, so a stalled agent is restarted.
    """
    interval = notifier.watchdog_interval
    tick = min(TICK_S, interval) if interval else TICK_S
    started, last_ping = time.monotonic(), float("-inf")
    reported: str | None = None
    while not stop.is_set():
        problem = agent.health()
        now = time.monotonic()
        if not agent.ready_sent and now - started >= READY_GRACE_S:
            agent.mark_ready()
        if problem is None:
            notifier.status(agent.status_line())
            if interval and now - last_ping >= interval - tick / 2:
                notifier.watchdog()
                last_ping = now
            reported = None
        elif problem != reported:
            log.error("agent stalled: %s; no watchdog ping (systemd restarts it)", problem)
            notifier.status(f"stalled: {problem}")
            reported = problem
        stop.wait(tick)


def doctor(args: argparse.Namespace) -> int:
    """Check the config, the broker (TCP, then MQTT CONNACK), the data directory, the runtimes and the clock."""
    from agent.doctor import as_dicts, failed, render, run_checks

    overrides = {key: getattr(args, key) for key, _ in RUN_FLAGS.values()}
    checks = run_checks(args.config, timeout=args.timeout, overrides=overrides)
    if args.json:
        print(json.dumps({"ok": not failed(checks), "checks": as_dicts(checks)}, indent=2))
    else:
        print(render(checks))
    return 1 if failed(checks) else 0


def probe(args: argparse.Namespace) -> int:
    """Print what this device is and which runtimes it can use."""
    from targets.probe import probe as run_probe

    result = run_probe(args.root)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    for key, value in result.items():
        print(f"{key:>10}: {value}")
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="edge-agent", description="Edge agent: pulls models from the controller over MQTT and serves them locally."
    )
    root.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    config_help = f"TOML config file; flags override it (or {ENV_CONFIG})."
    run_cmd = commands.add_parser("run", help=run.__doc__, description=run.__doc__)
    run_cmd.add_argument("--config", "-c", type=Path, metavar="FILE", help=config_help)
    for flag, (key, text) in RUN_FLAGS.items():
        run_cmd.add_argument(flag, dest=key, type=Path if key == "data_dir" else str, metavar=LABELS[key], help=text)
    run_cmd.add_argument(
        "--label", dest="labels", action="append", metavar="KEY=VALUE",
        help="A label of this device (repeatable; added to `labels` in the config file).",
    )  # fmt: skip
    run_cmd.add_argument(
        "--insecure", action="store_true",
        help="Serve the inference API off loopback without api_token_file (anyone who reaches it may use it).",
    )  # fmt: skip
    run_cmd.set_defaults(handler=run)
    doctor_cmd = commands.add_parser("doctor", help=doctor.__doc__, description=doctor.__doc__)
    doctor_cmd.add_argument(
        "--config", "-c", type=Path, metavar="FILE", help=f"TOML config file to check (or {ENV_CONFIG})."
    )
    for flag, (key, text) in RUN_FLAGS.items():  # the same flags as `run`: check what it would use
        doctor_cmd.add_argument(flag, dest=key, type=Path if key == "data_dir" else str, metavar=LABELS[key], help=text)
    doctor_cmd.add_argument("--json", action="store_true", help="Machine-readable output.")
    doctor_cmd.add_argument(
        "--timeout", type=float, default=5.0, metavar="SECONDS", help="Seconds for each network check (default 5)."
    )
    doctor_cmd.set_defaults(handler=doctor)
    probe_cmd = commands.add_parser("probe", help=probe.__doc__, description=probe.__doc__)
    probe_cmd.add_argument("--json", action="store_true", help="Machine-readable output.")
    probe_cmd.add_argument(
        "--root", type=Path, default=Path("/"), metavar="DIR", help="Filesystem root to read /proc, /sys, /etc."
    )
    probe_cmd.set_defaults(handler=probe)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if getattr(args, "config", None) is None and os.environ.get(ENV_CONFIG):
        args.config = Path(os.environ[ENV_CONFIG])
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
