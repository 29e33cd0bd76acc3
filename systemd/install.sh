#!/usr/bin/env bash
# Install the edge agent as a systemd service: venv under /opt/edge-agent with the extras that suit this hardware,
# /etc/edge-agent/agent.toml from the flags, the edge-agent system user, the unit, enabled and started.
# Running it again changes nothing that is already right. `--uninstall` removes the service and the venv (the config
# and /var/lib/edge-agent stay). `--root DIR` installs into a scratch root: no user is created and systemctl is not
# run, the script prints what it would do; `--no-pip` skips creating the venv and installing packages.
# `--from DIR` installs from a wheelhouse made by `edgectl bundle` with no network: exactly the wheels its
# SHA256SUMS and requirements.txt pin (pip --no-index --require-hashes --no-deps); a wheel changed, missing or
# added after bundling is refused by name. EDGE_PYTHON names the interpreter for the venv (default python3).
# `--password-file FILE` copies the device's broker password to /etc/edge-agent/broker-password (kept out of the
# command line, the process list and agent.toml); the username defaults to the device id, as the broker's ACL wants.
set -euo pipefail

usage() {
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
    echo "usage: $0 [--broker URL] [--device-id ID] [--username U] [--password-file FILE] [--package SPEC]"
    echo "          [--extras LIST] [--from BUNDLE_DIR] [--root DIR] [--no-pip] [--uninstall]"
}

ROOT=/ BROKER="" DEVICE_ID="" USERNAME="" PASSWORD="" PASSWORD_FILE="" PACKAGE="edgefleet" EXTRAS="" NO_PIP=0
UNINSTALL=0 FROM=""
PY="${EDGE_PYTHON:-python3}"
while [ $# -gt 0 ]; do
    case "$1" in
        --broker) BROKER="$2"; shift 2 ;;
        --device-id) DEVICE_ID="$2"; shift 2 ;;
        --username) USERNAME="$2"; shift 2 ;;
        --password) echo "install.sh: --password would show the password in the process list and the shell history: write it to a file (first line) and pass --password-file FILE" >&2; exit 1 ;;
        --password-file) PASSWORD_FILE="$2"; shift 2 ;;
        --package) PACKAGE="$2"; shift 2 ;;
        --extras) EXTRAS="$2"; shift 2 ;;
        --from) FROM="$2"; shift 2 ;;
        --root) ROOT="$2"; shift 2 ;;
        --no-pip) NO_PIP=1; shift ;;
        --uninstall) UNINSTALL=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
done

HERE="$(cd "$(dirname "$0")" && pwd)"
R="${ROOT%/}"                       # "" for the real root
LIVE=0; [ -z "$R" ] && LIVE=1       # act on the running system (users, systemctl) only for the real root
PREFIX="$R/opt/edge-agent"
CONF_DIR="$R/etc/edge-agent"
UNIT_DIR="$R/etc/systemd/system"
UNIT=edge-agent.service
SERVICE_USER=edge-agent

say() { echo "install.sh: $*"; }
would() { say "would run: $*"; }

systemctl_or_print() {
    if [ "$LIVE" = 1 ] && command -v systemctl >/dev/null 2>&1; then
        systemctl "$@"
    else
        would "systemctl $*"
    fi
}

# write FILE MODE: stdin to FILE when it differs; "unchanged" otherwise (what makes a second run a no-op)
write() {
    local file="$1" mode="$2" tmp
    tmp="$(mktemp)"
    cat >"$tmp"
    mkdir -p "$(dirname "$file")"
    if [ -f "$file" ] && cmp -s "$tmp" "$file"; then
        rm -f "$tmp"; say "unchanged $file"
    else
        install -m "$mode" "$tmp" "$file"; rm -f "$tmp"; say "wrote $file"
    fi
}

# Jetson: /etc/nv_tegra_release (L4T's release line), else the device-tree model (docs/jetson.md).
is_jetson() {
    [ -e "$R/etc/nv_tegra_release" ] ||
        { [ -r "$R/proc/device-tree/model" ] && tr -d '\0' <"$R/proc/device-tree/model" | grep -q "Jetson"; }
}
l4t_major() { head -1 "$R/etc/nv_tegra_release" 2>/dev/null | sed -n 's/^# R\([0-9][0-9]*\).*/\1/p'; }
l4t_revision() { head -1 "$R/etc/nv_tegra_release" 2>/dev/null | sed -n 's/.*REVISION: \([0-9][0-9]*\).*/\1/p'; }

# NVIDIA's index of onnxruntime-gpu wheels for this JetPack (cp310), "" where there is none for the agent's Python.
jetson_index() {
    if [ -n "${EDGE_JETSON_INDEX:-}" ]; then echo "$EDGE_JETSON_INDEX"; return 0; fi
    [ "$(l4t_major)" = 36 ] || return 0
    local rev
    rev="$(l4t_revision)"
    if [ -n "$rev" ] && [ "$rev" -lt 4 ]; then
        echo "https://pypi.jetson-ai-lab.io/jp6/cu122"   # JetPack 6.0 (L4T R36.2/R36.3): CUDA 12.2
    else
        echo "https://pypi.jetson-ai-lab.io/jp6/cu126"   # JetPack 6.1/6.2 (L4T R36.4): CUDA 12.6
    fi
}

detect_extras() {
    if is_jetson; then
        local major
        major="$(l4t_major)"
        if [ "$major" = 36 ] || [ -n "${EDGE_JETSON_INDEX:-}" ]; then
            echo "gpu"                            # JetPack 6: onnxruntime-gpu from NVIDIA's index (jetson_index)
        elif [ -z "$major" ]; then
            say "Jetson without a readable /etc/nv_tegra_release: JetPack unknown, installing the CPU runtime;" \
                "set EDGE_JETSON_INDEX to NVIDIA's index for its JetPack to get onnxruntime-gpu (docs/jetson.md)" >&2
            echo "agent"
        else
            say "Jetson with L4T R$major: no onnxruntime-gpu index known for the agent's Python (3.9+) there;" \
                "installing the CPU runtime (docs/jetson.md: a Jetson Zoo wheel can be installed by hand)" >&2
            echo "agent"
        fi
    elif { [ -r "$R/proc/device-tree/model" ] && tr -d '\0' <"$R/proc/device-tree/model" | grep -q "Raspberry Pi"; } ||
        grep -qE '^Model[[:space:]]*: Raspberry Pi' "$R/proc/cpuinfo" 2>/dev/null; then   # no device tree: cpuinfo
        echo "agent,tflite"
    elif [ -d "$R/dev/dri" ]; then
        echo "agent,openvino"                     # x86 with an Intel GPU (OpenVINO's GPU plugin)
    else
        echo "agent"
    fi
}

if [ "$UNINSTALL" = 1 ]; then
    systemctl_or_print disable --now "$UNIT"
    if [ -f "$UNIT_DIR/$UNIT" ]; then rm -f "$UNIT_DIR/$UNIT"; say "removed $UNIT_DIR/$UNIT"; fi
    systemctl_or_print daemon-reload
    if [ -d "$PREFIX" ]; then rm -rf "$PREFIX"; say "removed $PREFIX"; fi
    say "kept $CONF_DIR and $R/var/lib/edge-agent (remove them by hand to forget this device)"
    exit 0
fi

die() { echo "install.sh: $*" >&2; exit 1; }
bundle_value() { sed -n "s/^$1=//p" "$FROM/bundle.env" | head -1; }
verify_bundle() {  # every file as bundled, no wheel beside them, the package pinned at the bundle's version
    local sums="$FROM/SHA256SUMS" bad whl
    [ -f "$sums" ] && [ -f "$FROM/requirements.txt" ] ||
        die "--from $FROM: no SHA256SUMS or requirements.txt (a bundle made before they were); make it again with 'edgectl bundle'"
    bad="$(cd "$FROM" && sha256sum -c "$sums" 2>/dev/null | sed -n 's/: FAILED.*$//p' | head -1)" || true
    [ -z "$bad" ] || die "--from $FROM: $bad is not the file that was bundled (its sha256 differs from SHA256SUMS); make the bundle again"
    for whl in "$FROM"/*.whl; do
        [ -e "$whl" ] || continue
        awk -v name="$(basename "$whl")" '$2 == name { found = 1 } END { exit !found }' "$sums" ||
            die "--from $FROM: $(basename "$whl") was not in the bundle (not in SHA256SUMS); remove it or make the bundle again"
    done
    grep -q "^$PACKAGE==$(bundle_value VERSION) " "$FROM/requirements.txt" ||
        die "--from $FROM: requirements.txt does not pin $PACKAGE==$(bundle_value VERSION) (bundle.env); make the bundle again"
}

PIP_SOURCE=()
if [ -n "$FROM" ]; then  # an offline wheelhouse from `edgectl bundle`: check it suits this box before touching it
    [ -f "$FROM/bundle.env" ] || die "--from $FROM: no bundle.env there; make the bundle with 'edgectl bundle --out DIR'"
    FROM="$(cd "$FROM" && pwd)"
    PACKAGE="$(bundle_value PACKAGE)"
    [ -n "$EXTRAS" ] || EXTRAS="$(bundle_value EXTRAS)"
    want_arch="$(bundle_value ARCH)" want_py="$(bundle_value PYTHON)"
    [ "$(uname -m)" = "$want_arch" ] ||
        die "--from $FROM: the bundle is for $want_arch but this machine is $(uname -m); make it with 'edgectl bundle --platform linux-$(uname -m)'"
    have_py="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" ||
        die "EDGE_PYTHON=$PY does not run; install Python $want_py or point EDGE_PYTHON at it"
    [ "$have_py" = "$want_py" ] ||
        die "--from $FROM: the bundle is for Python $want_py but $PY is $have_py; make it with 'edgectl bundle --python $have_py' or set EDGE_PYTHON"
    bundled="$(bundle_value EXTRAS)"
    [ "$EXTRAS" = "$bundled" ] ||
        die "--from $FROM: the bundle holds extras $bundled, not $EXTRAS; make one with 'edgectl bundle --extras $EXTRAS'"
    verify_bundle
    PIP_SOURCE=(--no-index --find-links "$FROM" --require-hashes --no-deps -r "$FROM/requirements.txt")
    say "installing from the bundle $FROM (no network): $PACKAGE $(bundle_value VERSION), extras $EXTRAS," \
        "every wheel as SHA256SUMS and requirements.txt pin it"
else
    [ -n "$EXTRAS" ] || EXTRAS="$(detect_extras)"
    say "extras for this hardware: $EXTRAS"
    if [ "$EXTRAS" = gpu ] && is_jetson && JETSON_INDEX="$(jetson_index)" && [ -n "$JETSON_INDEX" ]; then
        export PIP_EXTRA_INDEX_URL="$JETSON_INDEX${PIP_EXTRA_INDEX_URL:+ $PIP_EXTRA_INDEX_URL}"
        say "onnxruntime-gpu from NVIDIA's Jetson index (L4T R$(l4t_major)$(l4t_revision | sed 's/^/./')):" \
            "PIP_EXTRA_INDEX_URL=$JETSON_INDEX"
    fi
fi

# 1. the venv and the packages
if [ "$NO_PIP" = 1 ]; then
    if [ -n "$FROM" ]; then what="${PIP_SOURCE[*]}"; else what="'$PACKAGE[$EXTRAS]'"; fi
    would "$PY -m venv $PREFIX/venv && $PREFIX/venv/bin/pip install $what"
else
    [ -x "$PREFIX/venv/bin/python" ] || "$PY" -m venv "$PREFIX/venv"
    if [ -n "$FROM" ]; then  # exactly the pinned, hashed wheels; nothing resolved, nothing newer picked up
        "$PREFIX/venv/bin/pip" install -q "${PIP_SOURCE[@]}"
    else
        "$PREFIX/venv/bin/pip" install -q --upgrade "$PACKAGE[$EXTRAS]"
    fi
    say "installed $PACKAGE[$EXTRAS] into $PREFIX/venv"
fi

# 2. the config: the flags given, else what the existing file says (a re-run without flags keeps it)
existing() {  # a string key's value from the current config, TOML escapes undone
    [ -f "$CONF_DIR/agent.toml" ] || return 0
    sed -n "s/^$1 = \"\(.*\)\"$/\1/p" "$CONF_DIR/agent.toml" | head -1 | sed 's/\\\(.\)/\1/g'
}
[ -n "$BROKER" ] || BROKER="$(existing broker)"
[ -n "$DEVICE_ID" ] || DEVICE_ID="$(existing device_id)"
[ -n "$USERNAME" ] || USERNAME="$(existing username)"
SECRET=/etc/edge-agent/broker-password     # where the agent reads the password (the live path, also under --root)
if [ -n "$PASSWORD_FILE" ]; then
    [ -r "$PASSWORD_FILE" ] || die "--password-file $PASSWORD_FILE: cannot read it"
    [ -n "$(head -1 "$PASSWORD_FILE")" ] || die "--password-file $PASSWORD_FILE: its first line is empty"
    head -1 "$PASSWORD_FILE" | tr -d '\r\n' | write "$CONF_DIR/broker-password" 0640
    PASSWORD=""
elif [ -z "$PASSWORD" ]; then
    PASSWORD="$(existing password)"
    [ -z "$(existing password_file)" ] || PASSWORD_FILE="$(existing password_file)"
fi
if [ -z "$USERNAME" ] && [ -n "$PASSWORD$PASSWORD_FILE" ] && [ -n "$DEVICE_ID" ]; then
    USERNAME="$DEVICE_ID"; say "broker username: $USERNAME (the device id, as the broker's ACL expects)"
fi
toml() { printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g'; }
{
    echo "# Written by systemd/install.sh; every key is documented in agent.toml.example."
    [ -z "$DEVICE_ID" ] || echo "device_id = \"$(toml "$DEVICE_ID")\""
    echo "broker = \"$(toml "${BROKER:-mqtt://127.0.0.1:1883}")\""
    [ -z "$USERNAME" ] || echo "username = \"$(toml "$USERNAME")\""
    [ -z "$PASSWORD" ] || echo "password = \"$(toml "$PASSWORD")\""
    [ -z "$PASSWORD_FILE" ] || echo "password_file = \"$SECRET\""
    echo "data_dir = \"/var/lib/edge-agent\""
} | write "$CONF_DIR/agent.toml" 0640
write "$CONF_DIR/agent.toml.example" 0644 <"$HERE/agent.toml.example"

# 3. the service user (in the video/render groups where they exist, for the GPUs)
if [ "$LIVE" = 1 ]; then
    if ! id "$SERVICE_USER" >/dev/null 2>&1; then
        useradd --system --home-dir /var/lib/edge-agent --no-create-home --shell /usr/sbin/nologin "$SERVICE_USER"
        say "created user $SERVICE_USER"
    fi
    for group in video render; do
        if getent group "$group" >/dev/null && ! id -nG "$SERVICE_USER" | grep -qw "$group"; then
            usermod -aG "$group" "$SERVICE_USER"; say "added $SERVICE_USER to $group"
        fi
    done
    chgrp "$SERVICE_USER" "$CONF_DIR/agent.toml"
    [ ! -f "$CONF_DIR/broker-password" ] || chgrp "$SERVICE_USER" "$CONF_DIR/broker-password"
else
    would "useradd --system --shell /usr/sbin/nologin $SERVICE_USER; usermod -aG video,render $SERVICE_USER"
fi

# 4. the unit, enabled and started
write "$UNIT_DIR/$UNIT" 0644 <"$HERE/$UNIT"
systemctl_or_print daemon-reload
systemctl_or_print enable --now "$UNIT"
say "done: 'systemctl status edge-agent' and 'journalctl -u edge-agent' show it; '$PREFIX/venv/bin/edge-agent doctor' checks it"
