#!/bin/sh
# Make the local base image `flowrig-base:bookworm` (Debian bookworm minbase with python3,
# python3-venv and ca-certificates) without a registry: debootstrap a root file system and
# `docker import` it. The root Dockerfile only needs a Debian image whose python3 has venv,
# so this image stands in for python:3.12-slim where nothing can be pulled.
#
# Idempotent: when the image exists and its python3 can import venv, nothing is done.
#
# Environment:
#   IMAGE   tag to make (default flowrig-base:bookworm)
#   ROOTFS  an already debootstrapped root file system to import instead of running
#           debootstrap (it is copied, never modified)
#   MIRROR  Debian mirror (default http://deb.debian.org/debian)
#   DOCKER  docker client (default: docker on PATH)
#   ARCH    Debian architecture of the image (default: the host's); another one (arm64 on an
#           amd64 host) is debootstrapped with --foreign and finished under qemu-user-static
#           (binfmt handlers registered: apt-get install qemu-user-static binfmt-support),
#           and imported through BuildKit FROM scratch, which records the platform
#           (`docker import --platform` is ignored by some engines). About 15 minutes.
#   FORCE=1 rebuild even when the image exists
set -eu

IMAGE=${IMAGE:-flowrig-base:bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
DOCKER=${DOCKER:-docker}
SUITE=bookworm
PACKAGES=ca-certificates,python3,python3-venv

log() { printf '%s\n' "make-base-image: $*" >&2; }

if [ "${FORCE:-0}" != 1 ] && "$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1; then
    if "$DOCKER" run --rm --network none "$IMAGE" python3 -c "import venv, ensurepip" >/dev/null 2>&1; then
        log "$IMAGE exists and has python3 with venv: nothing to do"
        exit 0
    fi
    log "$IMAGE exists but its python3 lacks venv: rebuilding"
fi

WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/flowrig-base.XXXXXX")
trap 'rm -rf "$WORK"' EXIT INT TERM
DIR=$WORK/rootfs

if [ -n "${ROOTFS:-}" ]; then
    [ -x "$ROOTFS/usr/bin/python3" ] || { log "ROOTFS=$ROOTFS has no usr/bin/python3"; exit 2; }
    log "copying $ROOTFS"
    # A copy, so the caller's tree stays as it was (it may be shared).
    cp -a "$ROOTFS" "$DIR"
else
    command -v debootstrap >/dev/null || { log "debootstrap is not installed (apt-get install debootstrap)"; exit 2; }
    if [ -n "${ARCH:-}" ] && [ "$ARCH" != "$(dpkg --print-architecture)" ]; then
        case $ARCH in arm64) QEMU=aarch64 ;; amd64) QEMU=x86_64 ;; *) QEMU=$ARCH ;; esac
        [ -e "/proc/sys/fs/binfmt_misc/qemu-$QEMU" ] || {
            log "no qemu binfmt handler for $ARCH: apt-get install qemu-user-static binfmt-support"; exit 2; }
        log "debootstrap $SUITE for $ARCH from $MIRROR, second stage emulated (about 15 minutes)"
        debootstrap --arch="$ARCH" --foreign --variant=minbase --include="$PACKAGES" "$SUITE" "$DIR" "$MIRROR" \
            >"$WORK/debootstrap.log" 2>&1 && chroot "$DIR" /debootstrap/debootstrap --second-stage \
            >>"$WORK/debootstrap.log" 2>&1 || { tail -20 "$WORK/debootstrap.log" >&2; exit 3; }
    else
        log "debootstrap $SUITE from $MIRROR (about a minute)"
        debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$DIR" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
            || { tail -20 "$WORK/debootstrap.log" >&2; exit 3; }
    fi
fi

# What an image does not need: downloaded packages, package lists (run apt-get update
# before installing anything, as with the official slim images), manuals and translations.
# Copyright files stay.
rm -rf "$DIR"/var/cache/apt/archives/*.deb "$DIR"/var/cache/apt/*.bin \
       "$DIR"/var/lib/apt/lists/* "$DIR"/var/log/* \
       "$DIR"/usr/share/man/* "$DIR"/usr/share/info/* "$DIR"/usr/share/locale/* \
       "$DIR"/tmp/* "$DIR"/root/.cache
find "$DIR/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete 2>/dev/null || true
find "$DIR/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
# Leftovers of the host that debootstrap copies in.
: >"$DIR/etc/resolv.conf" 2>/dev/null || true
rm -f "$DIR/etc/hostname"

log "importing as $IMAGE"
if [ -n "${ARCH:-}" ]; then
    # FROM scratch with --platform: the image records the architecture it holds.
    mkdir "$WORK/import"
    tar --numeric-owner -C "$DIR" -cf "$WORK/import/rootfs.tar" .
    printf '%s\n' 'FROM scratch' 'ADD rootfs.tar /' 'ENV LANG=C.UTF-8' \
        'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' 'CMD ["/bin/bash"]' \
        >"$WORK/import/Dockerfile"
    DOCKER_BUILDKIT=1 "$DOCKER" build -q --platform "linux/$ARCH" -t "$IMAGE" "$WORK/import" >/dev/null
else
    tar --numeric-owner -C "$DIR" -c . | "$DOCKER" import \
        --change 'ENV LANG=C.UTF-8' \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/bin/bash"]' \
        - "$IMAGE" >/dev/null
fi

"$DOCKER" run --rm --network none "$IMAGE" python3 -c "import venv, ensurepip, sys; print(sys.version.split()[0])" \
    | sed "s/^/make-base-image: $IMAGE python3 /" >&2
"$DOCKER" image ls "$IMAGE" >&2
