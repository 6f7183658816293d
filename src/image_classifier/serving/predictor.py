"""The model held by a server worker: loaded once from the model artifacts, then predicts."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import torch

from image_classifier import artifacts, models
from image_classifier.serving.codec import Inputs
from image_classifier.serving.errors import ModelNotReadyError
from image_classifier.transforms import eval_transform

logger = logging.getLogger(__name__)


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


class PredictorHolder:
    """Loads the predictor in a background thread, so `/ping` answers 503 at once until it is ready."""

    def __init__(self, model_dir: Path, background: bool = True):
        self.model_dir = model_dir
        self._predictor: Predictor | None = None
        self.error: str | None = None
        self._loaded = threading.Event()
        if background:
            threading.Thread(target=self._load, name="model-loader", daemon=True).start()
        else:
            self._load()

    def _load(self) -> None:
        try:
            predictor = Predictor.load(self.model_dir)
            size = predictor.spec.image_size
            predictor.predict(Inputs(array=np.zeros((1, 3, size, size), np.float32)))  # warm-up
            self._predictor = predictor
            logger.info("model %s loaded from %s", predictor.spec.arch, self.model_dir)
        except Exception as exc:  # reported by /ping and /invocations; the worker stays up
            self.error = f"{type(exc).__name__}: {exc}"
            logger.exception("model failed to load from %s", self.model_dir)
        finally:
            self._loaded.set()

    @property
    def ready(self) -> bool:
        return self._predictor is not None and self._loaded.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until loading finished (ready or failed); True if it finished."""
        return self._loaded.wait(timeout)

    @property
    def predictor(self) -> Predictor:
        """Raises: ModelNotReadyError: still loading, or loading failed (503)."""
        if self._predictor is None or not self._loaded.is_set():
            raise ModelNotReadyError(f"model failed to load: {self.error}" if self.error else "model is loading")
        return self._predictor
