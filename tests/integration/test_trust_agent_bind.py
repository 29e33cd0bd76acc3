"""Issue 26, finding 12 (the agent's side): the agent served its v2 API on an address other machines reach with no
token, silently (the controller refuses the same). A real `edge-agent run` bound to 0.0.0.0."""

from __future__ import annotations

import subprocess
import sys

import httpx
from conftest import free_port, wait_until

EX_CONFIG = 78


def agent(tmp_path, broker, *extra: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "agent.cli", "run", "--broker", broker.url, "--device-id", "open",
            "--data-dir", str(tmp_path / "data"), *extra]  # fmt: skip
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def live(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_an_open_bind_without_a_token_is_refused_unless_insecure(tmp_path, broker):
    port = free_port()
    refused = agent(tmp_path, broker, "--api", f"0.0.0.0:{port}")
    try:
        code = refused.wait(30)
    except subprocess.TimeoutExpired:
        refused.kill()
        raise AssertionError("the agent served 0.0.0.0 with no token") from None
    said = refused.stdout.read().strip() if refused.stdout else ""
    print(f"exit {code}: {said}")
    assert code == EX_CONFIG and len(said.splitlines()) == 1
    assert "without a token" in said and "api_token_file" in said and "--insecure" in said

    grpc = agent(tmp_path, broker, "--grpc", f"0.0.0.0:{free_port()}")  # the gRPC API alike
    assert grpc.wait(30) == EX_CONFIG

    loud = agent(tmp_path, broker, "--api", f"0.0.0.0:{port}", "--insecure")  # told: serves, and says so
    try:
        wait_until(lambda: live(f"http://127.0.0.1:{port}/v2/health/live"), 30, "the insecure agent's API")
    finally:
        loud.terminate()
        out, _ = loud.communicate(timeout=30)
    assert "INSECURE" in out
