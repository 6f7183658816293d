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
# A build that failed (the disk full, the network gone) leaves buildah's working containers
# behind, and they hold their images and layers against any prune: remove them first.
for container in $(podman ps --all --external --format '{{.ID}} {{.Names}}' | awk '/-working-container$/ {print $1}'); do
  podman rm --force "$container" >/dev/null 2>&1 || true
done
# Each run tags its images with its commit (6 GB each, in layers of their own when the
# requirements changed): on a long-lived CI machine they fill the disk. Keep `latest`, whose
# layers are the next build's cache; drop the other tags and the layers nothing uses any more.
for image in $(podman images --format '{{.Repository}}:{{.Tag}}' \
                 | grep -E '^localhost/image-classifier-(train|serve):' | grep -v ':latest$'); do
  podman rmi "$image" >/dev/null 2>&1 || true
done
podman image prune -f >/dev/null 2>&1 || true
