#!/usr/bin/env bash
# The arm64 job (run by .ci/pyjobs.sh): a Debian bookworm arm64 userland (the base of Raspberry Pi OS 64-bit) under
# qemu-user-static, the project's wheel installed in it with the `agent` and `tflite` extras from the registry, an
# agent there serving an ONNX and a TFLite model pushed from a controller on this host; the answers must equal the
# host's (.ci/arm64_e2e.py). The runtimes read /proc/cpuinfo: an Arm one from the probe fixtures is bind-mounted over
# it. A first case runs without it, where ONNX Runtime crashes (SIGSEGV) under qemu: the agent must stay up, fail the
# push naming the signal, and `edge-agent doctor` must name the crash (EDGE_ARM64_CRASH_CASE: "assert" (default),
# "report" records what happens without failing the job, "off" skips it).
set -euo pipefail
cd "$(dirname "$0")/.."
. .ci/userland.sh

CPUINFO=tests/fixtures/probe/rpi5/proc/cpuinfo
VENV=/opt/edgefleet-venv
CRASH_CASE=${EDGE_ARM64_CRASH_CASE:-assert}
OUT=${EDGE_ARM64_OUT:-$EDGE_USERLAND_CACHE/arm64-job}
HOST_PY=.venv/bin/python

can_build_userlands arm64 || exit 0
enable_binfmt arm64 || exit 0
if [ ! -x "$HOST_PY" ] || ! "$HOST_PY" -c 'import controller.service, onnxruntime, ai_edge_litert' 2>/dev/null; then
    skip_loudly arm64 "the host's .venv lacks the controller or the reference runtimes (pip install -e '.[all]')"
    exit 0
fi
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
    skip_loudly arm64 "no mosquitto on the host for the controller and the agent to meet"
    exit 0
fi
t0=$SECONDS
if ! root=$(userland bookworm arm64); then
    skip_loudly arm64 "debootstrap of Debian bookworm arm64 failed (is $EDGE_DEBIAN_MIRROR reachable? log above)"
    exit 0
fi
trap leave_all EXIT
trap 'exit 143' TERM INT  # killed by pyjobs' time limit: the EXIT trap still unmounts
enter "$root" || { say "arm64: FAILED: mounts under $root could not be undone or made"; exit 1; }
say "arm64: $(in_userland "$root" uname -m), $(in_userland "$root" python3 --version) in $root"

# The wheel with the agent and tflite extras, as a board installs it: prebuilt aarch64 wheels from the registry.
WHEEL_DIR=$(mktemp -d)
"$HOST_PY" -m pip wheel -q --no-deps -w "$WHEEL_DIR" .
whl=$(basename "$(ls "$WHEEL_DIR"/edgefleet-*.whl)")
mkdir -p "$root/srv/wheels" && rm -f "$root"/srv/wheels/*.whl && cp "$WHEEL_DIR/$whl" "$root/srv/wheels/"
rm -rf "$WHEEL_DIR"
t_install=$SECONDS
if [ ! -x "$root$VENV/bin/python" ]; then
    in_userland "$root" python3 -m venv "$VENV"
    in_userland "$root" "$VENV/bin/python" -m pip install -q --upgrade pip
fi
in_userland "$root" "$VENV/bin/pip" install -q --only-binary=:all: "/srv/wheels/$whl[agent,tflite]"
in_userland "$root" "$VENV/bin/pip" install -q --force-reinstall --no-deps "/srv/wheels/$whl"
say "arm64: installed in $((SECONDS - t_install)) s; $(in_userland "$root" "$VENV/bin/pip" list 2>/dev/null \
    | grep -iE '^(onnxruntime|ai-edge-litert|numpy) ' | tr -s ' ' | paste -sd, -)"

mkdir -p "$OUT"
rc=0
if [ "$CRASH_CASE" != off ]; then
    # Without an Arm cpuinfo first: under qemu the runtimes read the host's x86 one (issue 14's crash).
    say "arm64: crash case (the host's /proc/cpuinfo), $CRASH_CASE"
    flag=()
    [ "$CRASH_CASE" = assert ] && flag=(--assert-survives)
    "$HOST_PY" .ci/arm64_e2e.py --root "$root" --venv "$VENV" --case crash --work "$OUT/crash" \
        --report "$OUT/crash.json" --push-timeout 300 "${flag[@]}" || { [ "$CRASH_CASE" = assert ] && rc=1; }
fi
bind_over "$root" "$PWD/$CPUINFO" /proc/cpuinfo
say "arm64: serve case, /proc/cpuinfo from $CPUINFO ($(grep -m1 '^Model' "$CPUINFO" | cut -d: -f2-))"
"$HOST_PY" .ci/arm64_e2e.py --root "$root" --venv "$VENV" --case serve --work "$OUT/serve" \
    --report "$OUT/serve.json" || rc=1
leave_all
trap - EXIT
if [ "$rc" = 0 ]; then say "arm64: passed in $((SECONDS - t0)) s (reports in $OUT)"; else say "arm64: FAILED (reports in $OUT)"; fi
exit "$rc"
