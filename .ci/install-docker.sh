#!/usr/bin/env bash
# Make a Docker engine answer on this machine and build the local test image.
#
# Idempotent, run as root on Debian (CI and developer machines alike): installs
# docker.io and busybox-static when missing, starts dockerd in the background
# (vfs storage: no overlay support is assumed inside a sandbox), waits until
# `docker info` answers, then imports orch-test/busybox:latest from the host's
# busybox-static. No registry is reachable, so nothing is ever pulled.
set -euo pipefail

IMAGE="${ORCH_TEST_IMAGE:-orch-test/busybox:latest}"
DOCKERD_LOG="${DOCKERD_LOG:-/tmp/dockerd.log}"
WAIT_SECONDS="${DOCKERD_WAIT:-60}"

say() { echo "install-docker: $*" >&2; }

engine_up() { timeout 10 docker info >/dev/null 2>&1; }

install_packages() {
    local missing=()
    command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
    # The image needs a static busybox (Debian's plain busybox is dynamic).
    dpkg -s busybox-static >/dev/null 2>&1 || missing+=(busybox-static)
    if [ "${#missing[@]}" -gt 0 ]; then
        say "installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

start_dockerd() {
    if pgrep -x dockerd >/dev/null 2>&1; then
        say "dockerd already running; waiting for it to answer"
        return
    fi
    say "starting dockerd (log: $DOCKERD_LOG)"
    # Its own session, output to a file: it outlives this script and the test
    # run's process group, and holds no pipe of the caller open.
    setsid nohup dockerd --storage-driver=vfs >"$DOCKERD_LOG" 2>&1 </dev/null &
}

wait_engine() {
    local deadline=$((SECONDS + WAIT_SECONDS))
    until engine_up; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            say "docker info did not answer within ${WAIT_SECONDS}s; dockerd log tail:"
            tail -n 30 "$DOCKERD_LOG" >&2 || true
            exit 1
        fi
        sleep 0.5
    done
}

build_image() {
    if docker image inspect "$IMAGE" >/dev/null 2>&1; then
        say "image $IMAGE present"
        return
    fi
    local root
    root="$(mktemp -d)"
    mkdir -p "$root/bin" "$root/tmp" "$root/www" "$root/etc"
    cp /bin/busybox "$root/bin/busybox"
    for applet in $("$root/bin/busybox" --list); do
        [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
    done
    chmod 1777 "$root/tmp"
    echo "root:x:0:0:root:/:/bin/sh" >"$root/etc/passwd"
    echo "root:x:0:" >"$root/etc/group"
    say "importing $IMAGE"
    tar -C "$root" -c . | docker import \
        -c 'ENV PATH=/bin' -c 'CMD ["/bin/sh"]' - "$IMAGE" >/dev/null
    rm -rf "$root"
}

if ! engine_up; then
    install_packages
    start_dockerd
    wait_engine
else
    install_packages
fi
build_image
say "engine up: $(docker version --format '{{.Server.Version}}' 2>/dev/null)"
