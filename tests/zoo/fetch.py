"""Download a zoo model's wheel once with pip, extract its model file into a shared cache, safely across processes."""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .catalog import ZooModel

# The wheel tags asked for, whatever the interpreter or machine that runs the tests: only data files are taken
# from the wheel, so every host gets the same (CPython 3.11, x86_64 Linux or pure-Python) wheel and model bytes.
WHEEL_TAGS = (
    "--python-version", "3.11", "--implementation", "cp", "--abi", "cp311", "--abi", "abi3", "--abi", "none",
    "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux2014_x86_64", "--platform", "any",
)  # fmt: skip
DOWNLOAD_TIMEOUT_S = 900


class ZooUnavailable(RuntimeError):
    """A zoo model could not be had (no network, package gone, member missing)."""


def cache_dir() -> Path:
    return Path(os.environ.get("EDGEFLEET_ZOO_CACHE") or Path.home() / ".cache" / "edgefleet" / "zoo")


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _download_wheel(package: str, dest: Path) -> Path:
    """The one wheel of `package` ('name==version') in `dest`, downloaded if not there yet."""
    name, _, version = package.partition("==")
    prefix = f"{name.replace('-', '_').lower()}-{version}-"
    found = [p for p in dest.glob("*.whl") if p.name.lower().startswith(prefix)] if dest.is_dir() else []
    if found:
        return found[0]
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--quiet", *WHEEL_TAGS, "--dest", tmp, package]  # fmt: skip
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ZooUnavailable(f"zoo: cannot download {package}: {exc}") from exc
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or len(wheels) != 1:
            errors = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip() and "WARNING" not in ln]
            reason = errors[-1].strip() if errors else f"pip exited {proc.returncode} with {len(wheels)} wheels"
            raise ZooUnavailable(f"zoo: cannot download {package}: {reason}")
        dest.mkdir(parents=True, exist_ok=True)
        return Path(shutil.move(str(wheels[0]), dest / wheels[0].name))


def _extract(wheel: Path, member: str, target: Path, package: str) -> None:
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
            target.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=target.parent, prefix=".extract-", delete=False) as out:
                shutil.copyfileobj(src, out)
        os.replace(out.name, target)  # atomic: readers never see a half-written model
    except KeyError as exc:
        raise ZooUnavailable(f"zoo: {package} ({wheel.name}) has no member {member}") from exc
    except zipfile.BadZipFile as exc:
        wheel.unlink(missing_ok=True)
        raise ZooUnavailable(f"zoo: {package}: corrupt wheel {wheel.name} (removed; retry)") from exc


def model_path(model: ZooModel) -> Path:
    """The local path of `model`'s file: `<cache>/<name>-<version>/<member>`, fetched on first use.

    The wheel is kept in `<cache>/<name>-<version>/wheel/` so the other members of the same package need no new
    download. An exclusive fcntl lock per package makes parallel test processes wait for one download."""
    root = cache_dir()
    name, _, version = model.package.partition("==")
    if not version:
        raise ValueError(f"zoo: {model.name}: package must be pinned as 'name==version', got {model.package!r}")
    pkg_dir = root / f"{name}-{version}"
    target = pkg_dir / model.member
    if target.is_file():
        return target
    try:
        pkg_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ZooUnavailable(f"zoo: cache {root} is not writable for {model.package}: {exc}") from exc
    with _locked(root / f".{name}-{version}.lock"):
        if not target.is_file():
            wheel = _download_wheel(model.package, pkg_dir / "wheel")
            _extract(wheel, model.member, target, model.package)
    return target


def fetch_all(models: list[ZooModel] | tuple[ZooModel, ...] | None = None) -> dict[str, Path]:
    """Fetch every model (the whole catalog by default); name -> path."""
    from .catalog import MODELS

    return {m.name: model_path(m) for m in (MODELS if models is None else models)}
