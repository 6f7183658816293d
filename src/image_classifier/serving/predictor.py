"""The model held by a server worker: the OpenVINO model at the precision the server was given
(`runtime`), the preprocessing of its inputs, and the eager model for explanations.

The training job writes the OpenVINO files beside model.pth (`export=openvino`, its default;
training/export.py). A model without them (made before the export existed, or with `export=none`)
is converted from model.pth when the worker loads it, with a log line saying so; its int8 needs
calibration images the server does not have, so it is refused with the fix in the message.

Predictions need no torch (OpenVINO, numpy, Pillow): torch is imported for an explanation (the
eager model) or to convert a model without the exported files, and not before.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from image_classifier import artifacts, runtime
from image_classifier.images import center_view
from image_classifier.serving.codec import Inputs

if TYPE_CHECKING:  # imported where needed: a worker predicts without torch
    import torch

logger = logging.getLogger(__name__)

Logits = Callable[[np.ndarray], np.ndarray]  # float32 (N, 3, H, W) → float32 logits (N, classes)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of float32 logits (N, classes), shifted by each row's max (no overflow)."""
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (shifted / shifted.sum(axis=1, keepdims=True)).astype(np.float32, copy=False)


def eager_model(model_dir: Path) -> torch.nn.Module:
    """The model rebuilt from `model.pth` and `model_config.json`: eval mode, CPU, no parameter gradients.

    Raises:
        FileNotFoundError: the artifacts are missing.
        ValueError, RuntimeError: they do not describe a model of the registry.
    """
    state_dict, spec = artifacts.load_model(model_dir)
    model = spec.create_model()
    model.load_state_dict(state_dict)
    return model.train(False).requires_grad_(False)


def compile_for_serving(model_dir: Path, spec: artifacts.ModelSpec, precision: str = runtime.LOSSLESS,
                        threads: int | None = None) -> Logits:
    """The forward pass of the model in `model_dir` at `precision`, from the training job's OpenVINO
    file, or converted from model.pth now where there is none (fp32 and bf16 only).

    Raises:
        ValueError: an unknown precision.
        FileNotFoundError: int8 without the training job's `openvino/model-int8.xml`, or no artifacts.
        RuntimeError: the model could not be converted.
    """
    path = runtime.model_file(model_dir, precision)
    if path.exists():
        compiled = runtime.compile_model(path, precision, threads)
        logger.info("serving %s at %s from %s", spec.arch, precision, path)
    elif precision == "int8":
        raise FileNotFoundError(
            f"MODEL_SERVER_PRECISION=int8 needs {path}, which a training job with export=openvino (the default) "
            f"writes, calibrated on its train channel; this model has none: train it again, or serve fp32 or bf16")
    else:
        started = time.perf_counter()
        converted = runtime.convert(eager_model(model_dir), spec.image_size)
        compiled = runtime.compile_model(converted, precision, threads)
        logger.warning("no %s (a model made before export=openvino, or with export=none): model.pth converted "
                       "for OpenVINO at start-up in %.1f s", path, time.perf_counter() - started)
    request = compiled.create_infer_request()
    return lambda batch: runtime.infer(request, batch)


class Predictor:
    """The served model of a worker: preprocessing, forward pass, probabilities.

    Args:
        spec: the model's `model_config.json`.
        logits: its forward pass (`compile_for_serving`); called from one thread at a time (the
            worker's batcher).
        eager: makes the eager model (`eager_model`), called once, on the first explanation:
            Grad-CAM needs its hooks and gradients.
        precision: what `logits` runs at, for the logs.
    """

    def __init__(self, spec: artifacts.ModelSpec, logits: Logits, eager: Callable[[], torch.nn.Module],
                 precision: str = runtime.LOSSLESS):
        self.spec, self.logits, self.precision = spec, logits, precision
        self._eager, self._model, self._model_lock = eager, None, threading.Lock()
        self.mean = np.array(spec.mean, np.float32)[:, None, None]
        self.std = np.array(spec.std, np.float32)[:, None, None]

    @classmethod
    def load(cls, model_dir: Path, precision: str = runtime.LOSSLESS, threads: int | None = None) -> Predictor:
        """The model in `model_dir` served at `precision` (`compile_for_serving`) on `threads`
        inference threads (None: every core).

        Raises:
            FileNotFoundError, ValueError, RuntimeError: as `compile_for_serving`.
        """
        spec = artifacts.load_spec(model_dir)
        return cls(spec, compile_for_serving(model_dir, spec, precision, threads), lambda: eager_model(model_dir),
                   precision)

    @classmethod
    def from_model(cls, model: torch.nn.Module, spec: artifacts.ModelSpec, precision: str = runtime.LOSSLESS):
        """`model` (in memory) converted and compiled at `precision` (fp32 or bf16).

        Raises:
            ValueError: int8 (it needs calibration images: `runtime.quantize`), or an unknown precision.
        """
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"an in-memory model is served at fp32 or bf16, not {precision!r}")
        model = model.train(False).requires_grad_(False)
        request = runtime.compile_model(runtime.convert(model, spec.image_size), precision).create_infer_request()
        return cls(spec, lambda batch: runtime.infer(request, batch), lambda: model, precision)

    @property
    def model(self) -> torch.nn.Module:
        """The eager model (eval mode, no parameter gradients), made on first use: for Grad-CAM."""
        with self._model_lock:
            if self._model is None:
                self._model = self._eager()
            return self._model

    def preprocess(self, inputs: Inputs) -> np.ndarray:
        """The network's input (N, 3, H, W) float32: images resized and center-cropped
        (`images.center_view`), scaled to [0, 1] and normalised by the model's mean and std as
        one array (`transforms.network_input`'s arithmetic), or an npy array as it is."""
        if inputs.images is None:
            return np.ascontiguousarray(inputs.array, dtype=np.float32)
        size = self.spec.image_size
        pixels = np.stack([np.asarray(center_view(image, size), dtype=np.uint8) for image in inputs.images])
        batch = pixels.transpose(0, 3, 1, 2).astype(np.float32)
        batch /= 255
        batch -= self.mean
        batch /= self.std
        return batch

    def probabilities(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities (N, num_classes) float32, softmax over the logits of `batch` (N, 3, H, W) float32."""
        return softmax(self.logits(np.ascontiguousarray(batch, dtype=np.float32)))

    def predict(self, inputs: Inputs) -> np.ndarray:
        """Class probabilities (N, num_classes) float32 of `inputs`, in this thread."""
        return self.probabilities(self.preprocess(inputs))
