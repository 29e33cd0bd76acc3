"""`edgectl bundle`: a wheelhouse of the agent and its runtime wheels for a device's platform and Python, fetched
here with pip's platform options, so that `systemd/install.sh --from DIR` installs it on a device with no network."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from edgectl.errors import CommandFailed, cannot_read
from edgectl.options import JsonOpt
from edgectl.output import Settings, console, emit_json, errors
from protocol.files import sha256_file

PACKAGE = "edgefleet"
ARCHES = {"linux-aarch64": "aarch64", "linux-x86_64": "x86_64"}
OLDEST_GLIBC_MINOR = 17  # manylinux2014 = glibc 2.17
SYSTEMD_FILES = ("install.sh", "edge-agent.service", "agent.toml.example")
MANIFEST = "bundle.env"  # KEY=VALUE lines that install.sh reads with sed (no JSON parser on the device needed)
REQUIREMENTS = "requirements.txt"  # every wheel pinned (==) with its sha256: pip --require-hashes --no-deps
SUMS = "SHA256SUMS"  # every file of the bundle (sha256sum -c): install.sh refuses a changed, missing or extra wheel


def project_root() -> Path | None:
    """The checkout edgectl runs from (it has pyproject.toml), or None for an installed wheel."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() and (root / "agent").is_dir() else None


def pip_platforms(arch: str, glibc: str) -> list[str]:
    """pip --platform tags a device with this glibc runs: manylinux_2_N for every N down to 2.17, and the legacy
    alias manylinux2014 (pip matches tags exactly, so each must be listed)."""
    major, _, minor = glibc.partition(".")
    if major != "2" or not minor.isdigit() or int(minor) < OLDEST_GLIBC_MINOR:
        raise CommandFailed(
            f"--glibc {glibc!r}: expected 2.N with N >= {OLDEST_GLIBC_MINOR}, e.g. 2.31 (ldd --version)"
        )
    tags = [f"manylinux_2_{n}_{arch}" for n in range(int(minor), OLDEST_GLIBC_MINOR - 1, -1)]
    return [*tags, f"manylinux2014_{arch}"]


def python_tag(python: str) -> str:
    major, _, minor = python.partition(".")
    if major != "3" or not minor.isdigit() or int(minor) < 11:
        raise CommandFailed(f"--python {python!r}: expected the device's Python as 3.N with N >= 11, e.g. 3.11")
    return f"3{minor}"


PIP_CODE = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)+")  # pip's own labels: subprocess-exited-with-error, ...
PIP_SUMMARY = ("Failed building wheel", "Failed to build")  # pip's summaries of a failure told above them
# Can this Python build a wheel without pip fetching a build environment? setuptools, with bdist_wheel: built in
# from setuptools 70.1, from the `wheel` package before (a venv's bundled setuptools 65 has neither).
CAN_BUILD_HERE = (
    "import importlib.util as u, sys; sys.exit(0 if u.find_spec('setuptools') and "
    "(u.find_spec('setuptools.command.bdist_wheel') or u.find_spec('wheel')) else 1)"
)


def pip_cause(output: str) -> str:
    """The line of pip's output that says why it failed: the innermost error (a build backend's `error: invalid
    command 'bdist_wheel'`), not pip's labels and summaries around it (`hint: See above for details.`)."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    causes = []
    for line in lines:
        head, sep, message = line.partition(":")
        message = message.strip()
        labelled = PIP_CODE.fullmatch(message) or message.startswith(PIP_SUMMARY)
        if sep and head in ("ERROR", "error") and not labelled:
            causes.append(message)
    return causes[-1] if causes else (lines[-1] if lines else "pip printed nothing")


def run_pip(args: list[str], what: str, python: str | None = None) -> None:
    """Run pip (of `python`, default this one); CommandFailed with the line that says why (all of pip's output with
    --verbose)."""
    result = subprocess.run([python or sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    if Settings.verbose:
        errors.print(result.stdout + result.stderr, highlight=False, markup=False)
    if result.returncode != 0:
        cause = pip_cause(result.stdout + "\n" + result.stderr)
        fix = "; pip install wheel in this environment" if "bdist_wheel" in cause else ""
        raise CommandFailed(f"{what} failed: {cause}{fix} (--verbose shows pip's output)")


def source_copy(root: Path, into: Path) -> Path:
    """The checkout's packaging inputs copied to `into`: setuptools builds there, leaving no build/ in the
    checkout and taking no stale module from an earlier build."""
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(root / name, into / name)
    for package in sorted(p.parent for p in root.glob("*/__init__.py")):
        if package.name not in ("tests", "bench"):
            shutil.copytree(package, into / package.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return into


def build_wheel(out: Path, python: str | None = None) -> Path:
    """The edgefleet wheel built from this checkout into `out` (by `python`'s pip, default this one)."""
    root = project_root()
    if root is None:
        raise CommandFailed("edgectl is not run from a checkout: give the edgefleet wheel with --wheel FILE")
    with tempfile.TemporaryDirectory(prefix="edgectl-bundle-") as tmp:
        return build_wheel_from(source_copy(root, Path(tmp)), out, python)


def builds_here(python: str) -> bool:
    """Whether `python`'s setuptools can build the wheel itself (no build environment fetched by pip)."""
    return subprocess.run([python, "-c", CAN_BUILD_HERE], capture_output=True).returncode == 0


def build_wheel_from(source: Path, out: Path, python: str | None = None, isolated: bool | None = None) -> Path:
    """Build with the environment's setuptools where it can build wheels, else in pip's isolated build environment
    (setuptools fetched as pyproject.toml asks): works from every documented venv, [agent,controller] included."""
    python = python or sys.executable
    args = ["wheel", "--no-deps", "--quiet", "--wheel-dir", str(out.resolve()), str(source)]
    if not (isolated if isolated is not None else not builds_here(python)):
        args.insert(1, "--no-build-isolation")
    run_pip(args, f"building the {PACKAGE} wheel", python)
    return newest_wheel(out)


def newest_wheel(directory: Path) -> Path:
    wheels = sorted(directory.glob(f"{PACKAGE}-*.whl"), key=lambda p: p.stat().st_mtime)
    if not wheels:
        raise CommandFailed(f"no {PACKAGE} wheel in {directory}")
    return wheels[-1]


def bundle(
    out: Annotated[Path, typer.Option("--out", help="Directory for the wheelhouse (created).")] = Path("agent-bundle"),
    platform: Annotated[str, typer.Option(help=f"The device's platform: {', '.join(ARCHES)}.")] = "linux-aarch64",
    python: Annotated[str, typer.Option(help="The device's Python version, e.g. 3.11.")] = "3.11",
    extras: Annotated[str, typer.Option(help="Extras of the agent to include, comma-separated.")] = "agent",
    glibc: Annotated[str, typer.Option(help="The device's glibc (ldd --version), e.g. 2.31.")] = "2.28",
    wheel: Annotated[
        Path | None, typer.Option(help="A built edgefleet wheel (default: build one from this checkout).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Fetch the agent and its runtime wheels for a device (any platform, from here) into one directory that
    `systemd/install.sh --from DIR` installs with no network."""
    if platform not in ARCHES:
        raise CommandFailed(f"--platform {platform!r}: expected one of {', '.join(ARCHES)}")
    tags = pip_platforms(ARCHES[platform], glibc)
    abi = f"cp{python_tag(python)}"
    wanted = ",".join(e.strip() for e in extras.split(",") if e.strip())
    if wheel is not None and not wheel.is_file():
        raise CommandFailed(cannot_read("wheel", wheel))
    if out.is_dir() and any(out.iterdir()):
        raise CommandFailed(f"--out {out} is not empty: a bundle is exactly what its directory holds; give a new one")
    out.mkdir(parents=True, exist_ok=True)
    with errors.status(f"building the {PACKAGE} wheel", spinner="dots"):
        own = shutil.copy2(wheel, out) if wheel is not None else build_wheel(out)
    requirement = f"{PACKAGE}[{wanted}] @ {Path(own).resolve().as_uri()}" if wanted else str(Path(own).resolve())
    args = ["download", "--dest", str(out), "--only-binary=:all:", "--python-version", python, "--implementation",
            "cp", "--abi", abi, *(a for tag in tags for a in ("--platform", tag)), requirement]  # fmt: skip
    with errors.status(f"fetching wheels for {platform}, Python {python}", spinner="dots"):
        run_pip(args, f"fetching wheels for {platform} / Python {python}")
    copied = copy_installer(out)
    wheels = sorted(p.name for p in out.glob("*.whl"))
    manifest = {"PACKAGE": PACKAGE, "VERSION": Path(own).name.split("-")[1], "EXTRAS": wanted,
                "PLATFORM": platform, "ARCH": ARCHES[platform], "PYTHON": python}  # fmt: skip
    (out / MANIFEST).write_text("".join(f"{k}={v}\n" for k, v in manifest.items()))
    pin(out)
    size = sum(p.stat().st_size for p in out.glob("*.whl"))
    if as_json:
        return emit_json({**{k.lower(): v for k, v in manifest.items()}, "out": str(out), "wheels": wheels,
                          "bytes": size, "installer": copied})  # fmt: skip
    console.print(f"bundled {PACKAGE}[{wanted}] for {platform}, Python {python}: {len(wheels)} wheels, "
                  f"{size / 1e6:.1f} MB in {out}", highlight=False, markup=False)  # fmt: skip
    how = f"{out}/systemd/install.sh --from {out}" if copied else f"systemd/install.sh --from {out}"
    console.print(
        f"on the device (no network needed): {how} --broker mqtt://BROKER:1883", highlight=False, markup=False
    )
    return None


def pin(out: Path) -> None:
    """requirements.txt with every wheel pinned by version and sha256 (what install.sh installs, nothing else), and
    SHA256SUMS of every file, so a wheel changed, added or taken away after bundling is refused by name."""
    lines = [f"# Generated by `edgectl bundle`: install with pip --require-hashes --no-deps -r {REQUIREMENTS}"]
    for path in sorted(out.glob("*.whl")):
        name, version = path.name.split("-")[:2]
        lines.append(f"{name}=={version} --hash=sha256:{sha256_file(path)}")
    (out / REQUIREMENTS).write_text("\n".join(lines) + "\n")
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name != SUMS)
    (out / SUMS).write_text("".join(f"{sha256_file(p)}  {p.relative_to(out).as_posix()}\n" for p in files))


def copy_installer(out: Path) -> bool:
    """install.sh and the unit beside the wheels, so the bundle is all a device needs; False outside a checkout."""
    root = project_root()
    if root is None:
        return False
    (out / "systemd").mkdir(exist_ok=True)
    for name in SYSTEMD_FILES:
        shutil.copy2(root / "systemd" / name, out / "systemd" / name)
    return True


COMMANDS = (bundle,)
