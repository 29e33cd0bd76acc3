"""`edge-agent`: run the agent daemon, or print the hardware probe."""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Annotated

import typer

from agent.config import ENV_CONFIG, ConfigError, load_config
from agent.logs import setup_logging

EX_CONFIG = 78  # sysexits.h: the unit does not restart on it
READY_GRACE_S = 20.0  # with no model on disk and no broker, report READY anyway (the API is up, MQTT retries)
TICK_S = 1.0

log = logging.getLogger("agent")

app = typer.Typer(
    help="Edge agent: pulls models from the controller over MQTT and serves them locally.", add_completion=False
)


@app.command()
def run(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", envvar=ENV_CONFIG, help="TOML config file; flags override it.")
    ] = None,
    broker: Annotated[str | None, typer.Option(help="Broker URL, mqtt://HOST:PORT or mqtts://HOST:PORT.")] = None,
    device_id: Annotated[str | None, typer.Option(help="This device's id (default: hostname).")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Where models and state live.")] = None,
    api: Annotated[str | None, typer.Option(help="HOST:PORT of the local v2 inference API.")] = None,
    backend: Annotated[str | None, typer.Option(help="Force a backend instead of choosing one.")] = None,
    mqtt_protocol: Annotated[str | None, typer.Option(help="auto, 5 or 3.1.1.")] = None,
    log_level: Annotated[str | None, typer.Option(help="DEBUG, INFO, WARNING or ERROR.")] = None,
) -> None:
    """Run the agent until SIGTERM/SIGINT. Serves models already on disk before the broker answers."""
    overrides = {
        "broker": broker,
        "device_id": device_id,
        "data_dir": data_dir,
        "api": api,
        "backend": backend,
        "mqtt_protocol": mqtt_protocol,
        "log_level": log_level,
    }
    try:
        cfg = load_config(config, overrides)
    except ConfigError as exc:
        typer.echo(f"edge-agent: {exc}", err=True)
        raise typer.Exit(EX_CONFIG) from None
    setup_logging(cfg.log_level)
    from agent.service import Agent
    from agent.systemd_notify import Notifier

    notifier = Notifier()
    agent = Agent(cfg, notifier)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        agent.start()
    except OSError as exc:
        typer.echo(f"edge-agent: {exc}", err=True)
        raise typer.Exit(1) from None
    supervise(agent, notifier, stop)
    notifier.stopping("stopping: finishing in-flight inferences")
    agent.stop()
    notifier.close()


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


@app.command()
def doctor(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", envvar=ENV_CONFIG, help="TOML config file to check.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds for each network check.")] = 5.0,
) -> None:
    """Check the config, the broker (TCP, then MQTT CONNACK), the data directory, the runtimes and the clock."""
    from agent.doctor import as_dicts, failed, render, run_checks

    checks = run_checks(config, timeout=timeout)
    if as_json:
        typer.echo(json.dumps({"ok": not failed(checks), "checks": as_dicts(checks)}, indent=2))
    else:
        typer.echo(render(checks))
    if failed(checks):
        raise typer.Exit(1)


@app.command()
def probe(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    root: Annotated[Path, typer.Option(help="Filesystem root to read /proc, /sys, /etc from.")] = Path("/"),
) -> None:
    """Print what this device is and which runtimes it can use."""
    from targets.probe import probe as run_probe

    result = run_probe(root)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    for key, value in result.items():
        typer.echo(f"{key:>10}: {value}")


def main() -> None:
    app(prog_name="edge-agent")


if __name__ == "__main__":
    sys.exit(main())
