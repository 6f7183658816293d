"""ECR against moto_server, and scripts/build_and_push.sh with a recording `docker` (moto has no registry to
push to)."""

import os
import stat
import subprocess
import sys
from pathlib import Path

import boto3

from image_classifier.launch import ecr

ROOT = Path(__file__).resolve().parents[2]


def test_repositories_are_made_once_and_the_registry_returned(aws):
    client = boto3.client("ecr", region_name="us-east-1")
    names = ["image-classifier-train", "image-classifier-serve"]
    registry = ecr.ensure_repositories(client, names)
    assert registry == ecr.ensure_repositories(client, names)  # the second time: nothing to create
    assert registry.endswith(".dkr.ecr.us-east-1.amazonaws.com")
    made = {r["repositoryName"] for r in client.describe_repositories()["repositories"]}
    assert set(names) <= made


def test_login_password_decodes_the_token(aws):
    assert ecr.login_password(boto3.client("ecr", region_name="us-east-1"))


def build_and_push(tmp_path, *args: str) -> tuple[subprocess.CompletedProcess, Path]:
    """Run scripts/build_and_push.sh with a `docker` that records its calls (but `info`) in the returned file."""
    record = tmp_path / "docker.log"
    fake = tmp_path / "bin" / "docker"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\n[ "$1" = info ] && exit 0\necho "$@" >> {record}\n'
                    f'[ "$1" = login ] && cat > /dev/null\nexit 0\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}", "PYTHON": sys.executable}
    result = subprocess.run([str(ROOT / "scripts" / "build_and_push.sh"), *args],
                            env=env, capture_output=True, text=True, timeout=120)
    return result, record


def test_build_and_push_tags_and_pushes_both_images(aws, tmp_path):
    result, record = build_and_push(tmp_path, "--no-build", "--region", "us-east-1")
    assert result.returncode == 0, result.stderr
    calls = record.read_text().splitlines()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    registry = "123456789012.dkr.ecr.us-east-1.amazonaws.com"
    assert f"login --username AWS --password-stdin {registry}" in calls
    for target in ("train", "serve"):
        for tag in (commit, "latest"):
            assert f"tag image-classifier-{target}:latest {registry}/image-classifier-{target}:{tag}" in calls
            assert f"push {registry}/image-classifier-{target}:{tag}" in calls
    assert f"training image: {registry}/image-classifier-train:{commit}" in result.stdout


def test_build_and_push_dry_run_prints_and_sends_nothing(aws, tmp_path):
    before = {r["repositoryName"] for r in boto3.client("ecr", region_name="eu-west-1").describe_repositories()[
        "repositories"]}
    result, record = build_and_push(tmp_path, "--dry-run", "--region", "eu-west-1")
    assert result.returncode == 0, result.stderr
    assert not record.exists()  # docker was asked nothing but `info`
    registry = "123456789012.dkr.ecr.eu-west-1.amazonaws.com"
    assert f"+ docker push {registry}/image-classifier-serve:latest" in result.stdout
    assert "+ scripts/build_images.sh" in result.stdout
    after = {r["repositoryName"] for r in boto3.client("ecr", region_name="eu-west-1").describe_repositories()[
        "repositories"]}
    assert after == before
