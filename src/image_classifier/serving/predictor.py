"""The model held by a server worker: loaded once from the model artifacts, then predicts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from image_classifier import artifacts, models
from image_classifier.serving.codec import Inputs
from image_classifier.transforms import eval_transform


class Predictor:
    """A model from `artifacts.load_model`, in eval mode on the CPU, and its preprocessing."""

    def __init__(self, model: torch.nn.Module, spec: artifacts.ModelSpec):
        self.model = model.eval()
        self.spec = spec
        self.transform = eval_transform(spec.image_size, spec.mean, spec.std)

    @classmethod
    def load(cls, model_dir: Path) -> "Predictor":
        """Rebuild the model from `model.pth` and `model_config.json` in `model_dir`.

        Raises:
            FileNotFoundError: the artifacts are missing.
            ValueError, RuntimeError: they do not describe a model of the registry.
        """
        state_dict, spec = artifacts.load_model(model_dir)
        model = models.create_model(spec.arch, spec.num_classes, spec.dropout)
        model.load_state_dict(state_dict)
        return cls(model, spec)

    @torch.inference_mode()
    def predict(self, inputs: Inputs) -> np.ndarray:
        """Class probabilities (N, num_classes) float32, softmax over the logits."""
        if inputs.images is not None:
            batch = torch.stack([self.transform(image) for image in inputs.images])
        else:
            batch = torch.from_numpy(inputs.array)
        return torch.softmax(self.model(batch).float(), dim=1).numpy()
