"""Uploads and deployments followed with progress bars on stderr, and each device's outcome printed at the end."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TaskProgressColumn, TextColumn, TransferSpeedColumn
from rich.text import Text

from edgectl.client import ControllerClient
from edgectl.errors import CommandFailed
from edgectl.output import brief, console, emit_json, errors
from edgectl.watch import DeviceOutcome, wait_serving


def upload_with_progress(client: ControllerClient, model: Path, name: str, version: str | None, quiet: bool) -> dict:
    size = model.stat().st_size
    columns = (TextColumn("upload {task.fields[label]}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=errors, disable=quiet or not errors.is_terminal, transient=True) as progress:
        task = progress.add_task("upload", total=size, label=model.name)
        return client.upload_model(model, name, version, lambda n: progress.advance(task, n))


STAGES = {"pending": 0.0, "downloading": 0.0, "verifying": 0.8, "loading": 0.85, "checking": 0.95}
DOWNLOAD_SHARE = 0.8  # of the bar: the download; the rest is verify, load (trial, warm-up) and pre-swap checks


def bar_fraction(outcome: DeviceOutcome, before: float = 0.0) -> float:
    """How full a device's bar is: 1.0 only when it serves; a failure stays where it stopped (never 100%)."""
    if outcome.state == "serving":
        return 1.0
    if outcome.state == "failed":
        return min(before, 0.99)
    if outcome.state == "downloading":
        return DOWNLOAD_SHARE * min(max(outcome.progress, 0.0), 1.0)
    return max(STAGES.get(outcome.state, before), before if outcome.state != "pending" else 0.0)


def watch_with_progress(
    client: ControllerClient,
    devices: list[str],
    name: str,
    sha256: str,
    timeout: float,
    quiet: bool,
    attempts: dict[str, int] | None = None,
) -> dict[str, DeviceOutcome]:
    """Follow the devices: bars on a terminal; elsewhere (a pipe, a file, CI) one line on stderr each time a device's
    state or its reason changes (e.g. `device is offline`), so a long wait is never silent."""
    columns = (TextColumn("{task.fields[device]:<20} {task.fields[state]:<12}"), BarColumn(), TaskProgressColumn(),
               TextColumn("{task.fields[note]}"))  # fmt: skip
    bars = not quiet and errors.is_terminal
    lines = StateLines() if not quiet and not bars else None
    with Progress(*columns, console=errors, disable=not bars, transient=True) as progress:
        tasks = {d: progress.add_task(d, total=1.0, device=d, state="pending", note="") for d in devices}

        def update(outcome: DeviceOutcome) -> None:
            task = tasks[outcome.device]
            done = bar_fraction(outcome, progress.tasks[task].completed)
            note = brief(outcome.reason, 40) if outcome.reason and not outcome.done else ""
            progress.update(task, completed=done, state=outcome.state, note=note)
            if lines is not None:
                lines.update(outcome)

        return wait_serving(client, devices, name, sha256, timeout, update, attempts=attempts)


class StateLines:
    """Progress for output that is not a terminal: `DEVICE: STATE (REASON)` on stderr when either changes (the
    first `pending` with no reason is not news); the outcome itself is printed at the end, as on a terminal."""

    def __init__(self) -> None:
        self.shown: dict[str, tuple[str, str | None]] = {}

    def update(self, outcome: DeviceOutcome) -> None:
        seen = (outcome.state, outcome.reason)
        if outcome.done or self.shown.get(outcome.device, ("pending", None)) == seen:
            return
        self.shown[outcome.device] = seen
        line = f"{outcome.device}: {outcome.state}" + (f" ({outcome.reason})" if outcome.reason else "")
        errors.print(brief(line, errors.width), markup=False, highlight=False)


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
            head = f"  {escape(outcome.device)}: {mark} {escape(outcome.backend or '')}".rstrip()
            room = console.width - len(Text.from_markup(head).plain) - 1
            reason = f" {escape(brief(outcome.reason, max(room, 20)))}" if outcome.reason else ""
            console.print(head + reason, highlight=False)
    if failed:
        raise CommandFailed(failure_line(name, outcomes, failed))


def failure_line(name: str, outcomes: dict[str, DeviceOutcome], failed: dict[str, DeviceOutcome]) -> str:
    """The cause in one line: how many devices did not get there and the first reason, cut short (whole with
    --verbose, and in `edgectl status DEVICE --model NAME`)."""
    first = next(iter(failed.values()))
    states = sorted({o.state for o in failed.values()})
    which = ", ".join(failed) if len(failed) <= 3 else f"{', '.join(list(failed)[:3])}, …"
    reason = brief(first.reason or first.state, 200)
    return (
        f"{name} is {'/'.join(states)} on {len(failed)} of {len(outcomes)} device(s) ({which}): {reason}; "
        f"`edgectl status {first.device} --model {name}` shows it whole"
    )
