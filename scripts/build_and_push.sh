#!/usr/bin/env bash
# Usage: scripts/build_and_push.sh [--region REGION] [--no-build] [--dry-run]
# Builds both images (scripts/build_images.sh, same build options), creates the ECR repositories
# image-classifier-train and image-classifier-serve if missing, logs in, tags each image with the
# git commit and `latest`, pushes, and prints the image URIs for tune.py and deploy.py.
# AWS credentials and region as boto3 finds them (AWS_PROFILE, AWS_DEFAULT_REGION, ...).
# --dry-run prints the commands (the registry then from STS's account), builds and sends nothing.
set -euo pipefail
cd "$(dirname "$0")/.."
region="${AWS_DEFAULT_REGION:-}"
build=1
dry_run=0
while [ $# -gt 0 ]; do
  case "$1" in
    --region) region="$2"; shift 2 ;;
    --no-build) build=0; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "usage: $0 [--region REGION] [--no-build] [--dry-run]" >&2; exit 2 ;;
  esac
done
source scripts/container_engine.sh
python="${PYTHON:-.venv/bin/python}"
[ -x "$python" ] || python=python3
region_args=()
[ -z "$region" ] || region_args=(--region "$region")

commit=$(git rev-parse --short HEAD 2>/dev/null || echo dev)
if [ "$dry_run" = 1 ]; then
  run() { echo "+ $*"; }
  registry=$("$python" -m image_classifier.launch.ecr registry "${region_args[@]}")
  run scripts/build_images.sh
  run "$python" -m image_classifier.launch.ecr repositories image-classifier-train image-classifier-serve "${region_args[@]}"
  run "$ENGINE" login --username AWS --password-stdin "$registry"
else
  run() { "$@"; }
  [ "$build" = 0 ] || scripts/build_images.sh
  registry=$("$python" -m image_classifier.launch.ecr repositories image-classifier-train image-classifier-serve "${region_args[@]}")
  "$python" -m image_classifier.launch.ecr password "${region_args[@]}" | "$ENGINE" login --username AWS --password-stdin "$registry"
fi
for target in train serve; do
  for tag in "$commit" latest; do
    run "$ENGINE" tag "image-classifier-$target:latest" "$registry/image-classifier-$target:$tag"
    run "$ENGINE" push "$registry/image-classifier-$target:$tag"
  done
done
echo "training image: $registry/image-classifier-train:$commit"
echo "serving image:  $registry/image-classifier-serve:$commit"
