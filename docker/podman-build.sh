#!/usr/bin/env bash
# Build an image with podman where no Docker engine and no registry are available (the test
# machines, CI); users with Docker run `docker build` as docker/README.md shows.
#   docker/podman-build.sh cpu|cuda [TAG]    as root; TAG defaults to localhost/budgetgpt:VARIANT
#   docker/podman-build.sh base              only make the base image
# The base is bare Debian bookworm made with debootstrap from the mirror apt already uses, imported
# once and kept in podman's storage, as are the build's layers: a rebuild takes seconds.
# --format docker: podman's default OCI format drops the Dockerfile's SHELL (bash, pipefail).
# Env: BASE_IMAGE (skip debootstrap, e.g. python:3.11-slim-bookworm where a registry is reachable),
# TORCH_WHEELS (a directory with torch's CPU wheel; default /opt/wheels when it holds one).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
variant="${1:?usage: $0 cpu|cuda|base [TAG]}"
tag="${2:-localhost/budgetgpt:$variant}"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$here/containers.conf}"
base="${BASE_IMAGE:-localhost/budgetgpt-base:bookworm}"

if [ "$base" = localhost/budgetgpt-base:bookworm ] && ! podman image exists "$base"; then
  mirror="$(awk '$1 == "URIs:" {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
  rootfs="$(mktemp -d)"
  trap 'rm -rf "$rootfs" "$rootfs.log"' EXIT
  echo "debootstrap bookworm from ${mirror:-the default mirror} -> $base" >&2
  debootstrap --variant=minbase bookworm "$rootfs" ${mirror:+"$mirror"} >"$rootfs.log" 2>&1 \
    || { tail -20 "$rootfs.log" >&2; exit 1; }
  tar -C "$rootfs" -c . | podman import - "$base" >/dev/null
fi
[ "$variant" = base ] && exit 0
[ -f "$here/Dockerfile.$variant" ] || { echo "no Dockerfile.$variant in $here" >&2; exit 2; }

args=(--network host --layers --format docker -f "$here/Dockerfile.$variant" -t "$tag"
      --build-arg "BASE_IMAGE=$base")
# pip inside the build must trust what the host trusts (a TLS-inspecting proxy's CA)
ca=/etc/ssl/certs/ca-certificates.crt
if [ -f "$ca" ]; then
  args+=(--volume "$ca:/run/host-ca.crt:ro" --build-arg PIP_CERT=/run/host-ca.crt)
fi
wheels="${TORCH_WHEELS:-/opt/wheels}"
if [ "$variant" = cpu ] && compgen -G "$wheels/torch-*+cpu-*.whl" >/dev/null; then
  args+=(--volume "$wheels:/run/wheels:ro" --build-arg TORCH_FIND_LINKS=/run/wheels)
fi
previous="$(podman image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)"
podman build "${args[@]}" "$(dirname "$here")"
# the image this build replaced differs only in its top layers: drop it rather than pile them up
if [ -n "$previous" ] && [ "$previous" != "$(podman image inspect --format '{{.Id}}' "$tag")" ]; then
  podman image rm "$previous" >/dev/null 2>&1 || true
fi
