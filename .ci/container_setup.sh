#!/usr/bin/env bash
# CI: podman, podman-compose and a registry-free base image, where there is no Docker engine.
set -euo pipefail
cd "$(dirname "$0")/.."
if docker info >/dev/null 2>&1; then exit 0; fi
if ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null; then
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman runc debootstrap
fi
if ! podman image exists "$BASE_IMAGE"; then
  scripts/make_base_image.sh "$BASE_IMAGE"
fi
