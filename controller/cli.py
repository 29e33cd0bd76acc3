"""`edge-controller`: the cloud side of the fleet."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from controller.help_format import ReadableCommand, ReadableGroup
from daemon.logs import setup_logging

app = typer.Typer(
    help="Edge controller: model registry, deployments and the fleet's MQTT side.",
    add_completion=False,
    rich_markup_mode=None,  # click's plain help: readable at 80 columns (controller/help_format.py)
    cls=ReadableGroup,
)
log = logging.getLogger("controller")


@app.callback()
def _root() -> None:
    """Edge controller: model registry, deployments and the fleet's MQTT side."""


@app.command(cls=ReadableCommand, short_help="Run the controller until interrupted.")
def serve(
    broker: Annotated[
        str,
        typer.Option(metavar="URL", help="'embedded' (in-process, port 1883), 'embedded:PORT', or mqtt://HOST:PORT."),
    ] = "embedded",
    db: Annotated[
        str | None,
        typer.Option(metavar="URL", help="sqlite:///PATH or postgresql://USER@HOST/DB (default: SQLite in data dir)."),
    ] = None,
    http: Annotated[str, typer.Option(metavar="HOST:PORT", help="HOST:PORT for the HTTP API.")] = "127.0.0.1:8400",
    data_dir: Annotated[Path, typer.Option(metavar="DIR", help="Artifacts and the default database.")] = Path(
        "./controller-data"
    ),
    topic_prefix: Annotated[
        str, typer.Option(metavar="PREFIX", help="MQTT topic prefix shared with the agents.")
    ] = "edge",
    log_level: Annotated[str, typer.Option(metavar="LEVEL", help="DEBUG, INFO, WARNING or ERROR.")] = "INFO",
    signing_key: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="Ed25519 private key (PEM, from `edge-controller keygen`): sign every deployment with it.",
        ),
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="File holding the API token; when set (or EDGE_CONTROLLER_TOKEN is), the API requires "
            "'Authorization: Bearer TOKEN'. Required when --http is not a loopback address (see --insecure).",
        ),
    ] = None,
    read_token_file: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="File holding a read-only API token (GET/HEAD only: dashboards, Prometheus); or "
            "EDGE_CONTROLLER_READ_TOKEN.",
        ),
    ] = None,
    insecure: Annotated[
        bool, typer.Option(help="Serve the API off loopback without a token (anyone who reaches it can deploy).")
    ] = False,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            metavar="HOST",
            help="A Host name the API answers to (repeatable; localhost, IP literals and this machine's "
            "names when bound to 0.0.0.0 are allowed already; '*' allows any).",
        ),
    ] = None,
    broker_password_file: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="File holding the controller's broker password (the URL gives the user: "
            "mqtts://USER@HOST); keeps it out of the command line and the logs.",
        ),
    ] = None,
    broker_users_file: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="With --broker embedded: a mosquitto_passwd file; clients must log in as one of its "
            "users (anonymous clients are refused).",
        ),
    ] = None,
    public_url: Annotated[
        str | None,
        typer.Option(
            metavar="URL",
            help="How devices reach this controller's HTTP API, e.g. https://fleet.example.com (behind a proxy); "
            "they download models from its /api/v1/artifacts/SHA256. Default: http://HOST:PORT of --http, unless "
            "that binds 0.0.0.0 or :: (then models travel over MQTT unless this or --artifact-base-url is given).",
        ),
    ] = None,
    artifact_base_url: Annotated[
        str | None,
        typer.Option(
            metavar="URL",
            help="Devices download models from BASE/SHA256 instead (any static HTTP server or S3-compatible "
            "bucket holding the controller's artifacts/objects/*/* files flat, named by sha256).",
        ),
    ] = None,
    artifact_s3: Annotated[
        str | None,
        typer.Option(
            metavar="S3_URL",
            help="s3://BUCKET/PREFIX: the controller puts each deployed artifact there (PREFIX/SHA256) and devices "
            "download it with presigned URLs (needs boto3; credentials and region from boto3's usual chain: "
            "AWS_* variables, ~/.aws, an instance role). When the bucket fails, devices use the controller's "
            "endpoint (--public-url) or MQTT. Not with --artifact-base-url.",
        ),
    ] = None,
    s3_endpoint_url: Annotated[
        str | None,
        typer.Option(
            metavar="URL", help="With --artifact-s3: an S3-compatible store's URL (MinIO, Ceph, R2); default AWS."
        ),
    ] = None,
    artifact_url_expiry: Annotated[
        int | None,
        typer.Option(
            metavar="SECONDS",
            help="With --artifact-s3: seconds a presigned URL stays valid (default 21600: 6 hours; at most "
            "604800, 7 days, SigV4's limit); a device offline longer gets 403 and downloads over MQTT.",
        ),
    ] = None,
    fetch_rate: Annotated[
        float,
        typer.Option(
            metavar="PER_SECOND",
            help="HTTP downloads a fleet push starts per second, on average: each device waits a random "
            "0..(fleet size / rate) seconds first (0: no wait).",
        ),
    ] = 50.0,
) -> None:
    """Run the controller until interrupted."""
    import os

    from controller.broker.embedded import BrokerStartError
    from controller.service import Controller, ControllerSettings, ControllerStartError

    setup_logging(log_level.upper())
    token = _secret(token_file, "--token-file") if token_file else os.environ.get("EDGE_CONTROLLER_TOKEN") or None
    read_token = (
        _secret(read_token_file, "--read-token-file")
        if read_token_file
        else os.environ.get("EDGE_CONTROLLER_READ_TOKEN") or None
    )
    for option, url in (("--public-url", public_url), ("--artifact-base-url", artifact_base_url)):
        if url is not None and not url.startswith(("http://", "https://")):
            typer.echo(f"edge-controller: {option} {url!r}: expected an http:// or https:// URL", err=True)
            raise typer.Exit(2)
    from controller.registry.s3 import S3ConfigError, check_s3_settings

    try:
        check_s3_settings(artifact_s3, s3_endpoint_url, artifact_url_expiry, artifact_base_url)
    except S3ConfigError as exc:
        typer.echo(f"edge-controller: {exc}", err=True)
        raise typer.Exit(2) from None
    settings = ControllerSettings(
        data_dir=data_dir,
        broker=broker,
        db=db,
        http=http,
        topic_prefix=topic_prefix,
        signing_key=signing_key,
        token=token,
        read_token=read_token,
        insecure=insecure,
        allowed_hosts=tuple(allowed_host or ()),
        broker_password_file=broker_password_file,
        broker_users_file=broker_users_file,
        public_url=public_url or _default_public_url(http),
        artifact_base_url=artifact_base_url,
        artifact_s3=artifact_s3,
        s3_endpoint_url=s3_endpoint_url,
        artifact_url_expiry_s=artifact_url_expiry,
        fetch_rate=fetch_rate,
    )
    from controller.settings_check import SettingError, check_settings, describe_start_error, first_line

    debug = os.environ.get("EDGE_DEBUG", "").strip() in ("1", "true", "yes")  # tracebacks only when asked for
    try:
        check_settings(data_dir, db, broker)
        controller = Controller(settings)
        controller.start_messaging()
    except (SettingError, BrokerStartError, ControllerStartError, ValueError) as exc:
        if debug:
            raise
        typer.echo(f"edge-controller: {first_line(str(exc))}", err=True)
        raise typer.Exit(1) from None
    except Exception as exc:  # e.g. database unreachable: one line naming the setting
        if debug:
            raise
        typer.echo(f"edge-controller: {describe_start_error(exc, db)}", err=True)
        raise typer.Exit(1) from None
    log.info("controller API on http://%s (broker %s)", http, controller.broker_url)
    run_until_signal(controller)


def _default_public_url(http: str) -> str | None:
    """http://HOST:PORT of the --http bind, or None when it binds every interface (no one name reaches it)."""
    host = http.rpartition(":")[0]
    return None if host in ("", "0.0.0.0", "::", "[::]") else f"http://{http}"


def _secret(path: Path, option: str) -> str:
    """The stripped content of a secret file, or exit 1 naming the option and why."""
    try:
        return path.read_text().strip()
    except OSError as exc:
        typer.echo(f"edge-controller: cannot read {option} {path}: {exc.strerror}", err=True)
        raise typer.Exit(1) from None


@app.command("broker-config", cls=ReadableCommand, short_help="Write a Mosquitto configuration for the fleet.")
def broker_config(
    password_file: Annotated[
        Path, typer.Option(metavar="FILE", help="The broker's password file (mosquitto_passwd).")
    ] = Path("/etc/mosquitto/passwords"),
    acl_file: Annotated[Path, typer.Option(metavar="FILE", help="The ACL from `edge-controller acl`.")] = Path(
        "/etc/mosquitto/edge.acl"
    ),
    port: Annotated[int, typer.Option(metavar="PORT", help="The devices' listener.")] = 8883,
    controller_port: Annotated[
        int, typer.Option(metavar="PORT", help="The controller's listener (its own password file).")
    ] = 8884,
    controller_password_file: Annotated[
        Path, typer.Option(metavar="FILE", help="Password file with only the controller's user.")
    ] = (Path("/etc/mosquitto/controller-passwords")),
    cafile: Annotated[Path | None, typer.Option(metavar="FILE", help="TLS: the CA (PEM).")] = None,
    certfile: Annotated[Path | None, typer.Option(metavar="FILE", help="TLS: the broker's certificate (PEM).")] = None,
    keyfile: Annotated[Path | None, typer.Option(metavar="FILE", help="TLS: the broker's key (PEM).")] = None,
    bind: Annotated[
        str, typer.Option(metavar="ADDRESS", help="Address the devices' listener binds (default: all).")
    ] = "",
    controller_bind: Annotated[
        str,
        typer.Option(metavar="ADDRESS", help="Address the controller's listener binds, e.g. 127.0.0.1 (default: all)."),
    ] = "",
    out: Annotated[Path | None, typer.Option(metavar="FILE", help="Write to this file instead of stdout.")] = None,
) -> None:
    """Write a Mosquitto configuration for the fleet: client id = username on the devices' listener, no anonymous
    clients, the ACL, and a packet size limit just above the protocol's largest message."""
    from controller.broker.mosquitto import BrokerFiles, mosquitto_config

    tls = (cafile, certfile, keyfile)
    if any(tls) and not all(tls):
        typer.echo("edge-controller: TLS needs all of --cafile, --certfile and --keyfile", err=True)
        raise typer.Exit(2)
    files = BrokerFiles(password_file, acl_file, controller_password_file, *tls)
    text = mosquitto_config(
        files, port=port, controller_port=controller_port, bind=bind, controller_bind=controller_bind
    )
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text)
        typer.echo(f"wrote the Mosquitto configuration to {out}", err=True)


@app.command(cls=ReadableCommand, short_help="Write the broker ACL: each device on its own topics.")
def acl(
    topic_prefix: Annotated[
        str, typer.Option(metavar="PREFIX", help="MQTT topic prefix shared with the agents.")
    ] = "edge",
    controller_user: Annotated[
        str, typer.Option(metavar="USER", help="Broker username of the controller.")
    ] = "edge-controller",
    output_format: Annotated[str, typer.Option("--format", metavar="FORMAT", help="mosquitto or emqx.")] = "mosquitto",
    users: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="Mosquitto: the devices' password file; each of its users is named in the ACL, so Mosquitto "
            "starts without warnings (write the ACL again, and reload Mosquitto, when devices are added).",
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option(metavar="FILE", help="Write to this file instead of stdout.")] = None,
) -> None:
    """Write broker ACL rules confining each device (username = device id) to its own topics."""
    from controller.broker.acl import emqx_acl, mosquitto_acl, read_users

    if output_format not in ("mosquitto", "emqx"):
        typer.echo("edge-controller: --format must be one of mosquitto, emqx", err=True)
        raise typer.Exit(2)
    try:
        if output_format == "emqx":
            text = emqx_acl(topic_prefix, controller_user)
        else:
            text = mosquitto_acl(topic_prefix, controller_user, read_users(users) if users else ())
            if users is None:
                typer.echo(
                    "edge-controller: without --users every device reads the controller's presence through a "
                    "pattern without %u, which Mosquitto warns about at each start; --users PASSWORD_FILE names "
                    "each device instead",
                    err=True,
                )
    except ValueError as exc:
        typer.echo(f"edge-controller: {exc}", err=True)
        raise typer.Exit(2) from None
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text)
        typer.echo(f"wrote {output_format} ACL for prefix {topic_prefix!r} to {out}", err=True)


@app.command(cls=ReadableCommand, short_help="Create a deployment signing key.")
def keygen(
    out: Annotated[Path, typer.Option(metavar="FILE", help="Where to write the Ed25519 private key (PEM, mode 600).")],
) -> None:
    """Create a deployment signing key; prints the public key that agents list in `trusted_keys`."""
    from protocol.signing import Signer

    if out.exists():
        typer.echo(f"edge-controller: {out} exists; refusing to overwrite a signing key", err=True)
        raise typer.Exit(1)
    import os

    signer = Signer.generate()
    previous = os.umask(0o077)  # the key file is created 0600: never readable by others, not even for an instant
    try:
        signer.save(out)
    finally:
        os.umask(previous)
    typer.echo(f"wrote signing key {signer.key_id} to {out}", err=True)
    typer.echo(signer.public_key_b64)


def run_until_signal(controller) -> None:
    """Serve HTTP on a thread; the main thread tells systemd READY/STATUS and pings the watchdog while it is healthy."""
    import signal
    import threading

    from controller.service import BackgroundHttp, tune_gc
    from daemon.systemd_notify import Notifier

    notifier = Notifier()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    http = BackgroundHttp(controller)
    tune_gc()
    try:
        notifier.ready(f"serving HTTP on {http.url}; broker {controller.broker_url}")
        interval = notifier.watchdog_interval or 5.0
        while not stop.wait(interval):
            if not http.thread.is_alive():
                log.error("the HTTP server stopped; exiting so systemd restarts the controller")
                break
            connected = controller.fleet.connected
            notifier.status(f"serving HTTP on {http.url}; broker {'connected' if connected else 'unreachable'}")
            notifier.watchdog()
    finally:
        notifier.stopping("shutting down")
        http.stop()
        controller.stop()


def main() -> None:
    app(prog_name="edge-controller")


if __name__ == "__main__":
    main()
