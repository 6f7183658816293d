"""Explanations on the model server: Grad-CAM (`image_classifier.explain`) on a worker's eager model.

A worker makes its `Explainer` on the first request that asks for an explanation
(`PredictorHolder.explain`): Captum and matplotlib are imported then, not before, so the
plain path never pays for them. Each image's torch work runs in the worker's batcher thread
(`Batcher.run`), one image at a time between the batches of plain requests: it takes turns
with their forward passes instead of fighting them for the cores, and they wait for at most
one image's explanation. Drawing and encoding the overlay (Pillow) happen in the request's thread.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from image_classifier import explain
from image_classifier.serving.batcher import Batcher
from image_classifier.serving.codec import Explanation, Inputs
from image_classifier.serving.predictor import Predictor

logger = logging.getLogger(__name__)


@dataclass
class _Attribution:
    """One image through the model: what its explanation is drawn from."""

    probabilities: np.ndarray   # (classes,) float32
    network_input: np.ndarray   # (3, H, W) float32, normalised: what the model saw
    class_id: int               # the class explained
    heatmap: np.ndarray         # (H, W) float32 in [0, 1]


class Explainer:
    """Grad-CAM explanations of the predictor's model, drawn over each image as the model saw it.

    The heat-map is computed on the predictor's eager model (`Predictor.model`, made on the first
    explanation: the served OpenVINO model has no hooks or gradients). Captum's hooks sit on that
    model only during a task in the batcher's thread, where the forward passes of plain requests
    also run, one after the other: they never see them.

    Args:
        predictor: the worker's predictor.
        batcher: the worker's batcher, whose thread runs the torch work.
    """

    def __init__(self, predictor: Predictor, batcher: Batcher):
        self.predictor, self.batcher = predictor, batcher
        self.layer = explain.target_layer(predictor.model, predictor.spec.arch)
        logger.info("explanations ready: Grad-CAM at %s of %s", type(self.layer).__name__, predictor.spec.arch)

    def _attribute(self, image: Inputs, class_id: int | None) -> _Attribution:
        """In the batcher's thread: the image preprocessed, its probabilities from the served model
        (as a plain request's), its heat-map from the eager model."""
        batch = self.predictor.preprocess(image)
        probabilities = self.predictor.probabilities(batch)[0]
        target = int(np.argmax(probabilities)) if class_id is None else class_id
        heatmap = explain.gradcam(self.predictor.model, self.layer, torch.from_numpy(batch), torch.tensor([target]))
        return _Attribution(probabilities, batch[0], target, heatmap[0].numpy())

    def _render(self, attribution: _Attribution) -> Explanation:
        spec = self.predictor.spec
        image = explain.overlay(explain.input_image(attribution.network_input, spec.mean, spec.std),
                                attribution.heatmap)
        return Explanation(attribution.class_id, spec.labels[attribution.class_id],
                           float(attribution.probabilities[attribution.class_id]), explain.png_bytes(image),
                           image.width, image.height)

    def explain(self, inputs: Inputs, class_id: int | None = None) -> tuple[np.ndarray, list[Explanation]]:
        """Probabilities (N, classes) float32 of `inputs` and one explanation per image, for
        `class_id`, or for each image's most probable class when None.

        The overlay is drawn on the network's input, de-normalised: the image resized and
        center-cropped as the model saw it (image_size x image_size), or an npy array as sent.
        """
        attributions = [self.batcher.run(lambda image=image: self._attribute(image, class_id))
                        for image in inputs.split()]
        return (np.stack([a.probabilities for a in attributions]),
                [self._render(attribution) for attribution in attributions])
