"""What an operator sees in an 80x24 terminal: edgectl driven in a real tmux through push, a failed model, status,
devices and convert; every screen captured with capture-pane must show names, states and reasons (never a cell
collapsed to `…`) and no traceback."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from conftest import wait_until

from edgectl import sample_models

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
WIDTH, HEIGHT = 80, 24


class Terminal:
    """A detached tmux session of 80x24 on a server of its own (-L), running bash; each command's whole output
    (scrollback included) captured as the terminal drew it."""

    def __init__(self, env: dict[str, str]) -> None:
        self.socket = f"edgectl-test-{uuid.uuid4().hex[:8]}"
        self.tmux("new-session", "-d", "-x", str(WIDTH), "-y", str(HEIGHT), "-s", "op", "bash --norc --noprofile",
                  env=env)  # fmt: skip
        self.tmux("set-option", "-g", "history-limit", "5000")
        self.tmux("send-keys", "-t", "op", "PS1='$ '", "Enter")

    def tmux(self, *args: str, env: dict[str, str] | None = None) -> str:
        result = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, env=env, timeout=30)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def run(self, command: str, timeout: float = 180) -> tuple[list[str], int]:
        """Type the command, wait for it to finish; the lines it drew (as wrapped at 80 columns) and its exit code."""
        self.tmux("send-keys", "-t", "op", "clear", "Enter")
        self.tmux("clear-history", "-t", "op")
        tag = uuid.uuid4().hex[:6]
        done = re.compile(rf"^__done_{tag}=(\d+)$")  # typed as "__do""ne_…": the echo line alone matches
        self.tmux("send-keys", "-t", "op", f"{command}; \\", "Enter")  # the marker on a row of its own
        self.tmux("send-keys", "-t", "op", f'echo "__do""ne_{tag}=$?"', "Enter")

        def finished() -> list[str] | None:
            lines = self.tmux("capture-pane", "-p", "-t", "op", "-S", "-", "-E", "-").splitlines()
            return lines if any(done.match(line.strip()) for line in lines) else None

        lines = wait_until(finished, timeout, f"`{command}` to finish in tmux", poll=0.2)
        end = next(i for i, line in enumerate(lines) if done.match(line.strip()))
        code = int(done.match(lines[end].strip()).group(1))  # type: ignore[union-attr]
        typed = max(i for i, line in enumerate(lines[:end]) if f'ne_{tag}=$?"' in line)  # where the typing ends
        return [line.rstrip() for line in lines[typed + 1 : end]], code

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=30)


def assert_readable(lines: list[str], *words: str) -> None:
    """Nothing wider than the terminal, no traceback, no cell that is only `…`, and every word shown whole."""
    text = "\n".join(lines)
    assert all(len(line) <= WIDTH for line in lines), text
    assert "Traceback" not in text and 'File "' not in text, text
    assert not re.search(r"(^|\s)…(\s|$)", text), text
    for word in words:
        assert re.search(rf"(^|[\s@(]){re.escape(word)}($|[\s@:,)])", text), f"{word!r} not shown whole in:\n{text}"


@pytest.fixture
def terminal(controller, tmp_path):
    env = {**os.environ, "EDGECTL_CONTROLLER": controller.url, "TERM": "xterm-256color", "HOME": str(tmp_path)}
    env.pop("COLUMNS", None)
    env.pop("LINES", None)
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    term = Terminal(env)
    yield term
    term.close()


def test_push_status_convert_and_a_failed_model_read_at_80_columns(controller, start_agent, terminal, tmp_path):
    from zoo.sklearn_models import custom_op_model

    start_agent("cam-01", wait_online=controller)
    start_agent("cam-02-longer-name", wait_online=controller)
    mlp = sample_models.mlp(tmp_path / "mlp.onnx")
    custom_op_model(tmp_path / "custom.onnx")  # one FancyNorm node no runtime here has: it fails on every device
    edgectl = f"{sys.executable} -m edgectl.cli"

    lines, code = terminal.run(f"{edgectl} push {mlp} -n mlp --to cam-01 --to cam-02-longer-name --wait")
    assert code == 0, lines
    assert_readable(lines, "cam-01:", "cam-02-longer-name:", "serving")

    lines, code = terminal.run(f"{edgectl} push {tmp_path}/custom.onnx -n custom --to cam-01 --wait")
    assert code == 1, lines
    assert_readable(lines, "cam-01:", "failed")
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and "custom is failed on 1 of 1 device(s) (cam-01)" in errors[0], lines
    assert sum("FancyNorm" in line for line in lines) <= 2, lines  # the device's line and the error, not three

    lines, code = terminal.run(f"{edgectl} status cam-01")
    assert code == 0
    assert_readable(lines, "mlp", "custom", "serving", "failed")
    row = next(line for line in lines if line.startswith("custom "))
    assert "could not load" in row, lines  # the reason's cause, on the model's own line
    after = lines[lines.index(row) + 1]
    assert after.startswith(("not shown", "  whole reason")) or not after.startswith(" " * 20), lines
    assert not any(re.search(r"\bNone\b|\bTrue\b|\bFalse\b", line) for line in lines), lines

    lines, code = terminal.run(f"{edgectl} status cam-01 --model custom")
    whole = " ".join(" ".join(lines).split())
    assert code == 0 and "operator FancyNorm of domain com.example.custom" in whole, lines

    lines, code = terminal.run(f"{edgectl} devices")
    assert code == 0
    assert_readable(lines, "cam-01", "cam-02-longer-name", "yes")

    lines, code = terminal.run(f"{edgectl} convert {mlp} --to int8,fp16 --out {tmp_path}/out")
    assert code in (0, 1), lines
    assert_readable(lines, "int8", "fp16")
    table = [line for line in lines if re.match(r"(int8|fp16)\s{2,}\S", line)]
    assert len(table) == 2 and all(re.search(r"\b(pass|below|failed)\b", line) for line in table), lines


def test_screens_narrower_than_the_columns_switch_to_one_field_per_line():
    """Below what even the essential columns need, a table turns into `field: value` blocks."""
    from rich.console import Console

    from edgectl.commands.status import models_table

    models = [{"name": "a-rather-long-model-name", "version": "12", "state": "failed", "backend": None,
               "reason": {"message": "no backend could run it: " + "x " * 200}}]  # fmt: skip
    for width in (80, 50, 30):
        console = Console(width=width, record=True, color_system=None)
        console.print(models_table(models))
        lines = console.export_text().splitlines()
        assert all(len(line) <= width for line in lines)
        assert any("a-rather-long-model-name" in line for line in lines), lines
        assert any("failed" in line for line in lines) and any("no backend" in line for line in lines)
    assert any(line.startswith("model:") for line in lines), lines  # 30 columns: the vertical layout
