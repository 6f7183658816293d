"""The serving runtime's files the training job writes beside model.pth (`export=openvino`).

Under `<model dir>/openvino/`:
- `model.xml` + `model.bin`: the model in OpenVINO's format at fp32, lossless (bf16 is this file
  compiled with the bf16 precision hint: `runtime.compile_model`; it has no file of its own);
- `model-int8.xml` + `model-int8.bin`: int8 from NNCF, calibrated on `runtime.CALIBRATION_IMAGES`
  train-channel images (a seeded draw) through the eval transforms, as requests will be.

The folder is written under a temporary name and renamed into place: a failed export leaves no
half-written folder. A failure does not fail the job (its model artifacts are written already):
the log says why.

`predict_each` runs the three precisions over the evaluation report's images, for the report's
rows per precision (training/evaluation.py).
"""

from __future__ import annotations

import logging
import random
import shutil
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch

from image_classifier import artifacts, runtime
from image_classifier.images import open_image
from image_classifier.training import data
from image_classifier.transforms import eval_transform

logger = logging.getLogger(__name__)

EXPORT_DIR, FILES = runtime.EXPORT_DIR, runtime.FILES
CALIBRATION_BATCH = 16


def calibration_batches(train_dir: Path, spec: artifacts.ModelSpec, images: int = runtime.CALIBRATION_IMAGES,
                        seed: int = 0) -> list[np.ndarray]:
    """`images` train-channel images in a seeded draw, through the eval transforms: float32
    batches (N, 3, image_size, image_size) of at most CALIBRATION_BATCH. Unreadable files are
    skipped (the job's scan has named them already)."""
    paths = [path for path, _ in data.list_files(train_dir, spec.class_names)]
    random.Random(seed).shuffle(paths)
    transform = eval_transform(spec.image_size, spec.mean, spec.std)
    tensors = []
    for path in paths:
        if len(tensors) == images:
            break
        try:
            tensors.append(transform(open_image(path)).numpy())
        except (OSError, ValueError):
            continue
    return [np.stack(tensors[i:i + CALIBRATION_BATCH]) for i in range(0, len(tensors), CALIBRATION_BATCH)]


def export(model_dir: Path, spec: artifacts.ModelSpec, state_dict: dict[str, torch.Tensor],
           calibration: list[np.ndarray]) -> Path:
    """Write `model_dir/openvino/` (see the module docstring) for the model `spec` and
    `state_dict` describe; its path.

    Raises:
        RuntimeError: the model could not be converted (`runtime.convert`).
        ValueError: no calibration image.
    """
    model = spec.create_model()
    model.load_state_dict(state_dict)
    converted = runtime.convert(model, spec.image_size)
    quantized = runtime.quantize(converted, calibration)
    staging = Path(tempfile.mkdtemp(prefix=f".{EXPORT_DIR}-", dir=model_dir))
    # mkdtemp makes the folder 0700: the serving image's user (not the training job's) must read it
    staging.chmod(0o755)
    try:
        runtime.save(converted, staging / FILES["fp32"])
        runtime.save(quantized, staging / FILES["int8"])
        target = model_dir / EXPORT_DIR
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def export_for_job(model_dir: Path, train_dir: Path, spec: artifacts.ModelSpec,
                   state_dict: dict[str, torch.Tensor]) -> Path | None:
    """`export` with calibration images from `train_dir`; None, with the reason logged, if it failed."""
    try:
        target = export(model_dir, spec, state_dict, calibration_batches(train_dir, spec))
    except Exception:  # the model artifacts are written: the server converts model.pth itself
        logger.exception("the OpenVINO export failed (model.pth and model_config.json are written)")
        return None
    logger.info("OpenVINO model at fp32 and int8 written to %s", target)
    return target


def predict_each(folder: Path, batches: Iterable[np.ndarray]) -> dict[str, tuple[np.ndarray, float]]:
    """Each precision's predictions of the exported models in `folder` (`export`'s) over `batches`.

    Args:
        batches: float32 (n, 3, H, W), preprocessed as the model's inputs (the eval transforms).

    Returns:
        per precision (`runtime.PRECISIONS`): the softmax probabilities (N, classes) float32 of
        all the batches in order, and the wall-clock seconds its forward passes took in this
        process (`runtime.infer`, OpenVINO's threads: every core; a first batch before the
        timing, so that compiling and first-call set-up are not counted).

    Raises:
        RuntimeError: OpenVINO could not read or compile a model (its message included).
        ValueError: no batch.
    """
    compiled = {precision: runtime.compile_model(folder / FILES[precision], precision)
                for precision in runtime.PRECISIONS}
    logits: dict[str, list[np.ndarray]] = {precision: [] for precision in compiled}
    seconds = dict.fromkeys(compiled, 0.0)
    for index, batch in enumerate(batches):
        for precision, model in compiled.items():
            if index == 0:
                runtime.infer(model, batch)  # warm-up, not timed
            start = time.perf_counter()
            logits[precision].append(runtime.infer(model, batch))
            seconds[precision] += time.perf_counter() - start
    if not logits["fp32"]:
        raise ValueError("no image to measure the precisions on")
    return {precision: (torch.softmax(torch.from_numpy(np.concatenate(outputs)), dim=1).numpy(), seconds[precision])
            for precision, outputs in logits.items()}
