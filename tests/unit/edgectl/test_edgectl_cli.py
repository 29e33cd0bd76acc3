"""edgectl's shape: a root that registers one module per command group, `--version`, and every known failure as
one line on stderr with a non-zero exit, from one place."""

from __future__ import annotations

import subprocess
import sys

import typer
from typer.testing import CliRunner

from edgectl import __version__
from edgectl.cli import GROUPS, app
from edgectl.errors import CommandFailed, one_line

EXPECTED = {
    "push", "rollback", "undeploy", "devices", "status", "models", "infer", "telemetry", "top", "demo", "convert",
    "capture", "bundle", "label", "drift",
}  # fmt: skip


def edgectl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgectl.cli", *args], capture_output=True, text=True, timeout=60)


def test_every_command_is_registered_once():
    names = [c.name or c.callback.__name__ for c in app.registered_commands]
    assert sorted(names) == sorted(EXPECTED)
    assert sum(len(group.COMMANDS) for group in GROUPS) == len(EXPECTED)


def test_version():
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"edgectl {__version__}"


def test_unreachable_controller_is_one_line_and_exit_1():
    result = edgectl("devices", "--controller", "http://127.0.0.1:9")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: cannot reach the controller")


def test_convert_of_a_file_that_is_no_onnx_model_is_one_line_naming_why(tmp_path):
    """Not protobuf's "Error parsing message with type 'onnx.ModelProto'", and no synthetic-data warning before it."""
    text = tmp_path / "notes.txt"
    text.write_text("0.1 0.2 0.3\n")
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(b"\x08\x07\x12\x04te")  # an ONNX header cut short
    for model, to in ((text, ("--to", "int8")), (cut, ("--to", "int8")), (text, ())):
        result = edgectl("convert", str(model), *to, "--out", str(tmp_path / "out"))
        said = f"error: {model} is not a valid ONNX model: it does not parse as an ONNX protobuf"
        assert result.returncode == 1 and result.stderr.startswith(said), result.stderr
        assert result.stderr.count("\n") == 1 and "WARNING" not in result.stderr, result.stderr


def test_unreadable_files_are_one_line(tmp_path):
    result = edgectl("push", str(tmp_path / "missing.onnx"), "-n", "m")
    said = f"error: cannot read model file {tmp_path}/missing.onnx: no such file"
    assert result.returncode == 1 and result.stderr.strip() == said
    result = edgectl("push", str(tmp_path), "-n", "m")  # the cause an operator fixes, not only the path
    said = f"error: cannot read model file {tmp_path}: it is a directory"
    assert result.returncode == 1 and result.stderr.strip() == said
    result = edgectl("convert", str(tmp_path / "nope" / "x.onnx"))
    said = f"error: cannot read model file {tmp_path}/nope/x.onnx: no such directory {tmp_path}/nope"
    assert result.returncode == 1 and result.stderr.strip() == said
    xml = tmp_path / "model.xml"
    xml.write_text("<net/>")
    result = edgectl("push", str(xml), "-n", "m")  # an IR without its weights: OSError, reported the same way
    assert result.returncode == 1 and "needs its weights file" in result.stderr and "Traceback" not in result.stderr


def test_one_line_maps_every_error_and_shows_a_traceback_only_with_edgectl_debug():
    def broken(kind: str) -> None:
        raise {"known": CommandFailed("the reason"), "os": FileNotFoundError("gone"), "bug": KeyError("k")}[kind]

    runner = CliRunner()
    wrapped = one_line(broken)
    assert wrapped.__name__ == "broken"
    cli = typer.Typer()
    cli.command()(wrapped)
    for kind, message in (("known", "the reason"), ("os", "gone"), ("bug", "internal error KeyError: 'k'")):
        result = runner.invoke(cli, [kind])
        assert result.exit_code == 1 and f"error: {message}" in result.output
        assert "Traceback" not in result.output
    debug = runner.invoke(cli, ["bug"], env={"EDGECTL_DEBUG": "1"})  # the traceback only when asked for
    assert isinstance(debug.exception, KeyError)


def test_convert_list_needs_no_model_and_a_missing_model_is_one_line():
    listed = edgectl("convert", "--list")
    assert listed.returncode == 0 and "int8-static" in listed.stdout, listed.stderr
    missing = edgectl("convert")
    assert missing.returncode == 1 and missing.stderr.strip().splitlines() == [
        "error: give the model file to convert (or --list to see the variants)"
    ]
