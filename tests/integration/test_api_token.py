"""API token: with one set, /api/v1/* and /metrics need `Authorization: Bearer TOKEN`; health, docs and the dashboard
page stay open; edgectl sends the token from --token or EDGECTL_TOKEN."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import httpx
import pytest
from conftest import ControllerHandle

from controller.service import Controller, ControllerStartError
from edgectl.client import ApiError, ControllerClient

TOKEN = "s3cret-token-0123456789"


class TokenController(ControllerHandle):
    """The conftest controller with extra settings (token, signing key) applied before it starts."""

    def __init__(self, broker, data_dir, prefix, **extra) -> None:
        self.extra = extra
        super().__init__(broker, data_dir, prefix)

    def start(self) -> None:
        self.settings = dataclasses.replace(self.settings, **self.extra)
        super().start()
        if self.settings.token:
            self.client = ControllerClient(self.url, token=self.settings.token)


@pytest.fixture
def guarded(broker, tmp_path, prefix):
    handle = TokenController(broker, tmp_path / "controller", prefix, token=TOKEN)
    yield handle
    handle.stop()


def edgectl(url: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != "EDGECTL_TOKEN"}
    full = {**base, "EDGECTL_CONTROLLER": url, "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "edgectl.cli", *args], capture_output=True, text=True, env=full, timeout=60
    )


def test_api_needs_the_token(guarded):
    url = guarded.url
    for path in ("/api/v1/devices", "/api/v1/models", "/metrics", "/api/v1/telemetry"):
        r = httpx.get(url + path)
        assert r.status_code == 401, path
        assert r.json()["error"]["code"] == "unauthorized"
        assert "Authorization: Bearer" in r.json()["error"]["message"]
        assert r.headers["www-authenticate"] == "Bearer"
        wrong = httpx.get(url + path, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "not accepted" in wrong.json()["error"]["message"]
        basic = httpx.get(url + path, headers={"Authorization": f"Basic {TOKEN}"})
        assert basic.status_code == 401
        ok = httpx.get(url + path, headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200, path
    # uploads too (the body is never read without the token)
    assert httpx.post(f"{url}/api/v1/models/m", content=b"x" * 100).status_code == 401
    # open: health, the schema, the docs and the dashboard page (the page asks for the token itself)
    for path in ("/api/v1/health", "/openapi.json", "/docs", "/", "/static/app.js"):
        assert httpx.get(url + path).status_code == 200, path
    assert "edgeToken" in httpx.get(f"{url}/static/app.js").text


def test_edgectl_sends_the_token(guarded):
    without = edgectl(guarded.url, "devices")
    assert without.returncode == 1
    assert "Authorization: Bearer" in without.stderr and "EDGECTL_TOKEN" in without.stderr
    assert "Traceback" not in without.stderr
    wrong = edgectl(guarded.url, "models", env={"EDGECTL_TOKEN": "wrong"})
    assert wrong.returncode == 1 and "not accepted" in wrong.stderr
    with_env = edgectl(guarded.url, "devices", "--json", env={"EDGECTL_TOKEN": TOKEN})
    assert with_env.returncode == 0, with_env.stderr
    assert with_env.stdout.strip() == "[]"
    with_flag = edgectl(guarded.url, "models", "--json", "--token", TOKEN)
    assert with_flag.returncode == 0, with_flag.stderr


def test_client_env_token(guarded, monkeypatch):
    monkeypatch.delenv("EDGECTL_TOKEN", raising=False)
    with pytest.raises(ApiError) as err:
        ControllerClient(guarded.url).devices()
    assert err.value.status == 401
    monkeypatch.setenv("EDGECTL_TOKEN", TOKEN)
    assert ControllerClient(guarded.url).devices() == []


def test_no_token_means_open_api(controller):
    assert httpx.get(f"{controller.url}/api/v1/devices").status_code == 200


def test_empty_token_is_refused(tmp_path):
    from controller.service import ControllerSettings

    with pytest.raises(ControllerStartError, match="token is empty"):
        Controller(ControllerSettings(data_dir=tmp_path, token="  "))


def test_serve_reads_token_file_and_signing_key(tmp_path, monkeypatch):
    """`edge-controller serve --token-file/--signing-key` reach the settings (Controller construction is stubbed)."""
    from typer.testing import CliRunner

    from controller import cli, service

    seen = {}

    def fake(settings):
        seen["settings"] = settings
        raise ControllerStartError("stop here")

    monkeypatch.setattr(service, "Controller", fake)
    (tmp_path / "token").write_text(TOKEN + "\n")
    result = CliRunner().invoke(
        cli.app, ["serve", "--token-file", str(tmp_path / "token"), "--signing-key", str(tmp_path / "k.pem")]
    )
    assert result.exit_code == 1 and "stop here" in result.output
    assert seen["settings"].token == TOKEN
    assert seen["settings"].signing_key == tmp_path / "k.pem"
    monkeypatch.setenv("EDGE_CONTROLLER_TOKEN", "from-env")
    CliRunner().invoke(cli.app, ["serve"])
    assert seen["settings"].token == "from-env"
    missing = CliRunner().invoke(cli.app, ["serve", "--token-file", str(tmp_path / "nope")])
    assert missing.exit_code == 1 and "cannot read --token-file" in missing.output
