# Sourced by the device jobs (.ci/pyjobs.sh): Debian userlands built with debootstrap, cached between CI runs,
# entered with chroot. Why: the agent must run on the Pythons and CPUs devices have, not only on this machine's.
# shellcheck shell=bash

EDGE_USERLAND_CACHE=${EDGE_USERLAND_CACHE:-/var/cache/edgefleet/userlands}
EDGE_DEBIAN_MIRROR=${EDGE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
# What every userland holds: the distribution's Python, venv, a broker for the tests' own Mosquitto.
EDGE_USERLAND_PACKAGES=python3,python3-venv,ca-certificates,mosquitto
_EDGE_MOUNTS=()

say() { printf '[device-jobs %(%H:%M:%S)T] %s\n' -1 "$*"; }

# Prints SKIP lines that CI logs show; a job that cannot run here must say so, never pass silently.
skip_loudly() {
    printf '\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n'
    printf '!!! SKIPPED %s: %s\n' "$1" "$2"
    printf '!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\n'
}

# can_build_userlands JOB: root, debootstrap (installed with apt-get when missing) and chroot; else why not.
can_build_userlands() {
    if [ "$(id -u)" != 0 ]; then skip_loudly "$1" "needs root (debootstrap, chroot, mount)"; return 1; fi
    if ! command -v debootstrap >/dev/null 2>&1; then
        say "installing debootstrap with apt-get"
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap) >/dev/null 2>&1 || true
    fi
    if ! command -v debootstrap >/dev/null 2>&1; then skip_loudly "$1" "debootstrap is not installed and apt-get could not install it"; return 1; fi
    return 0
}

# unmount_stale DIR: mounts a killed run left under DIR, undone before anything there is removed or mounted again
# (rm -rf through a bind-mounted /dev would empty the host's). Fails when one stays.
unmount_stale() {
    local dir=$1 m
    while read -r m; do
        umount -R "$m" 2>/dev/null || umount -lR "$m" 2>/dev/null || true
    done < <(awk -v d="$dir/" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r)
    ! awk -v d="$dir/" 'index($2, d) == 1 {found = 1} END {exit !found}' /proc/mounts
}

# userland SUITE ARCH [EXTRA_PACKAGES]: prints the root of a cached Debian userland, building it on first use.
# A foreign ARCH runs its second stage under qemu-user-static (binfmt_misc must be enabled: see enable_binfmt).
userland() {
    local suite=$1 arch=$2 extra=${3:-}
    local packages=$EDGE_USERLAND_PACKAGES${extra:+,$extra}
    local root=$EDGE_USERLAND_CACHE/$suite-$arch
    local stamp="$suite $arch $packages"
    if [ -f "$root/.edgefleet-userland" ] && [ "$(cat "$root/.edgefleet-userland")" = "$stamp" ]; then
        say "userland $suite/$arch: cached at $root" >&2
        echo "$root"
        return 0
    fi
    mkdir -p "$EDGE_USERLAND_CACHE"
    unmount_stale "$root" && unmount_stale "$root.tmp" || { say "mounts under $root stay; not rebuilding" >&2; return 1; }
    rm -rf "$root.tmp"
    say "userland $suite/$arch: building with debootstrap (${packages})" >&2
    local t0=$SECONDS log=$EDGE_USERLAND_CACHE/$suite-$arch.debootstrap.log
    if [ "$arch" = "$(dpkg --print-architecture)" ]; then
        debootstrap --variant=minbase --arch="$arch" --include="$packages" "$suite" "$root.tmp" "$EDGE_DEBIAN_MIRROR" >"$log" 2>&1 \
            || { tail -20 "$log" >&2; return 1; }
    else
        debootstrap --foreign --variant=minbase --arch="$arch" --include="$packages" "$suite" "$root.tmp" "$EDGE_DEBIAN_MIRROR" >"$log" 2>&1 \
            || { tail -20 "$log" >&2; return 1; }
        local qemu
        qemu=$(qemu_for "$arch") || return 1
        cp "$qemu" "$root.tmp/usr/bin/"
        chroot "$root.tmp" /debootstrap/debootstrap --second-stage >>"$log" 2>&1 || { tail -20 "$log" >&2; return 1; }
    fi
    echo "$stamp" >"$root.tmp/.edgefleet-userland"
    rm -rf "$root"
    mv "$root.tmp" "$root"
    say "userland $suite/$arch: built in $((SECONDS - t0)) s" >&2
    echo "$root"
}

qemu_for() {
    local q
    case $1 in arm64) q=/usr/bin/qemu-aarch64-static ;; armhf) q=/usr/bin/qemu-arm-static ;; *) return 1 ;; esac
    [ -x "$q" ] && echo "$q"
}

# enable_binfmt JOB: qemu-user-static registered with binfmt_misc so foreign binaries run; else says why not.
enable_binfmt() {
    if [ ! -x /usr/bin/qemu-aarch64-static ] || ! command -v update-binfmts >/dev/null 2>&1; then
        say "installing qemu-user-static binfmt-support with apt-get"
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user-static binfmt-support) \
            >/dev/null 2>&1 || true
    fi
    if [ ! -x /usr/bin/qemu-aarch64-static ]; then skip_loudly "$1" "qemu-user-static is not installed and apt-get could not install it"; return 1; fi
    if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
        mount binfmt_misc -t binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null \
            || { skip_loudly "$1" "binfmt_misc cannot be mounted here (no kernel support or no privilege)"; return 1; }
    fi
    update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
    if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || ! grep -q enabled /proc/sys/fs/binfmt_misc/qemu-aarch64; then
        skip_loudly "$1" "binfmt_misc has no enabled qemu-aarch64 entry (update-binfmts --enable qemu-aarch64 failed)"
        return 1
    fi
    return 0
}

# enter ROOT: mounts /proc, /sys, /dev (+pts, shm) and the host's CA bundle; leave_all undoes it (trap on EXIT).
enter() {
    local root=$1
    unmount_stale "$root" || return 1
    mount -t proc proc "$root/proc" && _EDGE_MOUNTS+=("$root/proc")
    mount --rbind /sys "$root/sys" && mount --make-rslave "$root/sys" && _EDGE_MOUNTS+=("$root/sys")
    mount --rbind /dev "$root/dev" && mount --make-rslave "$root/dev" && _EDGE_MOUNTS+=("$root/dev")
    cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
    # pip inside reaches the registry the way the host does (a host with its own CA bundle included).
    cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/host-ca.crt" 2>/dev/null || true
}

# bind_over ROOT SOURCE TARGET: a file bind-mounted over one inside the userland (e.g. an Arm /proc/cpuinfo).
bind_over() {
    mount --bind "$2" "$1$3" && _EDGE_MOUNTS+=("$1$3")
}

leave_all() {
    local i
    for ((i = ${#_EDGE_MOUNTS[@]} - 1; i >= 0; i--)); do
        umount -R "${_EDGE_MOUNTS[i]}" 2>/dev/null || umount -lR "${_EDGE_MOUNTS[i]}" 2>/dev/null || true
    done
    _EDGE_MOUNTS=()
}

# in_userland ROOT CMD...: runs CMD in the userland with a clean environment (no host venv, host pip config).
in_userland() {
    local root=$1
    shift
    chroot "$root" /usr/bin/env -i HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        LANG=C.UTF-8 PIP_CERT=/etc/ssl/certs/host-ca.crt PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=120 \
        "${EDGE_USERLAND_ENV[@]}" "$@"
}
EDGE_USERLAND_ENV=()

# copy_tree ROOT DEST: the project's files (tracked and new, not ignored) copied into ROOT/DEST, fresh each run.
copy_tree() {
    local root=$1 dest=$2
    rm -rf "${root:?}$dest"
    mkdir -p "$root$dest"
    git ls-files -z -co --exclude-standard | tar --null -T - --ignore-failed-read -cf - 2>/dev/null | tar -xf - -C "$root$dest"
}
