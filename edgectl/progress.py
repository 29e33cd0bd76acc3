"""Uploads and deployments followed with progress bars on stderr, and each device's outcome printed at the end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.progress import BarColumn, DownloadColumn, Progress, TaskProgressColumn, TextColumn, TransferSpeedColumn

from edgectl.client import ControllerClient
from edgectl.errors import CommandFailed
from edgectl.output import console, emit_json, errors
from edgectl.watch import DeviceOutcome, wait_serving


def upload_with_progress(client: ControllerClient, model: Path, name: str, version: str | None, quiet: bool) -> dict:
    size = model.stat().st_size
    columns = (TextColumn("upload {task.fields[label]}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=errors, disable=quiet, transient=True) as progress:
        task = progress.add_task("upload", total=size, label=model.name)
        return client.upload_model(model, name, version, lambda n: progress.advance(task, n))


def watch_with_progress(
    client: ControllerClient,
    devices: list[str],
    name: str,
    sha256: str,
    timeout: float,
    quiet: bool,
    attempts: dict[str, int] | None = None,
) -> dict[str, DeviceOutcome]:
    columns = (TextColumn("{task.fields[device]:<20} {task.fields[state]:<12}"), BarColumn(), TaskProgressColumn())
    with Progress(*columns, console=errors, disable=quiet, transient=True) as progress:
        tasks = {d: progress.add_task(d, total=1.0, device=d, state="pending") for d in devices}

        def update(outcome: DeviceOutcome) -> None:
            done = 1.0 if outcome.state == "serving" else outcome.progress
            progress.update(tasks[outcome.device], completed=done, state=outcome.state)

        return wait_serving(client, devices, name, sha256, timeout, update, attempts=attempts)


def finish_wait(
    client: ControllerClient,
    devices: list[str],
    name: str,
    sha256: str,
    timeout: float,
    as_json: bool,
    extra: dict[str, Any],
    attempts: dict[str, int] | None = None,
) -> None:
    """Follow the devices until they serve `sha256`; print each outcome; CommandFailed if any did not get there.
    With `attempts` (device -> the deployment's attempt), an outcome of an earlier attempt does not count."""
    outcomes = watch_with_progress(client, devices, name, sha256, timeout, quiet=as_json, attempts=attempts)
    failed = {d: o for d, o in outcomes.items() if o.state != "serving"}
    if as_json:
        emit_json({**extra, "devices": {d: o.__dict__ for d, o in outcomes.items()}})
    else:
        for outcome in outcomes.values():
            mark = "[green]serving[/green]" if outcome.state == "serving" else f"[red]{outcome.state}[/red]"
            console.print(f"  {outcome.device}: {mark} {outcome.backend or ''} {outcome.reason or ''}".rstrip())
    if failed:
        raise CommandFailed("; ".join(f"{d}: {o.reason or o.state}" for d, o in failed.items()))
