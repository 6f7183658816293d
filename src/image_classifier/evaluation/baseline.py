"""The test channel's per-image figures a drift report compares an endpoint's traffic against: baseline.json.

Beside metrics.json in the evaluation report: for every image of the report's channel, in the
report's order, the top-1 class the model predicted, its probability, the image's width and
height as decoded (EXIF orientation applied) and its brightness. `image-classifier drift`
(image_classifier.drift) computes the same figures from what an endpoint captured.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from PIL import Image, ImageStat

BASELINE_FILE = "baseline.json"
FIGURES = ("predicted", "confidence", "width", "height", "brightness")  # the per-image lists of baseline.json


def brightness(image: Image.Image) -> float:
    """The mean luma of `image`, 0 (black) to 255 (white): Pillow's `convert("L")` (ITU-R 601-2
    weights 0.299 R + 0.587 G + 0.114 B) averaged over every pixel."""
    return float(ImageStat.Stat(image.convert("L")).mean[0])


def image_figures(image: Image.Image) -> dict[str, float]:
    """`width` and `height` (pixels) and `brightness` (0-255, see `brightness`) of a decoded image."""
    return {"width": image.width, "height": image.height, "brightness": round(brightness(image), 2)}


def figures(probabilities: np.ndarray, images: Iterable[Image.Image]) -> dict[str, Any]:
    """baseline.json's content for the predictions `probabilities` ((N, C) float32 softmax
    outputs) of the N decoded RGB `images`, in the same order.

    Returns:
        `images` (N) and a list of N per figure of `FIGURES`: `predicted` (int class ids),
        `confidence` (the top-1 probability, 0-1, rounded to 5 digits), `width` and `height`
        (pixels) and `brightness` (0-255, rounded to 2 digits).

    Raises:
        ValueError: not as many images as rows of `probabilities`.
    """
    rows = [image_figures(image) for image in images]
    if len(rows) != len(probabilities):
        raise ValueError(f"{len(rows)} images for {len(probabilities)} predictions")
    return {"images": len(rows),
            "predicted": probabilities.argmax(axis=1).astype(int).tolist(),
            "confidence": np.round(probabilities.max(axis=1).astype(float), 5).tolist(),
            **{name: [row[name] for row in rows] for name in ("width", "height", "brightness")}}
