"""The Predictor: the OpenVINO model at fp32 answers as the eager one, for every registry model;
the preprocessing is the eval transform's; the precision setting and the model's files."""

import logging

import numpy as np
import pytest
import torch

from image_classifier import artifacts, models, runtime
from image_classifier.images import open_image
from image_classifier.sagemaker_env import SageMakerEnv
from image_classifier.serving.codec import Inputs
from image_classifier.serving.predictor import Predictor, softmax
from image_classifier.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform, resize_size
from tests.serving.images import photo
from tests.serving.images import variants as image_variants


def spec_for(arch: str, size: int = 64) -> artifacts.ModelSpec:
    names = [f"{i + 1:03d}.c{i}" for i in range(4)]
    return artifacts.ModelSpec(arch=arch, num_classes=4, class_names=names, labels=[n[4:] for n in names],
                               image_size=size, resize_size=resize_size(size), mean=list(IMAGENET_MEAN),
                               std=list(IMAGENET_STD), dropout=0.2)


@pytest.mark.parametrize("arch", models.MODEL_NAMES)
def test_fp32_answers_as_eager(arch):
    """Lossless: the probabilities of the eager model to float rounding (OpenVINO told f32 explicitly)."""
    torch.manual_seed(0)
    model = models.create_model(arch, 4, 0.2).train(False)
    predictor = Predictor.from_model(model, spec_for(arch))
    batch = np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        expected = torch.softmax(model(torch.from_numpy(batch)), dim=1).numpy()
    np.testing.assert_allclose(predictor.predict(Inputs(array=batch)), expected, atol=1e-5)


def test_preprocessing_is_the_eval_transform():
    """Resize, center crop, scale and normalise as one array: the eval transform's input exactly."""
    spec = artifacts.ModelSpec(**{**spec_for("resnet18", 96).__dict__, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.3, 0.4]})
    predictor = Predictor(spec, logits=lambda batch: batch, eager=lambda: None)
    images = [open_image(body) for body in image_variants().values()] + [photo((300, 200)), photo((50, 120))]
    expected = torch.stack([eval_transform(96, spec.mean, spec.std)(image) for image in images]).numpy()
    np.testing.assert_allclose(predictor.preprocess(Inputs(images=images)), expected, atol=1e-6)


def test_softmax_is_stable():
    logits = np.array([[1000.0, 1000.0, -1000.0], [0.0, np.log(3.0), -np.inf]], np.float32)
    np.testing.assert_allclose(softmax(logits), [[0.5, 0.5, 0.0], [0.25, 0.75, 0.0]], atol=1e-6)


@pytest.mark.parametrize("value, expected", [(None, "fp32"), ("bf16", "bf16"), (" INT8 ", "int8")])
def test_the_precision_setting(value, expected):
    environ = {} if value is None else {"MODEL_SERVER_PRECISION": value}
    assert SageMakerEnv.from_environ(environ).server.precision == expected


def test_the_retired_torchscript_switch_is_named_in_the_log(caplog):
    with caplog.at_level(logging.WARNING):
        assert SageMakerEnv.from_environ({"MODEL_SERVER_TORCHSCRIPT": "false"}).server.precision == "fp32"
    assert "MODEL_SERVER_TORCHSCRIPT is no longer read" in caplog.text


@pytest.fixture
def model_dir(tmp_path):
    torch.manual_seed(0)
    artifacts.save_model(tmp_path, models.create_model("resnet18", 4).state_dict(), spec_for("resnet18", 32))
    return tmp_path


def test_a_model_without_exported_files_is_converted_at_start_up(model_dir, caplog):
    with caplog.at_level(logging.INFO):
        predictor = Predictor.load(model_dir)
    assert "converted for OpenVINO at start-up" in caplog.text
    batch = np.zeros((1, 3, 32, 32), np.float32)
    with torch.no_grad():
        expected = torch.softmax(predictor.model(torch.from_numpy(batch)), dim=1).numpy()
    np.testing.assert_allclose(predictor.probabilities(batch), expected, atol=1e-5)


def test_int8_without_the_training_jobs_file_is_refused_with_the_fix(model_dir):
    with pytest.raises(FileNotFoundError, match="export=openvino"):
        Predictor.load(model_dir, "int8")


def test_the_exported_file_is_served_when_present(model_dir, caplog):
    """The training job's file, not model.pth: a file whose logits are zero makes every class equal."""
    folder = model_dir / runtime.EXPORT_DIR
    folder.mkdir()
    zero = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 4))
    torch.nn.init.zeros_(zero[1].weight), torch.nn.init.zeros_(zero[1].bias)
    runtime.save(runtime.convert(zero, 32), folder / runtime.FILES["fp32"])
    with caplog.at_level(logging.INFO):
        predictor = Predictor.load(model_dir)
    assert "converted" not in caplog.text and f"from {folder}" in caplog.text
    np.testing.assert_allclose(predictor.probabilities(np.ones((2, 3, 32, 32), np.float32)), 0.25, atol=1e-6)


def test_an_in_memory_model_is_not_served_at_int8_uncalibrated():
    with pytest.raises(ValueError, match="fp32 or bf16"):
        Predictor.from_model(models.create_model("resnet18", 4), spec_for("resnet18"), "int8")
