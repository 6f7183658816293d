#!/usr/bin/env bash
# Usage: scripts/build_images.sh [train|serve ...]
# Builds image-classifier-train and image-classifier-serve (default: both) with docker, or podman
# where no Docker engine runs; tags each `latest` and the git commit; prints the image sizes.
# Build options come from the environment, unset = the Dockerfile's default:
#   BASE_IMAGE, PIP_INDEX_URL, PIP_EXTRA_INDEX_URL, TORCH_INDEX_URL (serve), PRETRAINED_WEIGHTS (train)
#   CA_BUNDLE   a PEM file of extra CA certificates (TLS-intercepting proxies), passed as a build secret
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/container_engine.sh

commit=$(git rev-parse --short HEAD 2>/dev/null || echo dev)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(train serve)

for target in "${targets[@]}"; do
  case "$target" in
    train) names=(BASE_IMAGE PIP_INDEX_URL PIP_EXTRA_INDEX_URL PRETRAINED_WEIGHTS) ;;
    serve) names=(BASE_IMAGE PIP_INDEX_URL PIP_EXTRA_INDEX_URL TORCH_INDEX_URL) ;;
    *) echo "usage: $0 [train|serve ...]" >&2; exit 2 ;;
  esac
  args=()
  for name in "${names[@]}"; do
    if [ -n "${!name+set}" ]; then args+=(--build-arg "$name=${!name}"); fi
  done
  if [ -n "${CA_BUNDLE:-}" ]; then args+=(--secret "id=ca_bundle,src=$CA_BUNDLE"); fi
  image="image-classifier-$target"
  echo "== building $image ($ENGINE)"
  "$ENGINE" build --network host -f "Dockerfile.$target" -t "$image:latest" -t "$image:$commit" "${args[@]}" .
done
for target in "${targets[@]}"; do
  "$ENGINE" image inspect --format "image-classifier-$target:latest {{.Size}} bytes" "image-classifier-$target:latest"
done
