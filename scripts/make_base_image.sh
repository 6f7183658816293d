#!/usr/bin/env bash
# Usage: scripts/make_base_image.sh [IMAGE]   (default IMAGE: localhost/debian-python:3.11-bookworm)
# Makes a base image without any registry: debootstrap of Debian bookworm (Python 3.11, venv,
# pip, CA certificates) imported into docker or podman. Needs root and debootstrap; a Debian
# mirror is taken from DEBIAN_MIRROR (default http://deb.debian.org/debian).
# Then: BASE_IMAGE=IMAGE scripts/build_images.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/container_engine.sh

image="${1:-localhost/debian-python:3.11-bookworm}"
rootfs=$(mktemp -d)
trap 'rm -rf "$rootfs"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
  bookworm "$rootfs" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin
tar -C "$rootfs" -c . | "$ENGINE" import --change 'CMD ["/bin/bash"]' - "$image"
echo "$image"
