#!/usr/bin/env bash
# Device jobs, run by .ci/run after the main suite: the agent's tests on the Pythons devices ship (Debian bullseye's
# 3.9, trixie's 3.13) and an arm64 userland under qemu serving pushed models (.ci/arm64_job.sh). Each job builds its
# Debian userland once (cached in $EDGE_USERLAND_CACHE) and skips loudly where this machine cannot run it.
# EDGE_DEVICE_JOBS selects jobs (default "py310-types py39 arm64 py313"; "none" skips all). py310-types: mypy as
# for JetPack 6's Python 3.10 on the agent's packages (stdlib and typing names newer than 3.10), no root needed.
set -euo pipefail
cd "$(dirname "$0")/.."
. .ci/userland.sh

# The agent's tests that need no controller: wire contract, runtimes layer, store, signing, the agent in-process.
AGENT_TESTS=(
    tests/unit/protocol/test_protocol.py tests/unit/protocol/test_typed_status.py tests/unit/protocol/test_signing.py
    tests/unit/agent/test_store.py tests/unit/agent/test_reservoir.py tests/unit/agent/test_inference_api.py
    tests/unit/agent/test_config.py tests/unit/agent/test_doctor_checks.py tests/unit/targets/test_targets_probe.py
    tests/unit/targets/test_targets_backends.py tests/unit/targets/test_targets_failover.py
    tests/unit/targets/test_targets_selection.py tests/unit/targets/test_targets_specialize.py
    tests/integration/test_doctor.py tests/integration/test_agent_inprocess.py
)
# What the tests need beside the agent: pytest, tritonclient, onnx (edgectl.sample_models builds the test models).
# On 3.9 the newest ONNX Runtime is 1.19 (IR <= 10): an onnx whose default IR it reads (the tests' own models).
TEST_DEPS=("pytest>=8" "pytest-timeout>=2.3" "hypothesis>=6" "tritonclient[http]>=2.40"
    "onnx>=1.15,<1.17; python_version < '3.10'" "onnx>=1.15; python_version >= '3.10'")
# On 3.9 this one imports converters/ (3.11+ like the controller: README), so the job leaves it out.
PY39_DESELECT=(--deselect tests/unit/protocol/test_typed_status.py::test_operator_facing_errors_derive_from_edge_error)
VENV=/opt/edgefleet-venv
RESULTS=()

build_wheel() {
    [ -n "${WHEEL:-}" ] && return 0
    local out
    out=$(mktemp -d)
    local py=python3
    [ -x .venv/bin/python ] && py=.venv/bin/python
    "$py" -m pip wheel -q --no-deps -w "$out" . >/dev/null
    WHEEL=$(ls "$out"/edgefleet-*.whl)
    say "built $(basename "$WHEEL")"
}

# install_agent ROOT EXTRAS: the project's wheel with EXTRAS (and the test deps) in a venv inside the userland.
# The venv is kept between runs (pip resolves only what changed); the wheel itself is reinstalled every run.
install_agent() {
    local root=$1 extras=$2 whl
    build_wheel
    whl=$(basename "$WHEEL")
    mkdir -p "$root/srv/wheels" && rm -f "$root"/srv/wheels/*.whl && cp "$WHEEL" "$root/srv/wheels/"
    if [ ! -x "$root$VENV/bin/python" ]; then
        in_userland "$root" python3 -m venv "$VENV" || return 1
        in_userland "$root" "$VENV/bin/python" -m pip install -q --upgrade pip || return 1
    fi
    # Wheels only, as a device installs them (no compiler there): an sdist-only pin fails here, naming itself.
    in_userland "$root" "$VENV/bin/pip" install -q --only-binary=:all: "/srv/wheels/$whl[$extras]" "${TEST_DEPS[@]}" \
        || return 1
    in_userland "$root" "$VENV/bin/pip" install -q --force-reinstall --no-deps "/srv/wheels/$whl" || return 1
}

# py_job NAME SUITE [PYTEST_ARGS...]: the agent's tests on SUITE's Python (amd64 userland).
py_job() {
    local name=$1 suite=$2 root t0=$SECONDS rc=0
    shift 2
    can_build_userlands "$name" || { RESULTS+=("$name: SKIPPED (see above)"); return 0; }
    if ! root=$(userland "$suite" amd64); then
        skip_loudly "$name" "debootstrap of Debian $suite failed (is $EDGE_DEBIAN_MIRROR reachable? log above)"
        RESULTS+=("$name: SKIPPED (debootstrap failed)")
        return 0
    fi
    trap leave_all EXIT
    trap 'exit 143' TERM INT
    if ! enter "$root"; then
        leave_all
        RESULTS+=("$name: FAILED (mounts under $root could not be undone or made)")
        return 1
    fi
    say "$name: $(in_userland "$root" python3 --version) in Debian $suite ($root)"
    if ! install_agent "$root" agent,openvino,tflite; then
        leave_all
        RESULTS+=("$name: FAILED (the wheel with agent,openvino,tflite did not install on $suite's Python)")
        return 1
    fi
    copy_tree "$root" /srv/edgefleet
    say "$name: installed in $((SECONDS - t0)) s; runtimes: $(in_userland "$root" "$VENV/bin/pip" list 2>/dev/null \
        | grep -iE '^(onnxruntime|openvino|ai-edge-litert|numpy|pydantic) ' | tr -s ' ' | paste -sd, -)"
    local run="cd /srv/edgefleet && $VENV/bin/pytest -q -p no:cacheprovider ${AGENT_TESTS[*]} $*" crashed=""
    in_userland "$root" /usr/bin/timeout 1200 /bin/sh -c "$run" || rc=$?
    # A native crash (exit 128+signal, not a failed test) is a runtime's, not the agent's: LiteRT 2.1's bundled
    # protobuf on 3.9 corrupts the heap at import in ~4% of runs (README, Python versions). Said loudly, run once more.
    if [ "$rc" -gt 128 ]; then
        crashed=" after a native crash (pytest exit $rc) and a second run"
        say "$name: PYTEST DIED OF SIGNAL $((rc - 128)) (a native crash in a runtime; its trace above): running once more"
        rc=0
        in_userland "$root" /usr/bin/timeout 1200 /bin/sh -c "$run" || rc=$?
    fi
    leave_all
    trap - EXIT
    if [ "$rc" = 0 ]; then RESULTS+=("$name: passed in $((SECONDS - t0)) s$crashed")
    else RESULTS+=("$name: FAILED (pytest exit $rc$crashed)"); fi
    return "$rc"
}

jobs=${EDGE_DEVICE_JOBS:-py310-types py39 arm64 py313}
failed=0
for job in $jobs; do
    case $job in
        py39) py_job py39 bullseye "${PY39_DESELECT[@]}" || failed=1 ;;
        py313) py_job py313 trixie || failed=1 ;;
        arm64)
            # Bounded: a cold build under emulation on a busy machine must not eat CI's 90 minutes.
            if timeout --kill-after=60 "${EDGE_ARM64_LIMIT_S:-2400}" bash .ci/arm64_job.sh; then
                RESULTS+=("arm64: passed or skipped (its lines above say which)")
            else
                RESULTS+=("arm64: FAILED or over ${EDGE_ARM64_LIMIT_S:-2400} s"); failed=1
            fi ;;
        py310-types)
            if .venv/bin/mypy --python-version 3.10 agent targets protocol daemon; then RESULTS+=("py310-types: passed")
            else RESULTS+=("py310-types: FAILED (mypy for Python 3.10 above)"); failed=1; fi ;;
        none) ;;
        *) echo "unknown device job $job" >&2; failed=1 ;;
    esac
done
[ -z "${WHEEL:-}" ] || rm -rf "$(dirname "$WHEEL")"
say "device jobs:"
for line in "${RESULTS[@]}"; do say "  $line"; done
exit "$failed"
