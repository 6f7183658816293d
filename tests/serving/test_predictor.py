"""The Predictor: the TorchScript-optimised model answers as the eager one, for every registry model."""

import numpy as np
import pytest
import torch
from torch import nn

from image_classifier import artifacts, models
from image_classifier.sagemaker_env import SageMakerEnv
from image_classifier.serving.codec import Inputs
from image_classifier.serving.predictor import Predictor, optimize
from image_classifier.transforms import IMAGENET_MEAN, IMAGENET_STD, resize_size


def spec_for(arch: str, size: int = 64) -> artifacts.ModelSpec:
    names = [f"{i + 1:03d}.c{i}" for i in range(4)]
    return artifacts.ModelSpec(arch=arch, num_classes=4, class_names=names, labels=[n[4:] for n in names],
                               image_size=size, resize_size=resize_size(size), mean=list(IMAGENET_MEAN),
                               std=list(IMAGENET_STD), dropout=0.2)


@pytest.mark.parametrize("arch", models.MODEL_NAMES)
def test_torchscript_answers_as_eager(arch):
    torch.manual_seed(0)
    model = models.create_model(arch, 4, 0.2)
    eager = Predictor(model, spec_for(arch))
    scripted = Predictor(model, spec_for(arch), torchscript=True)
    assert isinstance(scripted.forward, torch.jit.ScriptModule) and eager.forward is model
    batch = Inputs(array=np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32))
    np.testing.assert_allclose(scripted.predict(batch), eager.predict(batch), atol=1e-4)


def test_a_model_torchscript_rejects_is_served_eagerly(caplog):
    class Dynamic(nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :4] * len([a for a in x.shape if a > 0 and callable(print)])

    model = Dynamic()
    assert optimize(model, 8) is model
    assert "serving it eagerly" in caplog.text


@pytest.mark.parametrize("value, expected", [(None, True), ("true", True), ("false", False), ("0", False)])
def test_the_switch(value, expected):
    environ = {} if value is None else {"MODEL_SERVER_TORCHSCRIPT": value}
    assert SageMakerEnv.from_environ(environ).server.torchscript is expected
