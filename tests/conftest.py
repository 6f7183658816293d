"""Shared fixtures: small real-image trees, SDK-style /opt/ml layouts, model artifacts."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from image_classifier import artifacts, models
from image_classifier.datasets import DIGIT_NAMES
from image_classifier.local import lay_out
from image_classifier.transforms import IMAGENET_MEAN, IMAGENET_STD, resize_size


def write_digit_tree(root: Path, num_classes: int = 3, per_split: dict[str, int] | None = None,
                     size: int = 8) -> Path:
    """A dogImages-shaped tree of real handwritten digits (scikit-learn's), few per class.

    `root/{train,valid,test}/NNN.<digit name>/<i>.png`, grayscale, `size` pixels square.
    """
    from sklearn.datasets import load_digits

    per_split = per_split or {"train": 24, "valid": 8, "test": 8}
    digits = load_digits()
    for digit in range(num_classes):
        indices = iter(np.flatnonzero(digits.target == digit))
        for split, count in per_split.items():
            folder = root / split / f"{digit + 1:03d}.{DIGIT_NAMES[digit]}"
            folder.mkdir(parents=True, exist_ok=True)
            for _ in range(count):
                i = next(indices)
                pixels = (digits.images[i] * (255 / 16)).astype(np.uint8)
                Image.fromarray(pixels, mode="L").resize((size, size)).save(folder / f"{i:04d}.png")
    return root


def sdk_hyperparameters(**values) -> dict[str, str]:
    """Hyperparameters as the SageMaker Python SDK v2 writes them: every value JSON-encoded."""
    return {k: json.dumps(v) for k, v in values.items()}


# Quick settings for test training jobs: resnet18 from scratch at 32 px on the CPU; no OpenVINO
# export (about 5 s a job: tests/training/test_export.py covers it).
TINY_JOB = {"model": "resnet18", "pretrained": False, "freeze": "none", "epochs": 2, "batch_size": 16,
            "lr": 0.002, "optimizer": "adamw", "image_size": 32, "hflip_prob": 0, "num_workers": 0, "seed": 3,
            "export": "none"}


@pytest.fixture(scope="session")
def digit_tree(tmp_path_factory) -> Path:
    """3 classes of real digits: 24 train, 8 valid, 8 test images each."""
    return write_digit_tree(tmp_path_factory.mktemp("digits"))


@pytest.fixture
def opt_ml(tmp_path, digit_tree):
    """Factory: an /opt/ml tree (SDK v2 style) over `digit_tree`; returns its SageMakerEnv."""
    def make(data_dir: Path = digit_tree, **hyperparameters):
        return lay_out(tmp_path / "opt_ml", data_dir, sdk_hyperparameters(**{**TINY_JOB, **hyperparameters}))
    return make


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """Model artifacts of an untrained resnet18 for the 10 digit classes at 32 px."""
    directory = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    model = models.create_model("resnet18", 10)
    class_names = [f"{i + 1:03d}.{name}" for i, name in enumerate(DIGIT_NAMES)]
    spec = artifacts.ModelSpec(arch="resnet18", num_classes=10, class_names=class_names,
                               labels=list(DIGIT_NAMES), image_size=32, resize_size=resize_size(32),
                               mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))
    artifacts.save_model(directory, model.state_dict(), spec)
    export_openvino(directory, write_digit_tree(tmp_path_factory.mktemp("calibration"), 10, {"train": 4}, 32) / "train")
    return directory


def export_openvino(model_dir: Path, train_dir: Path) -> None:
    """The OpenVINO files a training job writes beside the artifacts (fp32, and int8 calibrated on
    `train_dir`): `training.export`, in a process of its own (NNCF stays out of pytest's: tests/isolated.py)."""
    import subprocess
    import sys

    code = ("import sys; from pathlib import Path; from image_classifier import artifacts; "
            "from image_classifier.training import export; m, t = map(Path, sys.argv[1:]); "
            "state, spec = artifacts.load_model(m); "
            "export.export(m, spec, state, export.calibration_batches(t, spec))")
    done = subprocess.run([sys.executable, "-c", code, str(model_dir), str(train_dir)], capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.fixture(scope="session")
def patch_model_dir(tmp_path_factory) -> Path:
    """Model artifacts of a resnet18 trained to tell a bright patch from none at 64 px (tests/patches.py)."""
    from tests import patches

    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)  # a module may have set one thread
    try:
        model = patches.train()
    finally:
        torch.set_num_threads(threads)
    assert patches.accuracy(model) > 0.95, "the patch model did not learn its task"
    return patches.save(model, tmp_path_factory.mktemp("patch_model"))
