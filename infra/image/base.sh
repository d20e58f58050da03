#!/usr/bin/env bash
# Builds the jaco base image without a registry: mmdebstrap writes a minimal Debian bookworm
# rootfs (minbase + the packages listed in infra/image/packages) as a tarball, and
# `docker import` turns it into jaco-base:bookworm-<hash>. The hash covers this script and the
# package list, so an unchanged base is never rebuilt: when the tag exists, nothing happens.
#
#   infra/image/base.sh [BUILD_DIR]     prints the base tag as its last line of stdout
#
# Needs deb.debian.org, and root (mmdebstrap then uses its root mode: chroot, mounts /proc;
# as another user it tries its unshare mode). Installs mmdebstrap with apt-get when missing. Environment: JACO_BASE_REBUILD=1 rebuilds an
# existing tag (e.g. to pick up Debian security updates with the same package list).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(git -C "$here" rev-parse --show-toplevel)
build=${1:-$repo/build/image}
log() { echo "==> $*" >&2; }

# bookworm only, with its point-release and security updates: the suite is pinned, the
# versions are whatever the mirror serves that day (they are recorded in the image).
MIRRORS=(
  "deb http://deb.debian.org/debian bookworm main"
  "deb http://deb.debian.org/debian bookworm-updates main"
  "deb http://deb.debian.org/debian-security bookworm-security main"
)

packages=$(sed -e 's/#.*//' "$here/packages" | xargs | tr ' ' ',')
hash=$(cat "$here/packages" "$here/base.sh" | sha256sum | cut -c1-12)
tag="jaco-base:bookworm-$hash"

if docker image inspect "$tag" >/dev/null 2>&1 && [ "${JACO_BASE_REBUILD:-0}" != 1 ]; then
  log "base $tag exists: reused"
  echo "$tag"
  exit 0
fi

if ! command -v mmdebstrap >/dev/null; then
  log "installing mmdebstrap"
  sudo=""
  [ "$(id -u)" = 0 ] || sudo=sudo
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    mmdebstrap >/dev/null
fi

# The rootfs timestamps: the last commit that changed the base's inputs, so building the same
# inputs again gives the same tarball (mmdebstrap clamps mtimes and drops logs and caches).
epoch=$(git -C "$repo" log -1 --format=%ct -- infra/image/packages infra/image/base.sh)
epoch=${epoch:-$(git -C "$repo" log -1 --format=%ct)}

work="$build/base"
# --one-file-system: if an interrupted mmdebstrap left /proc or /dev mounted in its chroot,
# refuse to recurse into them instead of deleting through them.
cleanup() { rm -rf --one-file-system "$work"; }
trap cleanup EXIT
cleanup
mkdir -p "$work/tmp"

log "building the bookworm rootfs: minbase + $packages"
# Merged /usr the way debootstrap (and so debian:bookworm) does it: directory symlinks plus
# the usr-is-merged package. Without the hook apt satisfies init-system-helpers' "usrmerge |
# usr-is-merged" with usrmerge, which drags in perl (about 50 MB).
# Recommends stay out; docs, man pages and translations are never unpacked (the dpkg options
# stay in the image, so later installs skip them too), but copyright files are kept.
# The hook's $1 is the chroot, expanded by mmdebstrap's shell: the host's resolv.conf and
# hostname do not belong in an image (Docker provides both), and would make it host-specific.
# shellcheck disable=SC2016
TMPDIR="$work/tmp" SOURCE_DATE_EPOCH="$epoch" mmdebstrap \
  --quiet \
  --variant=minbase \
  --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
  --format=tar \
  --aptopt='APT::Install-Recommends "false"' \
  --aptopt='APT::Install-Suggests "false"' \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-exclude=/usr/share/lintian/*' \
  --include="$packages" \
  --customize-hook='rm -f "$1/etc/resolv.conf" "$1/etc/hostname"' \
  bookworm "$work/rootfs.tar" "${MIRRORS[@]}"

log "rootfs.tar: $(du -h "$work/rootfs.tar" | cut -f1), sha256 $(sha256sum "$work/rootfs.tar" | cut -c1-16)"

# The tarball has no image config: give it what debian:bookworm has, plus the epoch (build.sh
# clamps the venv's timestamps to it) and the inputs' hash.
docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change "LABEL jaco.base.source-date-epoch=$epoch jaco.base.inputs=$hash" \
  --change 'CMD ["/bin/bash"]' \
  --message "mmdebstrap bookworm minbase + $packages" \
  "$work/rootfs.tar" "$tag" >/dev/null
log "imported $tag"
echo "$tag"
