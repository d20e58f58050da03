#!/usr/bin/env bash
# Builds the jaco Docker image from local material only (`make image`): no registry is needed.
#
#   1. base.sh: a Debian bookworm rootfs from mmdebstrap, `docker import`ed as
#      jaco-base:bookworm-<hash> (skipped when that tag exists);
#   2. wheels of jaco and of all its runtime dependencies, built on the host (pip may fetch
#      from PyPI into its cache) by the Python version the base runs, and pinned to the
#      versions in the dev venv, which are the versions the tests ran against;
#   3. `docker build --network none` of infra/image/Dockerfile FROM the local base;
#   4. tags jaco:<version> and jaco:<version>-<commit>, then prints the tags, the size and
#      how long `docker run --rm jaco:<version> jaco --version` takes.
#
#   infra/image/build.sh [--context-only]
#
# --context-only stops after step 2 (no Docker needed), leaving build/image/context for
# Dockerfile.registry's base (docs/image.md). Environment:
#   PYTHON           the dev venv's python (default .venv/bin/python, as `make venv` makes):
#                    its `pip freeze` pins the dependencies, its pip version is used
#   WHEEL_PYTHON     builds the wheels (default /usr/bin/python3); must be the base's version
#   JACO_IMAGE_BASE  a local image to use as the base instead of base.sh's
# The image is built from the tracked files of the worktree, uncommitted edits included;
# then the commit tag and the revision label say "-dirty". Safe to re-run: build/image is
# rebuilt each time (pip's cache makes that quick), and Docker's layer cache keeps every
# layer whose input did not change.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(git -C "$here" rev-parse --show-toplevel)
build="$repo/build/image"
PYTHON=${PYTHON:-$repo/.venv/bin/python}
context_only=0
[ "${1:-}" = --context-only ] && context_only=1
log() { echo "==> $*" >&2; }
started=$(date +%s.%N)
cd "$repo"

[ -x "$PYTHON" ] || { echo "no Python at $PYTHON: run make venv, or set PYTHON" >&2; exit 1; }

# --- what is being built -------------------------------------------------------------------
commit=$(git rev-parse HEAD)
short=$(git rev-parse --short HEAD)
# The image's timestamps and its created label come from the commit, not from the clock.
epoch=$(git log -1 --format=%ct HEAD)
created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)
# `git stash create` makes a commit of the worktree's tracked files without touching the
# worktree, the index or the stash list; it prints nothing when there is nothing to commit.
snapshot=$(git stash create)
suffix=""
[ -n "$snapshot" ] && suffix="-dirty"

rm -rf "$build/src" "$build/context"
mkdir -p "$build/src" "$build/context/wheels" "$build/context/app"
# An exported copy, so neither untracked files nor a stale setuptools build/ can leak into
# the wheel, and the in-tree build writes into build/image/src rather than the worktree.
git archive --format=tar "${snapshot:-HEAD}" | tar -x -C "$build/src"
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$build/src/jaco/__init__.py")
[ -n "$version" ] || { echo "no __version__ in jaco/__init__.py" >&2; exit 1; }

# --- base ----------------------------------------------------------------------------------
if [ "$context_only" = 0 ]; then
  docker info >/dev/null 2>&1 || { echo "no Docker engine: docker info fails" >&2; exit 1; }
  if [ -n "${JACO_IMAGE_BASE:-}" ]; then
    base=$JACO_IMAGE_BASE
    docker image inspect "$base" >/dev/null || { echo "no local image $base" >&2; exit 1; }
  else
    base=$("$here/base.sh" "$build" | tail -n 1)
  fi
  base_epoch=$(docker image inspect \
    -f '{{index .Config.Labels "jaco.base.source-date-epoch"}}' "$base")
  # A base without the label (Dockerfile.registry's) gets the commit's epoch.
  [ "$base_epoch" = "<no value>" ] && base_epoch=""
  base_epoch=${base_epoch:-$epoch}
  # Ask the base which Python it runs (the wheels must be built for that version) and which
  # versions of the listed packages it has (they become the jaco.image.debian-packages label).
  mapfile -t pkgs < <(sed -e 's/#.*//' "$here/packages" | xargs -n 1)
  read -r base_python debian_packages < <(
    docker run --rm --network none "$base" sh -c \
      'python3 -c "import platform; print(platform.python_version(), end=\" \")";
       dpkg-query --show --showformat="\${Package}=\${Version} " "$@" python3.11; echo' sh "${pkgs[@]}"
  )
fi

# --- wheels --------------------------------------------------------------------------------
# Resolved and built by the same Python version as the base runs (bookworm's 3.11.2), not by
# the dev venv's: markers compare full versions (redis needs async-timeout only before
# 3.11.3), so wheels resolved by a 3.11.7 lack what 3.11.2 requires. The helper venv is made
# once from WHEEL_PYTHON, with the dev venv's pip.
WHEEL_PYTHON=${WHEEL_PYTHON:-/usr/bin/python3}
# jaco._native is compiled (cargo) while the jaco wheel is built: its build cache outlives
# build/image/src, so a rebuild compiles only what changed.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$build/cargo-target}
wheel_python=$("$WHEEL_PYTHON" -c 'import platform; print(platform.python_version())')
if [ "$context_only" = 0 ] && [ "$wheel_python" != "$base_python" ]; then
  echo "the base runs Python $base_python but $WHEEL_PYTHON is $wheel_python:" \
    "set WHEEL_PYTHON to a Python $base_python" >&2
  exit 1
fi
wheelenv="$build/wheel-venv-$wheel_python"
if [ ! -x "$wheelenv/bin/pip" ]; then
  log "making $wheelenv (pip from $PYTHON's venv)"
  if ! "$WHEEL_PYTHON" -c 'import ensurepip' 2>/dev/null; then
    log "installing python3-venv"
    sudo=""
    [ "$(id -u)" = 0 ] || sudo=sudo
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
      python3-venv >/dev/null
  fi
  "$WHEEL_PYTHON" -m venv "$wheelenv"
  "$wheelenv/bin/pip" install --quiet --disable-pip-version-check \
    "pip==$("$PYTHON" -m pip --version | cut -d' ' -f2)"
fi
# Pin every dependency to what the dev venv has, the versions the tests ran against (the
# editable jaco and anything installed from a path or URL cannot be a constraint).
"$PYTHON" -m pip freeze --exclude-editable | grep -v -e '^#' -e '^-e ' -e ' @ ' \
  > "$build/constraints.txt" || true
log "building wheels for jaco $version and its dependencies (Python $wheel_python," \
  "pinned to $PYTHON's venv)"
# SOURCE_DATE_EPOCH makes the jaco wheel's zip timestamps fixed: the same commit gives the
# same wheel, and Docker's cache keeps its layer.
SOURCE_DATE_EPOCH="$epoch" "$wheelenv/bin/pip" wheel --quiet --disable-pip-version-check \
  --constraint "$build/constraints.txt" --wheel-dir "$build/context/wheels" "$build/src"
mv "$build/context/wheels/jaco-$version-"*.whl "$build/context/app/"
cp -rp "$build/src/deployments" "$build/context/app/deployments"
find "$build/context/app" -name __pycache__ -prune -exec rm -rf {} +
log "jaco + $(find "$build/context/wheels" -name '*.whl' | wc -l) dependency wheels," \
  "$(du -sh "$build/context/wheels" | cut -f1), in $build/context"

if [ "$context_only" = 1 ]; then
  log "context ready: $build/context (version $version, revision $commit$suffix, epoch $epoch)"
  exit 0
fi

# --- image ---------------------------------------------------------------------------------
image="jaco:$version"
tags=("$image" "jaco:$version-$short$suffix")
build_args=(
  --build-arg BASE="$base"
  --build-arg DEPS_EPOCH="$base_epoch"
  --build-arg SOURCE_DATE_EPOCH="$epoch"
  --build-arg VERSION="$version"
  --build-arg REVISION="$commit$suffix"
  --build-arg CREATED="$created"
  --build-arg DEBIAN_PACKAGES="${debian_packages% }"
)
# docker build, then remove the image TAG named before if the build moved every tag off it
# (ours: rmi refuses if a container uses it, and keeps the layers the new image shares).
build_and_replace() {
  local tag=$1 previous current
  shift
  previous=$(docker image inspect -f '{{.Id}}' "$tag" 2>/dev/null || true)
  # The legacy builder: this engine (20.10) has no buildx, and it never pulls a FROM image
  # that exists locally. (The Dockerfile uses nothing BuildKit lacks; untested there.)
  DOCKER_BUILDKIT=0 docker build --network none --pull=false --force-rm \
    --file "$here/Dockerfile" "${build_args[@]}" --tag "$tag" "$@" "$build/context"
  current=$(docker image inspect -f '{{.Id}}' "$tag")
  if [ -n "$previous" ] && [ "$previous" != "$current" ] &&
    [ "$(docker image inspect -f '{{len .RepoTags}}' "$previous" 2>/dev/null)" = 0 ]; then
    docker rmi "$previous" >/dev/null 2>&1 || true
  fi
}
log "docker build FROM $base (no network)"
# The deps stage gets a tag of its own: it is the layer cache of the next build, and the
# tag lets a rebuild with other wheels remove the stage it replaces.
build_and_replace jaco-deps:build-cache --target deps --quiet >/dev/null
extra_tags=("${tags[@]:1}")
build_and_replace "$image" "${extra_tags[@]/#/--tag=}"

# --- report --------------------------------------------------------------------------------
size=$(docker image inspect -f '{{.Size}}' "$image")
elapsed() { echo "$(date +%s.%N) $1" | awk '{printf "%.2f", $1 - $2}'; }
t0=$(date +%s.%N)
reported=$(docker run --rm "$image" jaco --version)
start=$(elapsed "$t0")
echo
echo "jaco image built in $(elapsed "$started")s"
echo "  tags:     ${tags[*]}"
echo "  id:       $(docker image inspect -f '{{.Id}}' "$image")"
echo "  base:     $base"
echo "  size:     $((size / 1000000)) MB"
echo "  start:    docker run --rm $image jaco --version -> '$reported' in ${start}s"
