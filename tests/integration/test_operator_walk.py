"""Issue 24, what a new operator hit in the first week (points 7-11, 13-16), each reproduced with the real daemons,
CLI and terminal: `top` tells a failed model from a serving one and quits on `q`; help labels name what to give;
errors name the cause and the fix, never an internal path or a library's function argument."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import wait_model_state, wait_until
from test_operator_screens import WIDTH, Terminal, assert_readable

from edgectl import sample_models

EDGECTL = f"{sys.executable} -m edgectl.cli"


def screen(term: Terminal) -> list[str]:
    return [line.rstrip() for line in term.tmux("capture-pane", "-p", "-t", "op").splitlines()]


def wait_screen(term: Terminal, text: str, timeout: float = 30) -> list[str]:
    """The visible screen once a line of it contains `text`."""

    def shows() -> list[str] | None:
        lines = screen(term)
        return lines if any(text in line for line in lines) else None

    return wait_until(shows, timeout, f"{text!r} on the screen", poll=0.1)


def terminal_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of an operator's shell: this Python's scripts first on PATH, the width left to the terminal."""
    env = {**os.environ, "TERM": "xterm-256color", "HOME": str(home), **extra}
    env.pop("COLUMNS", None)
    env.pop("LINES", None)
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    return env


@pytest.fixture
def term(tmp_path):
    """An 80x24 tmux terminal with no controller set (commands that need one say --controller)."""
    terminal = Terminal(terminal_env(tmp_path))
    yield terminal
    terminal.close()


@pytest.fixture
def serving_and_failed(controller, start_agent, tmp_path):
    """cam-01 serving `mlp` and failing `custom` (an operator no runtime here has)."""
    from zoo.sklearn_models import custom_op_model

    start_agent("cam-01", wait_online=controller)
    good = controller.client.upload_model(sample_models.mlp(tmp_path / "mlp.onnx"), "mlp", None)
    bad = controller.client.upload_model(custom_op_model(tmp_path / "custom.onnx")[0], "custom", None)
    controller.client.deploy("mlp", good["version"], ["cam-01"])
    controller.client.deploy("custom", bad["version"], ["cam-01"])
    wait_model_state(controller, "cam-01", "mlp", good["sha256"], {"serving"})
    wait_model_state(controller, "cam-01", "custom", bad["sha256"], {"failed"})
    return controller


def test_top_tells_a_failed_model_from_a_serving_one_and_q_quits(serving_and_failed, term):
    terminal, url = term, f"--controller {serving_and_failed.url}"
    lines, code = terminal.run(f"{EDGECTL} top --once {url}")
    assert code == 0, lines
    assert_readable(lines, "mlp@1", "custom@1", "serving", "failed")
    rows = {line.split()[2]: line for line in lines if line.startswith("cam-01")}
    assert " serving " in rows["mlp@1"] and " failed " in rows["custom@1"], lines

    terminal.tmux("send-keys", "-t", "op", "clear", "Enter")
    terminal.tmux("send-keys", "-t", "op", f'{EDGECTL} top --interval 0.5 {url}; echo __top""_exit=$?', "Enter")
    live = wait_screen(terminal, "q or Ctrl-C quits")
    assert_readable(live, "custom@1", "failed")
    terminal.tmux("send-keys", "-t", "op", "q")
    ended = wait_screen(terminal, "__top_exit=", timeout=5)
    assert "__top_exit=0" in ended, ended
    lines, code = terminal.run("stty -a | tr ' ' '\\n' | grep -xE -- '-?(icanon|echo)'")
    assert lines == ["icanon", "echo"], lines  # the terminal is given back as it was


def edgectl_run(*args: str, columns: int = 80, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "COLUMNS": str(columns), **env}
    return subprocess.run([sys.executable, "-m", "edgectl.cli", *args], capture_output=True, text=True, env=full,
                          timeout=120)  # fmt: skip


@pytest.mark.parametrize(
    ("command", "option", "label"),
    [
        ("push", "--to", "DEVICE"),
        ("rollback", "--to", "VERSION"),
        ("convert", "--to", "VARIANTS"),
        ("convert", "--out", "DIR"),
        ("convert", "--mixed-budget", "SECONDS"),
        ("capture", "--out", "FILE|DIR"),
        ("bundle", "--out", "DIR"),
    ],
)
def test_each_option_is_labelled_with_what_that_command_takes(command, option, label):
    text = edgectl_run(command, "--help").stdout
    row = next(line for line in text.splitlines() if re.search(rf"\s{re.escape(option)}\s", line))
    assert re.search(rf"\s{re.escape(option)}\s.*\s{re.escape(label)}\s", row), row


def test_capture_writes_into_a_directory_and_adds_npz(controller, start_agent, tmp_path):
    import httpx
    import numpy as np

    agent = start_agent("cam-01", config="capture_inputs = 4\n", wait_online=controller)
    record = controller.client.upload_model(sample_models.mlp(tmp_path / "mlp.onnx"), "mlp", None)
    controller.client.deploy("mlp", record["version"], ["cam-01"])
    wait_model_state(controller, "cam-01", "mlp", record["sha256"], {"serving"})
    for i in range(6):
        body = {"inputs": [{"name": "x", "shape": [1, 16], "datatype": "FP32", "data": [float(i)] * 16}]}
        assert httpx.post(f"{agent.api}/v2/models/mlp/infer", json=body, timeout=10).status_code == 200
    url = ("--controller", controller.url)

    into = tmp_path / "captures"
    into.mkdir()
    done = edgectl_run("capture", "cam-01", "-m", "mlp", "--out", str(into), *url)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in into.iterdir()) == ["cam-01-mlp.npz"], done.stdout
    assert "wrote 4 request inputs of mlp version 1 (a uniform sample of 6 requests)" in done.stdout

    done = edgectl_run("capture", "cam-01", "-m", "mlp", "--out", str(tmp_path / "capt"), *url)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "capt").exists() and len(np.load(tmp_path / "capt.npz").files) == 4
    assert f"to {tmp_path / 'capt.npz'}" in " ".join(done.stdout.split())


def one_error_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_a_truncated_onnx_is_refused_without_the_controllers_paths(controller, tmp_path):
    whole = sample_models.mlp(tmp_path / "mlp.onnx").read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(whole[: len(whole) // 3])
    line = one_error_line(edgectl_run("push", str(cut), "-n", "cut", "--controller", controller.url))
    assert line.startswith("error: cut.onnx: not a valid ONNX model:"), line
    assert "cut short" in line and "upload it again" in line, line
    for internal in ("artifacts", "incoming", ".upload", str(controller.settings.data_dir)):
        assert internal not in line, line


def test_a_text_file_as_input_or_sample_says_what_to_give_not_numpys_pickle_advice(serving_and_failed, tmp_path):
    import numpy as np

    text = tmp_path / "input.txt"
    text.write_text("0.1 0.2 0.3\n")
    objects = tmp_path / "objects.npy"
    np.save(objects, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    url = ("--controller", serving_and_failed.url)
    for path, says in ((text, "is not a .npy/.npz file"), (objects, "holds Python objects")):
        line = one_error_line(edgectl_run("infer", "cam-01", "-m", "mlp", "-i", str(path), *url))
        assert says in line and "numpy.save" in line, line
        assert "allow_pickle" not in line and "pickle.load" not in line, line
    line = one_error_line(edgectl_run("push", str(tmp_path / "mlp.onnx"), "-n", "m2", "--sample", str(text), *url))
    assert "input.txt: not a .npz, .npy or v2 JSON file" in line and "numpy.savez" in line, line
    assert "pickle" not in line, line
    good = tmp_path / "x.npy"
    np.save(good, np.ones((1, 16), np.float32))
    done = edgectl_run("infer", "cam-01", "-m", "mlp", "-i", str(good), *url)
    assert done.returncode == 0 and "mlp@1 on " in done.stdout, done.stderr


def test_convert_names_what_to_install_whole_and_no_library_arguments(tmp_path):
    """sympy and TensorFlow's toolchain hidden from a real `edgectl convert` (sys.modules[name] = None is how Python
    itself says "not installed"): the report says what to pip install, whole, at 80 columns and narrower."""
    hide = tmp_path / "hide"
    hide.mkdir()
    hidden = ("sympy", "onnx2tf", "tensorflow", "ai_edge_litert")
    (hide / "sitecustomize.py").write_text(f"import sys\nsys.modules.update(dict.fromkeys({hidden!r}))\n")
    model = sample_models.mlp(tmp_path / "mlp.onnx")
    for columns in (80, 60):
        done = edgectl_run("convert", str(model), "--to", "int8,tflite", "--out", str(tmp_path / "out"),
                           columns=columns, PYTHONPATH=str(hide))  # fmt: skip
        assert done.returncode == 1, done.stderr  # tflite could not be built
        lines = done.stdout.splitlines()
        assert all(len(line) <= columns for line in lines), done.stdout
        failed = next(i for i, line in enumerate(lines) if line.startswith("tflite failed:"))
        fix = "pip install 'edgefleet[convert-tflite]'"
        assert fix in lines[failed] or lines[failed + 1] == f"  {fix}", done.stdout  # whole, on one line
        text = " ".join(done.stdout.split())
        assert "pip install sympy" in text, done.stdout
        for internal in ("skip_symbolic_shape", "quant_pre_process", "allow_pickle"):
            assert internal not in done.stdout + done.stderr, done.stdout


def commands_and_options(app) -> dict[str, list[str]]:
    """Each command of a typer app (the app itself as '') and the long option names its help must show whole."""
    import typer

    group = typer.main.get_command(app)
    found = {"": [o for p in group.params for o in p.opts if o.startswith("--")]}
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        found[name] = [o for p in command.params for o in (*p.opts, *p.secondary_opts) if o.startswith("--")]
    return found


def premature_breaks(lines: list[str], right: int = WIDTH - 3) -> list[str]:
    """Lines that end a sentence's line early: the next line continues the same cell (same column, lower case) with a
    word that would have fitted (a docstring's own line break shown as is)."""
    found = []
    for a, b in zip(lines, lines[1:], strict=False):
        body = b.rstrip(" │")
        col = len(body) - len(body.lstrip(" │"))
        if not 0 < col < len(body) or not body[col].islower() or len(a) <= col or a[col - 1] != " " or a[col] == " ":
            continue
        if col <= 4 and "  " in a[col:].rstrip(" │"):  # rows of a list (`name  description`), not wrapped prose
            continue
        if len(a.rstrip(" │")) + 1 + len(body[col:].split()[0]) <= right:
            found.append(f"{a.rstrip()}\n{b.rstrip()}")
    return found


def test_help_reads_at_80_columns_in_a_terminal(term):
    """Every command's --help of edgectl and edge-controller in an 80-column tmux: nothing wider, nothing cut with
    `…`, every option name whole, no word split at its hyphen, no sentence broken where the source wrapped."""
    import controller.cli
    import edgectl.cli

    for program, app in (("edge-controller", controller.cli.app), ("edgectl", edgectl.cli.app)):
        for command, options in commands_and_options(app).items():
            lines, code = term.run(f"{program} {command} --help".replace("  ", " "))
            assert code == 0, lines
            text = "\n".join(lines)
            assert all(len(line) <= WIDTH for line in lines), text
            assert "…" not in text and not re.search(r"\w\.\.\.$", text, re.M), text
            for option in options:
                assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text), f"{option} cut in:\n{text}"
            assert not re.search(r"[a-z]-\s*│?$", text, re.M), text
            assert not premature_breaks(lines), "\n\n".join(premature_breaks(lines))


def test_status_detail_reads_cleanly(serving_and_failed, term):
    """The backend choice under `edgectl status`: the reason without the backend's name twice, milliseconds in one
    format, the reference's real load time, the candidate table aligned under its header, and wrapped lines kept
    under their text instead of back at column 0."""
    url = f"--controller {serving_and_failed.url}"
    lines, code = term.run(f"{EDGECTL} status cam-01 {url}")
    assert code == 0, lines
    assert_readable(lines, "mlp", "custom", "serving", "failed")
    text = "\n".join(lines)
    choice = next(i for i, line in enumerate(lines) if line.startswith("  mlp@1 backend "))
    backend = lines[choice].split()[2].rstrip(":")
    assert f"{backend}: {backend}:" not in text, text
    assert not re.search(r"\d\.\d{3,}", text), text  # no 0.0088 beside 0.01
    models_table = {"model", "mlp", "custom", "not"}
    at_column_0 = [line for line in lines[1:] if line[:1].strip() and line.split()[0] not in models_table]
    assert all(line.startswith("─") for line in at_column_0), text  # only the models table's rule
    header = next(line for line in lines if line.lstrip().startswith("candidate "))
    rows = [line for line in lines[lines.index(header) + 2 :] if re.match(r"\s+\w+:\w+", line)]
    indent = len(header) - len(header.lstrip())
    assert rows and all(len(r) - len(r.lstrip()) == indent for r in rows), text  # names under `candidate`

    wide = edgectl_run("status", "cam-01", "--controller", serving_and_failed.url, columns=160).stdout.splitlines()
    head = next(line for line in wide if line.lstrip().startswith("candidate "))
    assert "load ms" in head, wide
    column = head.index("load ms") + len("load ms")  # right-aligned: the value ends where the header ends
    timed = [line for line in wide[wide.index(head) + 2 :] if "chosen" in line or "agrees" in line]
    assert timed and all(line[:column].split()[-1] != "0.00" for line in timed), wide  # the reference loaded too


def test_numbers_agree_with_each_other(controller, start_agent, tmp_path):
    """Sizes in a unit that keeps their figures, one count of samples for one file in `models` and in `convert`,
    the mixed-precision note quoting what the table shows (not the bar), and telemetry's header quoting its rows."""
    import numpy as np

    model = sample_models.mlp(tmp_path / "mlp.onnx")
    kb = model.stat().st_size / 1000
    batch = tmp_path / "batch.npz"
    np.savez(batch, x=np.random.default_rng(1).standard_normal((64, 16)).astype(np.float32))  # one file, 64 rows
    url = ("--controller", controller.url)
    start_agent("cam-01", wait_online=controller)

    pushed = edgectl_run("push", str(model), "-n", "mlp", "--sample", str(batch), "--to", "cam-01", "--wait", *url)
    assert pushed.returncode == 0, pushed.stderr
    assert f"({kb:.1f} kB, sha256" in pushed.stdout and "0.0 MB" not in pushed.stdout, pushed.stdout
    models = " ".join(edgectl_run("models", *url, columns=200).stdout.split())
    assert f"{kb:.1f} kB" in models and "64 samples in 1 batch (x: 64x16 float32)" in models, models
    status = " ".join(edgectl_run("status", "cam-01", *url, columns=200).stdout.split())
    assert "on 64 samples in 1 batch given with the model" in status, status  # the device counts them alike

    # 64 rows: 20 held out of calibration and search (issue 28); all agreeing (8-bit weights: a 95% lower bound of 88%
    # clears 85%, pass) or one flipping (x86 without VNNI, 7-bit weights: 95%, bound 80.4%, unproven): either way the
    # figures must agree with each other and the exit status with the verdict
    bar = ("--min-top1", "0.85", "--min-cosine", "0.85")
    converted = edgectl_run("convert", str(model), "--to", "int8-static", "--calibration", str(batch), "--out",
                            str(tmp_path / "out"), *bar, columns=200)  # fmt: skip
    text = " ".join(converted.stdout.split())
    row = next(line for line in converted.stdout.splitlines() if line.startswith("int8-static "))
    verdict, top1 = row.split()[1], re.findall(r"\b\d+\.\d%", row)[-1]  # the top-1 column: the held-out figure
    assert (converted.returncode == 0) == (verdict == "pass"), converted.stdout + converted.stderr
    said = re.search(r"top-1 (\d+\.\d+)% on 20 held-out samples", text)  # the verdict's own line, where not a pass
    assert verdict == "pass" or (said and abs(float(said[1]) - float(top1[:-1])) < 0.05), text
    assert "calibrated on 30 samples (given)" in text and "sample(s)" not in text, text  # 44 kept: 30 fit, 14 judge
    assert "measured on 20 held-out samples of" in text and "(20 of 64," in text, text  # rows, counted alike
    assert "MB" not in text and "kB" in text, text  # a 5.7 kB model's variants are not `0.01 MB`
    # the search's note quotes its own top-1 as the table prints them and names the samples it was measured on
    note = text[text.index("mixed precision") :].split(" -> ")[0]
    assert "out of sample (14 calibration samples not fitted on)" in note and re.search(r"top-1 \d+\.\d%", note), text
    assert "reaches" not in text, text

    def rows() -> list[str] | None:
        shown = edgectl_run("telemetry", "cam-01", "--since", "5m", *url).stdout.splitlines()
        return shown if len([line for line in shown if re.match(r"\d\d:\d\d:\d\d ", line)]) >= 2 else None

    shown = wait_until(rows, 60, "two telemetry samples", poll=1)
    times = [line.split()[0] for line in shown if re.match(r"\d\d:\d\d:\d\d ", line)]
    assert f"from {times[0]} to {times[-1]} (asked: the last 5m)" in shown[0], shown
