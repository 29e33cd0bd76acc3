"""Agent configuration: file < EDGE_AGENT_<KEY> environment < flags, paths made absolute whichever source gave them,
one-line errors with exit status 78."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # the agent's Python 3.9/3.10 job (.ci/pyjobs.sh)
    import tomli as tomllib

from agent.config import AgentConfig, ConfigError, env_overrides, load_config

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "systemd" / "agent.toml.example"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_precedence_file_then_env_then_flags(tmp_path):
    path = write(tmp_path, 'broker = "mqtt://file:1883"\nkeep_versions = 4\ndownload_window = 2\nlog_level = "DEBUG"\n')
    env = {"EDGE_AGENT_KEEP_VERSIONS": "5", "EDGE_AGENT_BROKER": "mqtt://env:1883", "EDGE_AGENT_LOG_LEVEL": "warning"}
    cfg = load_config(path, {"broker": "mqtts://flag:8883", "keep_versions": None}, environ=env)
    assert cfg.broker == "mqtts://flag:8883"  # flag beats env
    assert cfg.keep_versions == 5  # env beats file; a flag left out (None) does not count
    assert cfg.download_window == 2  # file beats the default
    assert cfg.log_level == "WARNING"


def test_env_types_and_empty_values(tmp_path):
    env = {
        "EDGE_AGENT_REQUEST_TIMEOUT_S": "2.5",
        "EDGE_AGENT_BACKEND_OPTIONS": '{"intra_op_threads": 2}',
        "EDGE_AGENT_USERNAME": "",  # empty: unset (systemd's Environment=KEY=)
        "EDGE_AGENT_CONFIG": "/ignored/here",
        "PATH": "/bin",
    }
    assert env_overrides(env) == {"request_timeout_s": "2.5", "backend_options": {"intra_op_threads": 2}}
    cfg = load_config(None, {}, environ=env)
    assert cfg.request_timeout_s == 2.5 and cfg.backend_options == {"intra_op_threads": 2} and cfg.username is None


@pytest.mark.parametrize(
    ("file_text", "env", "expected"),
    [
        ("keep_versions = 1\n", {}, r"\(from .*agent\.toml\): keep_versions = 1: .*greater than or equal to 2"),
        ("colour = 'blue'\n", {}, r"unknown key 'colour' = 'blue'; allowed keys: device_id, broker, "),
        ("", {"EDGE_AGENT_KEEP_VERSIONS": "many"}, r"\(from EDGE_AGENT_KEEP_VERSIONS\): keep_versions = 'many': "),
        ("", {"EDGE_AGENT_BROKER": "http://x"}, r"broker = 'http://x': expected mqtt://HOST\[:PORT\] or mqtts://"),
        ("", {"EDGE_AGENT_COLOUR": "1"}, r"unknown environment variable EDGE_AGENT_COLOUR='1'; allowed: EDGE_AGENT_"),
        ("", {"EDGE_AGENT_BACKEND_OPTIONS": "{"}, r"backend_options = '\{': expected a JSON object"),
        ("device_id = 'a/b'\n", {}, r"device_id = 'a/b': use 1-64 letters"),
        ("api = '8080'\n", {}, r"api = '8080': expected HOST:PORT"),
        ("topic_prefix = 'a/#'\n", {}, r"topic_prefix = 'a/#': expected a non-empty MQTT topic prefix"),
        ("mqtt_protocol = '4'\n", {}, r"mqtt_protocol = '4': Input should be 'auto', '5' or '3.1.1'"),
        ("ca_file = '/nonexistent.pem'\n", {}, r"ca_file = '/nonexistent.pem': expected a readable file"),
        ("password = 7\n", {}, r"password = '\*\*\*': "),
        ("broker = [\n", {}, r"is not valid TOML"),
    ],
)
def test_invalid_values_name_key_value_and_what_is_allowed(tmp_path, file_text, env, expected):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, file_text), {}, environ=env)
    message = str(info.value)
    assert "\n" not in message
    assert re.search(expected, message), message


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"cannot read config file .*nope\.toml"):
        load_config(tmp_path / "nope.toml", {}, environ={})


def test_example_documents_every_key_and_is_valid():
    text = EXAMPLE.read_text()
    documented = set(re.findall(r"^#? ?([a-z_]+) = ", text, flags=re.M))
    assert documented == set(AgentConfig.model_fields), "systemd/agent.toml.example is out of sync with AgentConfig"
    uncommented = "\n".join(line.removeprefix("# ") for line in text.splitlines() if re.match(r"^#? ?[a-z_]+ = ", line))
    values = tomllib.loads(uncommented)
    values.pop("ca_file"), values.pop("cert_file"), values.pop("key_file")  # they must exist to validate
    AgentConfig.model_validate(values)


def test_agent_paths_are_absolute_whichever_source_gave_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "agent.toml").write_text(
        'password_file = "secret/pw"\napi_token_file = "token"\nca_file = "ca.pem"\n'
        'backend_options = { tensorrt_cache_dir = "trt", intra_op_threads = 2 }\n'
    )
    (tmp_path / "ca.pem").write_text("-")
    cfg = load_config(Path("agent.toml"), {"data_dir": Path("data")}, environ={})
    assert cfg.data_dir == tmp_path / "data"
    assert cfg.password_file == tmp_path / "secret" / "pw" and cfg.api_token_file == tmp_path / "token"
    assert cfg.ca_file == str(tmp_path / "ca.pem")
    assert cfg.backend_options == {"tensorrt_cache_dir": str(tmp_path / "trt"), "intra_op_threads": 2}
    from_env = load_config(None, {}, environ={"EDGE_AGENT_DATA_DIR": "~/edge"})
    assert from_env.data_dir == Path.home() / "edge"


def run_agent(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("EDGE_AGENT_")}
    return subprocess.run(
        [sys.executable, "-m", "agent.cli", "run", *args],
        capture_output=True,
        text=True,
        env={**full_env, **(env or {})},
        timeout=60,
    )


def test_agent_exits_78_with_one_line_for_an_unknown_key_in_the_file(tmp_path):
    path = write(tmp_path, 'brokr = "mqtt://x"\n')
    result = run_agent("--config", str(path))
    assert result.returncode == 78
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("edge-agent: invalid config (from ") and "unknown key 'brokr'" in line


def test_agent_exits_78_for_a_bad_env_value_and_reads_the_config_path_from_env(tmp_path):
    path = write(tmp_path, "keep_versions = 3\n")
    result = run_agent(env={"EDGE_AGENT_CONFIG": str(path), "EDGE_AGENT_DOWNLOAD_WINDOW": "0"})
    assert result.returncode == 78
    assert result.stderr.strip() == (
        "edge-agent: invalid config (from EDGE_AGENT_DOWNLOAD_WINDOW): download_window = '0': "
        "Input should be greater than or equal to 1"
    )
    result = run_agent(env={"EDGE_AGENT_CONFIG": str(tmp_path / "missing.toml")})
    assert result.returncode == 78 and "cannot read config file" in result.stderr


def test_agent_help_labels_say_what_to_give_at_80_columns():
    """`edge-agent run/doctor/probe --help`: each option labelled with what to give (`--api HOST:PORT`), not argparse's
    upper-cased setting name (`--broker-password-file PASSWORD_FILE`), and nothing wider than 80 columns."""
    env = {**os.environ, "COLUMNS": "80"}
    for command in ("run", "doctor", "probe"):
        done = subprocess.run([sys.executable, "-m", "agent.cli", command, "--help"], capture_output=True, text=True,
                              env=env, timeout=60)  # fmt: skip
        assert done.returncode == 0 and all(len(line) <= 80 for line in done.stdout.splitlines()), done.stdout
        for dest in ("CONFIG", "PASSWORD_FILE", "DATA_DIR", "DEVICE_ID", "TOPIC_PREFIX", "API", "TIMEOUT", "ROOT"):
            assert not re.search(rf"--[\w-]+ {dest}\b", done.stdout), done.stdout
        if command != "probe":
            assert "--api HOST:PORT" in done.stdout and "--broker-password-file FILE" in done.stdout, done.stdout
