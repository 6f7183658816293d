"""Transfer learning, proven on real photos: training jobs with real ImageNet weights against the same jobs without."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from PIL import Image

from image_classifier import artifacts, datasets, explain, models
from image_classifier.local import lay_out
from image_classifier.serving.predictor import Predictor
from image_classifier.training.config import TrainConfig
from image_classifier.training.job import run
from image_classifier.training.metrics import METRICS_FILE
from tests.conftest import sdk_hyperparameters
from tests.serving import servers

pytestmark = pytest.mark.slow

# EfficientNet-Lite0 fine-tuned at 64 px (a 2x2 last feature map) on 20 photos a class: seconds a job
FASHION_JOB = {"model": "efficientnet_lite0", "freeze": "none", "epochs": 5, "image_size": 64, "batch_size": 32,
               "lr": 0.002, "optimizer": "adamw", "weight_decay": 0.01, "crop_scale_min": 0.6, "num_workers": 0,
               "seed": 0, "export": "none"}  # jobs in pytest's process: no NNCF there (tests/isolated.py)


@pytest.fixture(scope="module")
def fashion_tree(tmp_path_factory) -> Path:
    """Real Fashion-MNIST photos from Debian's dataset-fashion-mnist: 20 train, 10 valid, 50 test a class."""
    if not datasets.FASHION_MNIST_DIR.is_dir():
        pytest.skip(f"{datasets.FASHION_MNIST_DIR} is missing: apt-get install dataset-fashion-mnist (.ci/run does)")
    root = tmp_path_factory.mktemp("fashion")
    datasets.prepare_fashion_mnist(root, per_class=20, valid_per_class=10, test_per_class=50)
    return root


def fashion_job(base: Path, data: Path, **changes) -> tuple[dict, Path]:
    env = lay_out(base, data, sdk_hyperparameters(**{**FASHION_JOB, **changes}))
    result = run(env, TrainConfig.from_hyperparameters(env.hyperparameters()))
    return result, env.model_dir


@pytest.fixture(scope="module")
def fine_tuned(tmp_path_factory, fashion_tree) -> tuple[dict, Path]:
    return fashion_job(tmp_path_factory.mktemp("pretrained"), fashion_tree, pretrained=True)


def test_imagenet_weights_beat_random_ones_on_real_photos(tmp_path, fashion_tree, fine_tuned):
    """The same job, the same hyperparameters: only the initial weights differ."""
    pretrained, model_dir = fine_tuned
    scratch, _ = fashion_job(tmp_path, fashion_tree, pretrained=False)
    assert pretrained["test_accuracy"] >= scratch["test_accuracy"] + 0.15, (pretrained, scratch)
    assert pretrained["test_accuracy"] >= 0.6, pretrained
    spec = artifacts.load_model(model_dir)[1]
    norm = models.data_config("efficientnet_lite0")
    assert (spec.mean, spec.std) == (list(norm.mean), list(norm.std))  # what serving normalises with


@pytest.fixture(scope="module")
def head_at_224(tmp_path_factory, fashion_tree) -> Path:
    """Lite0's frozen ImageNet backbone with a head trained on its cached features at 224 px: a 7x7 last map."""
    return fashion_job(tmp_path_factory.mktemp("head224"), fashion_tree, pretrained=True, freeze="backbone",
                       augment=False, image_size=224, epochs=10, lr=0.01)[1]


QUADRANTS = [(0, 0), (0, 112), (112, 0), (112, 112)]  # (top, left) of each 112-pixel quarter, reading order


def test_gradcam_of_real_photos_through_the_transfer_learned_model_finds_each_class(head_at_224, fashion_tree):
    """Grad-CAM's pointing game (Selvaraju et al. 2017, section 4.1): four test photos of four classes in
    the quarters of one 224-pixel image; each class's heat-map is hottest in the quarter of its photo
    far more often than chance (1 in 4). Measured: 64 of 80."""
    predictor = Predictor.load(head_at_224)
    model, layer = predictor.model, explain.target_layer(predictor.model, predictor.spec.arch)
    to_input = explain.network_input(predictor.spec.mean, predictor.spec.std)
    photos = [sorted(folder.glob("*.png")) for folder in sorted((fashion_tree / "test").iterdir())]
    rng = np.random.default_rng(0)
    hits = 0
    for trial in range(20):
        classes = rng.choice(len(photos), 4, replace=False)
        mosaic = Image.new("RGB", (224, 224))
        for (top, left), label in zip(QUADRANTS, classes):
            mosaic.paste(Image.open(photos[label][trial]).convert("RGB").resize((112, 112)), (left, top))
        inputs = to_input(mosaic)[None].expand(4, -1, -1, -1).contiguous()
        maps = explain.gradcam(model, layer, inputs, torch.tensor(classes, dtype=torch.int64))
        for i, heatmap in enumerate(maps):
            hottest = np.argmax([float(heatmap[top:top + 112, left:left + 112].mean()) for top, left in QUADRANTS])
            hits += int(hottest == i)
    assert hits >= 0.6 * 80, f"{hits} of 80"


def test_timm_backbone_trains_and_serves_from_a_local_weights_file(tmp_path, digit_tree):
    """model=timm/resnet18.a1_in1k with its weights as the hub names them (model.safetensors) in the
    pretrained channel: the job trains offline, and a real server answers with the job's classes."""
    from safetensors.torch import save_file

    name = "timm/resnet18.a1_in1k"
    torch.manual_seed(11)
    imagenet = models.imagenet_network(name).state_dict()
    env = lay_out(tmp_path / "opt_ml", digit_tree, sdk_hyperparameters(
        model=name, pretrained=True, freeze="backbone", epochs=1, batch_size=16, image_size=32, num_workers=0,
        export="none"))  # in pytest's process: no NNCF there; the server converts model.pth at start-up
    env.channel_dir("pretrained").mkdir()
    save_file(imagenet, env.channel_dir("pretrained") / models.weights_filename(name))

    run(env, TrainConfig.from_hyperparameters(env.hyperparameters()))

    state, spec = artifacts.load_model(env.model_dir)
    assert spec.arch == name and torch.equal(state["layer1.0.conv1.weight"], imagenet["layer1.0.conv1.weight"])
    assert json.loads((env.output_data_dir / METRICS_FILE).read_text())["test_accuracy"] >= 0
    process, url, log = servers.start(env.base_dir, workers=1)
    try:
        servers.wait_for_answer(url, process, log, 200, workers=1)
        image = next((digit_tree / "test").glob("*/*.png")).read_bytes()
        answer = requests.post(f"{url}/invocations", data=image, headers={"Content-Type": "image/png"}, timeout=60)
        assert answer.status_code == 200, answer.text
        labels = {p["label"] for p in answer.json()["predictions"]}
        assert labels <= set(spec.labels) and len(labels) == len(spec.labels)
    finally:
        servers.stop(process)
