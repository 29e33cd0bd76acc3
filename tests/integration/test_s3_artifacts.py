"""Presigned S3 URLs against a real S3-compatible server (moto's, on a thread): the controller puts each deployed
artifact in the bucket and signs a desired state carrying a presigned GET URL; a real agent downloads it from the
bucket, not through the broker; Range resumes against the presigned URL; a URL the store refuses (403, what an
expired or revoked URL gets) makes the agent fall back to MQTT; a bucket the controller cannot reach leaves devices
the controller's own endpoint; bad settings are one line.

What moto enforces, found by reading it (moto 5.2): it serves presigned GETs with Range and honours a bucket policy,
but checks neither the signature nor the expiry of a presigned URL, so expiry itself is not tested here; the 403 a
device gets for an expired URL is produced with a bucket policy that denies GetObject instead."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from conftest import free_port, wait_model_state
from test_http_models import ChunkRequests, desired_message, stored_intact

from agent.fetch.over_http import HttpDownload, HttpSettings
from controller.registry.artifacts import ArtifactStore
from edgectl.sample_models import mlp
from protocol.signing import Signer

pytest.importorskip("boto3", reason="boto3 is not installed (pip install 'edgefleet[s3]')")
pytest.importorskip("moto.server", reason="moto[server] is not installed (pip install 'edgefleet[dev]'): no S3 server")

ANSI = re.compile(r"\x1b\[[0-9;]*m")
REQUEST = re.compile(r'"(GET|HEAD|PUT|POST|DELETE) (\S+) HTTP/[\d.]+" (\d{3})')


class RequestLog(logging.Handler):
    """moto's request log (werkzeug logs one line per request): (method, path with query, status)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seen: list[tuple[str, str, int]] = []

    def emit(self, record: logging.LogRecord) -> None:
        found = REQUEST.search(ANSI.sub("", record.getMessage()))
        if found:
            self.seen.append((found.group(1), found.group(2), int(found.group(3))))

    def of(self, method: str, path: str) -> list[int]:
        """Statuses of the requests with this method whose path (query left out) is `path`."""
        return [status for m, p, status in self.seen if m == method and p.split("?")[0] == path]


@dataclass
class S3Server:
    endpoint: str
    bucket: str
    client: object
    log: RequestLog
    stop: object = field(repr=False, default=None)

    def path(self, key: str) -> str:
        return f"/{self.bucket}/{key}"


@pytest.fixture
def aws_env(monkeypatch) -> None:
    """Credentials and region through the environment (boto3's chain), and nothing from this machine's ~/.aws."""
    environment = {
        "AWS_ACCESS_KEY_ID": "edge-test-key",
        "AWS_SECRET_ACCESS_KEY": "edge-test-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": "/nonexistent",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def s3(aws_env) -> S3Server:
    """moto's S3 server on a free port with a fresh bucket."""
    import boto3
    from moto.server import ThreadedMotoServer

    requests = RequestLog()
    werkzeug = logging.getLogger("werkzeug")
    werkzeug.setLevel(logging.INFO)
    werkzeug.addHandler(requests)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.session.Session().client("s3", endpoint_url=endpoint)
    bucket = f"edge-{uuid.uuid4().hex[:12]}"  # moto's state is per process: a bucket of its own per test
    client.create_bucket(Bucket=bucket)
    yield S3Server(endpoint, bucket, client, requests)
    server.stop()
    werkzeug.removeHandler(requests)


def push(controller, model: Path, name: str) -> dict:
    record = controller.client.upload_model(model, name, None)
    controller.client.deploy(name, record["version"], ["dev1"])
    return record


def test_push_downloads_from_the_bucket_with_a_presigned_url(make_controller, start_agent, broker, prefix, s3,
                                                              model_dir, tmp_path):  # fmt: skip
    """No public URL, a signed desired state: the only HTTP source is the bucket, and the signature covers its URL."""
    signer = Signer.generate()
    signer.save(tmp_path / "signing.pem")
    controller = make_controller(artifact_s3=f"s3://{s3.bucket}/fleet/models", s3_endpoint_url=s3.endpoint,
                                 signing_key=tmp_path / "signing.pem")  # fmt: skip
    spy = ChunkRequests(broker, prefix)
    try:
        agent = start_agent("dev1", config=f'trusted_keys = ["{signer.public_key_b64}"]\n', wait_online=controller)
        record = push(controller, mlp(model_dir / "s3.onnx", pad_mb=4, seed=31), "m")
        wait_model_state(controller, "dev1", "m", record["sha256"], {"serving"})
    finally:
        spy.close()
    sha, size = record["sha256"], record["size"]
    key = f"fleet/models/{sha}"
    entry = desired_message(broker, prefix, "dev1")["models"][0]
    url = urlsplit(entry["url"])
    query = parse_qs(url.query)
    assert f"{url.scheme}://{url.netloc}{url.path}" == f"{s3.endpoint}/{s3.bucket}/{key}"
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"] and query["X-Amz-Expires"] == ["21600"]  # hours
    assert query["X-Amz-Credential"][0].startswith("edge-test-key/") and "X-Amz-Signature" in query
    assert entry["signature"] is not None
    assert s3.client.head_object(Bucket=s3.bucket, Key=key)["ContentLength"] == size  # the controller put it there
    assert s3.log.of("PUT", s3.path(key)) == [200]  # once
    assert s3.log.of("GET", s3.path(key)) == [200]  # the agent's one download, from the bucket
    assert spy.count == 0  # not one chunk request through the broker
    assert stored_intact(agent, sha)
    logs = agent.logs()
    assert f"fetched {size} bytes over HTTP from {s3.endpoint}/{s3.bucket}/{key}" in logs
    assert "X-Amz-Signature" not in logs and "X-Amz-Credential" not in logs  # the query string is a credential


def test_range_resumes_against_a_presigned_url_and_a_second_replica_does_not_upload_again(s3, tmp_path):
    """The agent's own downloader with half the file already here: one Range request for the rest, 206 from the
    bucket, hash intact. Another controller process (a replica, a restart) finds the object by HEAD and puts nothing."""
    from controller.registry.s3 import S3Artifacts, S3Location

    data = hashlib.sha256(b"seed").digest() * (3 << 15)  # 3 MiB
    sha = hashlib.sha256(data).hexdigest()
    store = ArtifactStore(tmp_path / "artifacts")
    upload = store.begin()
    upload.write_bytes(data)
    store.commit(upload, sha)
    location = S3Location.parse(f"s3://{s3.bucket}/p")
    url = S3Artifacts(location, store, endpoint_url=s3.endpoint, expiry_s=3600).url(sha, None)
    assert url is not None and parse_qs(urlsplit(url).query)["X-Amz-Expires"] == ["3600"]

    half = len(data) // 2
    part = tmp_path / "part"
    part.write_bytes(data[:half])
    hasher = hashlib.sha256(data[:half])
    download = HttpDownload(url, len(data), HttpSettings(timeout_s=10), threading.Event())
    with part.open("ab") as out:
        fetched = download.run(out, half, hasher, lambda done, total: None, lambda n: None)
    assert fetched == len(data) - half and download.requests == 1
    assert hasher.hexdigest() == sha and part.read_bytes() == data
    assert s3.log.of("GET", s3.path(f"p/{sha}")) == [206]
    ranged = httpx.get(url, headers={"Range": "bytes=100-199"})
    assert ranged.status_code == 206 and ranged.content == data[100:200]
    assert ranged.headers["content-range"] == f"bytes 100-199/{len(data)}"

    again = S3Artifacts(location, store, endpoint_url=s3.endpoint)
    assert again.prepare([sha]) == 1 and again.url(sha, None) is not None
    assert s3.log.of("PUT", s3.path(f"p/{sha}")) == [200]  # the first process's upload only
    assert s3.log.of("HEAD", s3.path(f"p/{sha}")) == [404, 200]  # the first found nothing, the second the object


def test_url_the_bucket_refuses_falls_back_to_mqtt(make_controller, start_agent, broker, prefix, s3, model_dir):
    """A presigned URL answered 403 (expired, or revoked by a policy: the same answer to the device) costs the broker
    the download, not the deployment."""
    deny = {"Version": "2012-10-17", "Statement": [{"Effect": "Deny", "Principal": "*", "Action": "s3:GetObject",
                                                    "Resource": f"arn:aws:s3:::{s3.bucket}/*"}]}  # fmt: skip
    s3.client.put_bucket_policy(Bucket=s3.bucket, Policy=json.dumps(deny))
    controller = make_controller(artifact_s3=f"s3://{s3.bucket}", s3_endpoint_url=s3.endpoint)
    spy = ChunkRequests(broker, prefix)
    try:
        agent = start_agent("dev1", wait_online=controller)
        record = push(controller, mlp(model_dir / "s3-denied.onnx", pad_mb=2, seed=32), "m")
        wait_model_state(controller, "dev1", "m", record["sha256"], {"serving"}, timeout=60)
    finally:
        spy.close()
    sha = record["sha256"]
    assert desired_message(broker, prefix, "dev1")["models"][0]["url"].startswith(f"{s3.endpoint}/{s3.bucket}/{sha}?")
    assert s3.log.of("GET", s3.path(sha)) == [403]  # one answer: a refusal is not retried
    assert "403" in agent.logs() and "falling back to MQTT" in agent.logs()
    assert spy.count > 0 and stored_intact(agent, sha)


def test_unreachable_bucket_leaves_the_controller_endpoint(make_controller, start_agent, broker, prefix, model_dir,
                                                           caplog, aws_env):  # fmt: skip
    """The store is down when the deployment is published: a warning names the cause, and the desired state carries
    the controller's own URL instead (devices still download over HTTP); the store is not tried again at once."""
    dead = f"http://127.0.0.1:{free_port()}"
    port = free_port()
    controller = make_controller(http=f"127.0.0.1:{port}", public_url=f"http://127.0.0.1:{port}",
                                 artifact_s3="s3://nowhere/models", s3_endpoint_url=dead)  # fmt: skip
    spy = ChunkRequests(broker, prefix)
    try:
        agent = start_agent("dev1", wait_online=controller)
        with caplog.at_level(logging.WARNING, logger="controller.registry.s3"):
            record = push(controller, mlp(model_dir / "s3-down.onnx", pad_mb=2, seed=33), "m")
        wait_model_state(controller, "dev1", "m", record["sha256"], {"serving"})
    finally:
        spy.close()
    sha = record["sha256"]
    url = desired_message(broker, prefix, "dev1")["models"][0]["url"]
    assert url.startswith(f"{controller.url}/api/v1/artifacts/{sha}?device=dev1&")
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "controller.registry.s3"]
    assert "cannot put it in the bucket" in warning and "EndpointConnectionError" in warning
    assert "the controller's endpoint" in warning
    assert spy.count == 0 and stored_intact(agent, sha)
    s3 = controller.bg.controller.fleet.s3
    started = time.monotonic()
    assert s3.url(sha, None) is None and time.monotonic() - started < 0.1  # within the retry pause: no attempt


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--artifact-s3", "s3://"], "--artifact-s3 's3://' names no bucket"),
        (["--artifact-s3", "s3://b/p", "--artifact-url-expiry", "604801"], "--artifact-url-expiry 604801: a presigned"),
        (["--artifact-s3", "s3://b", "--artifact-base-url", "http://h/a"], "--artifact-base-url both say"),
        (["--s3-endpoint-url", "http://h:9000"], "--s3-endpoint-url applies only with --artifact-s3"),
    ],
)
def test_bad_s3_settings_are_one_line(argv, says, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "controller.cli", "serve", "--data-dir", str(tmp_path / "c"), *argv],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("edge-controller: ")
    assert says in lines[0]
    assert not (tmp_path / "c").exists()  # refused before anything was created


def test_controller_refuses_both_sources_before_creating_anything(tmp_path):
    from controller.registry.s3 import S3ConfigError
    from controller.service import Controller, ControllerSettings

    settings = ControllerSettings(data_dir=tmp_path / "c", artifact_s3="s3://b", artifact_base_url="http://h/a")
    with pytest.raises(S3ConfigError, match="give one of them"):
        Controller(settings)
    assert not (tmp_path / "c" / "controller.db").exists()
