#!/usr/bin/env bash
# Build the images docker-compose.yml runs without Docker Hub and without any package index but a
# local wheelhouse: stand-ins for flwr/superlink, flwr/supernode and flwr/superexec 1.41
# (docker/flwr-standin.Dockerfile, on a Debian bookworm root file system made with debootstrap)
# and the app image (Dockerfile) on the stand-in SuperExec. Online, none of this is needed:
# `docker compose up --build -d` pulls the official images.
#
#   docker/build-offline.sh            # then, with the variables it prints exported:
#   docker compose up -d               # (the app image is built already: no --build)
#
# Steps, each skipped when its result exists:
#   1. wheelhouse: `pip download` of pyproject.toml's dependencies (torch included) and hatchling,
#      by PYTHON's pip (a CPython 3.11, matching the stand-ins' Python), with its own configuration
#      (index, find-links): into $CLIPFED_DOCKER_CACHE/wheelhouse, again when those change;
#   2. the wheelhouse is served on 127.0.0.1 only, for the duration of the builds, which run with
#      `--network host` so that pip inside them reaches it and nothing else;
#   3. clipfed-standin/debian:bookworm: `debootstrap --variant=minbase bookworm` (root; needs
#      debootstrap and a Debian mirror, DEBIAN_MIRROR), imported with `docker import`;
#   4. clipfed-standin/{superlink,supernode,superexec}:1.41.0 from that and the wheelhouse;
#   5. clipfed-app:latest from Dockerfile with the stand-in SuperExec as its base, its context
#      streamed as a tar of exactly what Dockerfile copies (the legacy builder would otherwise send
#      the whole checkout, .venv included).
# With FLWR_SUPEREXEC_IMAGE set (e.g. an official image loaded with `docker load`), steps 3-4 are
# skipped and the app image is built on that base. Docker's layer cache makes a second run quick.
#
# Environment: PYTHON (default .venv/bin/python, else python3), CLIPFED_DOCKER_CACHE (default
# ${XDG_CACHE_HOME:-~/.cache}/clipfed-docker), DEBIAN_MIRROR (default http://deb.debian.org/debian),
# DOCKER (default docker), CLIPFED_WHEELHOUSE_PORT (default 39517), FLWR_SUPEREXEC_IMAGE.
# Prints, last, the variables to export for compose.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DOCKER=${DOCKER:-docker}
CACHE=${CLIPFED_DOCKER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/clipfed-docker}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
FLOWER=1.41.0
STANDIN=clipfed-standin
if [[ -z ${PYTHON:-} ]]; then
  if [[ -x $ROOT/.venv/bin/python ]]; then PYTHON=$ROOT/.venv/bin/python; else PYTHON=python3; fi
fi

say() { printf '[build-offline %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' 2>/dev/null || {
  say "PYTHON=$PYTHON is not CPython 3.11: the stand-in images run Debian bookworm's Python 3.11,"
  say "and the wheelhouse must hold cp311 wheels"; exit 2; }

# 1. The wheelhouse, made again when pyproject.toml's dependencies change.
WHEELS=$CACHE/wheelhouse
mkdir -p "$WHEELS"
reqs=$(mktemp)
"$PYTHON" -c 'import sys, tomllib; p = tomllib.load(open(sys.argv[1], "rb"));
print("\n".join([*p["project"]["dependencies"], *p["build-system"]["requires"]]))' "$ROOT/pyproject.toml" > "$reqs"
stamp=$(sha256sum < "$reqs" | cut -c1-16)
if [[ ! -e $WHEELS/.complete-$stamp ]]; then
  say "wheelhouse: pip download into $WHEELS (the first time: ~3 GB, torch's CUDA build)"
  rc=0
  "$PYTHON" -m pip download --disable-pip-version-check -q -d "$WHEELS" -r "$reqs" >"$reqs.log" 2>&1 || rc=$?
  grep -v "is ignored: it is neither a file nor a directory" "$reqs.log" >&2 || true
  rm -f "$reqs.log"
  [[ $rc == 0 ]] || { say "pip download failed: see the lines above"; rm -f "$reqs"; exit 1; }
  rm -f "$WHEELS"/.complete-*
  touch "$WHEELS/.complete-$stamp"
fi
rm -f "$reqs"

# 2. Serve it on loopback while the builds run.
# A fixed port: the URL is a build argument, and a changed one would miss Docker's layer cache.
port=${CLIPFED_WHEELHOUSE_PORT:-39517}
if "$PYTHON" -c "import socket; socket.create_connection(('127.0.0.1', $port), timeout=1)" 2>/dev/null; then
  say "127.0.0.1:$port is taken: set CLIPFED_WHEELHOUSE_PORT to a free port"; exit 2
fi
"$PYTHON" -m http.server "$port" --bind 127.0.0.1 --directory "$WHEELS" >/dev/null 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT
WHEELHOUSE_URL=http://127.0.0.1:$port/
for _ in $(seq 50); do
  "$PYTHON" -c "import urllib.request; urllib.request.urlopen('$WHEELHOUSE_URL', timeout=1)" 2>/dev/null && break
  sleep 0.2
done

build() {  # build TAG [docker build arguments...]: quiet unless it fails
  local tag=$1 log; shift
  log=$(mktemp)
  say "building $tag"
  if ! "$DOCKER" build --network host -t "$tag" "$@" >"$log" 2>&1; then
    tail -n 40 "$log" >&2; rm -f "$log"; say "building $tag failed"; exit 1
  fi
  rm -f "$log"
}

if [[ -z ${FLWR_SUPEREXEC_IMAGE:-} ]]; then
  # 3. A Debian bookworm image of our own.
  if ! "$DOCKER" image inspect "$STANDIN/debian:bookworm" >/dev/null 2>&1; then
    command -v debootstrap >/dev/null || { say "debootstrap is not installed (apt-get install debootstrap)"; exit 2; }
    [[ $(id -u) == 0 ]] || { say "debootstrap needs root"; exit 2; }
    rootfs=$CACHE/rootfs.tmp
    rm -rf "$rootfs"
    say "debootstrap bookworm from $MIRROR into $rootfs"
    debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
      bookworm "$rootfs" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 || {
        tail -n 20 "$CACHE/debootstrap.log" >&2; say "debootstrap failed"; exit 1; }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | "$DOCKER" import - "$STANDIN/debian:bookworm" >/dev/null
    rm -rf "$rootfs"
  fi
  # 4. The stand-in Flower images.
  for image in superlink supernode superexec; do
    build "$STANDIN/$image:$FLOWER" --target "$image" --build-arg "WHEELHOUSE_URL=$WHEELHOUSE_URL" \
      --build-arg "DEBIAN_IMAGE=$STANDIN/debian:bookworm" -f "$ROOT/docker/flwr-standin.Dockerfile" "$ROOT/docker"
  done
  export FLWR_SUPERLINK_IMAGE=$STANDIN/superlink:$FLOWER FLWR_SUPERNODE_IMAGE=$STANDIN/supernode:$FLOWER
  export FLWR_SUPEREXEC_IMAGE=$STANDIN/superexec:$FLOWER
fi

# 5. The app image, its context exactly what Dockerfile copies.
say "building clipfed-app:latest on $FLWR_SUPEREXEC_IMAGE"
log=$(mktemp)
if ! tar -C "$ROOT" -c --exclude=__pycache__ Dockerfile pyproject.toml README.md clipfed \
    | "$DOCKER" build --network host -t clipfed-app:latest --build-arg "SUPEREXEC_IMAGE=$FLWR_SUPEREXEC_IMAGE" \
        --build-arg "WHEELHOUSE_URL=$WHEELHOUSE_URL" - >"$log" 2>&1; then
  tail -n 40 "$log" >&2; rm -f "$log"; say "building clipfed-app:latest failed"; exit 1
fi
rm -f "$log"
say "done"
for name in FLWR_SUPERLINK_IMAGE FLWR_SUPERNODE_IMAGE FLWR_SUPEREXEC_IMAGE; do
  if [[ -n ${!name:-} ]]; then echo "$name=${!name}"; fi
done
