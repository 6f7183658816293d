"""The server's forward pass before issue 18, kept outside the package as the benchmarks' reference:
TorchScript, frozen and optimised for inference, fp32.

PyTorch deprecated TorchScript (torch 2.15 warns on `torch.jit.script`); the server now runs
OpenVINO (`image_classifier.runtime`). `scripts/bench_serving.py` runs this as its `torchscript`
server (the project's server with this forward pass: `create_app`) and `scripts/bench_runtimes.py`
as its `torchscript fp32` row, each beside the new runtime in the same run
(`image_classifier.benchmarks.torchscript_reference` imports it).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from image_classifier import artifacts
from image_classifier.serving.predictor import Predictor, eager_model

logger = logging.getLogger(__name__)

APP = "torchscript_reference:create_app()"  # for gunicorn, with this folder on the path


def optimize(model: torch.nn.Module, image_size: int) -> torch.nn.Module:
    """`model` scripted, frozen and optimised for inference with TorchScript, or `model` itself.

    `torch.jit.optimize_for_inference` folds BatchNorm into the convolutions and picks oneDNN
    kernels. Any failure to script falls back to the eager model, with a warning.
    """
    try:
        with torch.inference_mode(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            scripted = torch.jit.optimize_for_inference(torch.jit.script(model.train(False)))
            scripted(torch.zeros(1, 3, image_size, image_size))
        return scripted
    except Exception as exc:  # TorchScript rejects some modules
        logger.warning("TorchScript could not optimise the model (%s: %s); serving it eagerly",
                       type(exc).__name__, exc)
        return model


def load_predictor(model_dir: Path, precision: str = "fp32", threads: int | None = None) -> Predictor:
    """The model in `model_dir` as a `Predictor` whose forward pass is TorchScript fp32 (a
    `PredictorHolder` loader).

    Raises:
        ValueError: a precision other than fp32 (TorchScript has no other here).
    """
    if precision != "fp32":
        raise ValueError(f"the TorchScript reference runs fp32 only, not {precision}")
    if threads:
        torch.set_num_threads(threads)
    model = eager_model(model_dir)
    spec = artifacts.load_spec(model_dir)
    scripted = optimize(model, spec.image_size)

    def logits(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return scripted(torch.from_numpy(batch)).float().numpy()

    for _ in range(3):  # TorchScript's profiling executor optimises over the first runs
        logits(np.zeros((1, 3, spec.image_size, spec.image_size), np.float32))
    return Predictor(spec, logits, lambda: model, "fp32")


def create_app():
    """The project's Flask app serving through `load_predictor` (gunicorn: `APP`)."""
    from image_classifier.serving.app import create_app as project_app

    return project_app({"PREDICTOR_LOADER": load_predictor})
