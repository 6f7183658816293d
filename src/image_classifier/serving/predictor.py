"""The model held by a server worker: loaded once from the model artifacts, then predicts."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from image_classifier import artifacts
from image_classifier.serving.codec import Inputs
from image_classifier.transforms import eval_transform

logger = logging.getLogger(__name__)


def optimize(model: torch.nn.Module, image_size: int) -> torch.nn.Module:
    """`model` scripted, frozen and optimised for inference with TorchScript, or `model` itself.

    `torch.jit.optimize_for_inference` folds BatchNorm into the convolutions and picks oneDNN
    kernels: on 2 CPU cores, resnet50 at 224 px went from 13.6 to 24.2 images/s at batch 8 and
    from 79.6 to 64.2 ms at batch 1 (measured side by side here). The outputs equal the eager
    model's to float32 rounding (tests/serving/test_predictor.py). Any failure to script falls
    back to the eager model, with a warning.
    """
    try:
        # torch 2.15 marks TorchScript deprecated (FutureWarning) in favour of torch.compile, which
        # needs a C++ compiler at run time (none in the serving image) or torch.export
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            scripted = torch.jit.optimize_for_inference(torch.jit.script(model.train(False)))
            scripted(torch.zeros(1, 3, image_size, image_size))
        return scripted
    except Exception as exc:  # TorchScript rejects some modules: serving eagerly is still right
        logger.warning("TorchScript could not optimise the model (%s: %s); serving it eagerly",
                       type(exc).__name__, exc)
        return model


class Predictor:
    """A model from `artifacts.load_model`, in eval mode on the CPU, and its preprocessing."""

    def __init__(self, model: torch.nn.Module, spec: artifacts.ModelSpec, torchscript: bool = False):
        # eval mode, and no parameter gradients: Grad-CAM (serving/explainer.py) needs the gradient
        # at one layer only, and with none wanted before it the forward pass records no graph there
        self.model = model.train(False).requires_grad_(False)
        self.spec = spec
        self.transform = eval_transform(spec.image_size, spec.mean, spec.std)
        self.forward = optimize(self.model, spec.image_size) if torchscript else self.model

    @classmethod
    def load(cls, model_dir: Path, torchscript: bool = False) -> Predictor:
        """Rebuild the model from `model.pth` and `model_config.json` in `model_dir`.

        Args:
            torchscript: serve it through `optimize` (TorchScript), not eagerly.

        Raises:
            FileNotFoundError: the artifacts are missing.
            ValueError, RuntimeError: they do not describe a model of the registry.
        """
        state_dict, spec = artifacts.load_model(model_dir)
        model = spec.create_model()
        model.load_state_dict(state_dict)
        return cls(model, spec, torchscript)

    def preprocess(self, inputs: Inputs) -> torch.Tensor:
        """The network's input (N, 3, H, W) float32: images through the eval transform, arrays as they are."""
        if inputs.images is not None:
            return torch.stack([self.transform(image) for image in inputs.images])
        return torch.from_numpy(inputs.array)

    @torch.inference_mode()
    def probabilities(self, batch: torch.Tensor) -> np.ndarray:
        """Class probabilities (N, num_classes) float32, softmax over the logits of `batch`."""
        return torch.softmax(self.forward(batch).float(), dim=1).numpy()

    def predict(self, inputs: Inputs) -> np.ndarray:
        """Class probabilities (N, num_classes) float32 of `inputs`, in this thread."""
        return self.probabilities(self.preprocess(inputs))
