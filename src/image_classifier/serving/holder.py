"""Loads the model in a worker's background thread, so `/ping` answers at once while it loads.

This module imports neither OpenVINO nor the model code at import time: a worker can take
connections (and answer 503) within a second of starting. Predictions need no torch at all
(serving/predictor.py): a worker imports it on its first explanation (torch reads the worker's
OMP_NUM_THREADS then).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from image_classifier.serving.errors import ModelNotReadyError
from image_classifier.serving.shared import RunDir

if TYPE_CHECKING:  # not at run time: the worker imports torch in its loader thread
    import numpy as np

    from image_classifier.serving.codec import Explanation, Inputs
    from image_classifier.serving.predictor import Predictor

logger = logging.getLogger(__name__)


class PredictorHolder:
    """Holds the worker's `Predictor` once it has loaded (and warmed up) in the background.

    Args:
        model_dir: the model artifacts.
        background: load in a thread (the server); False loads before returning.
        precision: fp32, bf16 or int8 (`runtime.PRECISIONS`): what the forward pass runs at.
        max_batch: most images in one batched forward pass (`batcher.Batcher`).
        run_dir: what the server's workers share (`shared.RunDir`); default the server's.
        loader: (model_dir, precision, threads) → the `Predictor`; default `Predictor.load`. The
            benchmarks' reference server (scripts/torchscript_reference.py) gives its own.
    """

    def __init__(self, model_dir: Path, background: bool = True, precision: str = "fp32", max_batch: int = 16,
                 run_dir: RunDir | None = None, loader: Callable[[Path, str, int | None], Predictor] | None = None):
        self.model_dir, self.precision, self.max_batch, self.loader = model_dir, precision, max_batch, loader
        self.run_dir = run_dir or RunDir()
        self._predictor = None
        self.batcher = None  # the worker's Batcher, once the model is loaded: use `predict`
        self._explainer = None  # made by the first request asking for an explanation
        self._explainer_lock = threading.Lock()
        self.error: str | None = None
        self._loaded = threading.Event()
        if background:
            threading.Thread(target=self._load, name="model-loader", daemon=True).start()
        else:
            self._load()

    def _load(self) -> None:
        try:
            import numpy as np

            from image_classifier import runtime
            from image_classifier.serving.batcher import Batcher
            from image_classifier.serving.codec import Inputs
            from image_classifier.serving.predictor import Predictor

            threads = os.environ.get("OMP_NUM_THREADS")  # set per worker by gunicorn_config.post_fork
            logger.info("%s", runtime.describe_cpu())
            lock = self.run_dir.lock()
            # At start, workers load one at a time on all the cores, so the first is ready sooner;
            # a worker replacing a dead one loads beside the others, which go on serving.
            with lock.held() if not self.run_dir.ready else contextlib.nullcontext():
                predictor = (self.loader or Predictor.load)(self.model_dir, self.precision,
                                                            int(threads) if threads else None)
                size = predictor.spec.image_size
                for batch in (1, self.max_batch):  # warm-up: OpenVINO prepares kernels per input shape
                    predictor.predict(Inputs(array=np.zeros((batch, 3, size, size), np.float32)))
            self.batcher = Batcher(predictor.probabilities, predictor.preprocess, self.max_batch, lock)
            self.run_dir.mark_ready()
            self._predictor = predictor
            logger.info("model %s loaded from %s at %s", predictor.spec.arch, self.model_dir, predictor.precision)
        except Exception as exc:  # reported by /ping and /invocations; the worker stays up
            self.error = f"{type(exc).__name__}: {exc}"
            logger.exception("model failed to load from %s", self.model_dir)
        finally:
            self._loaded.set()

    @property
    def ready(self) -> bool:
        """This worker's model is loaded."""
        return self._predictor is not None and self._loaded.is_set()

    @property
    def server_ready(self) -> bool:
        """This worker's model is loaded, or it is loading and another worker's already is
        (a replacement worker: its requests wait for its model)."""
        return self.ready or (self.error is None and self.run_dir.ready)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until loading finished (ready or failed); True if it finished."""
        return self._loaded.wait(timeout)

    def get(self, wait: float = 0.0) -> Predictor:
        """The loaded `Predictor`, waiting up to `wait` seconds for it while it loads.

        Raises:
            ModelNotReadyError: still loading after `wait`, or it failed to load (503).
        """
        self._loaded.wait(wait)
        return self.predictor

    def labels(self, wait: float = 0.0) -> Sequence[str]:
        """The model's class labels (class_id = index), waiting up to `wait` seconds while it loads.

        Raises:
            ModelNotReadyError: still loading after `wait`, or it failed to load (503).
        """
        return self.get(wait).spec.labels

    def predict(self, inputs: Inputs) -> np.ndarray:
        """Class probabilities (N, classes) float32 of decoded `inputs`, computed in the worker's
        batcher with the other requests waiting (`batcher.Batcher`).

        Raises:
            ModelNotReadyError: the model is not loaded (503).
            whatever preprocessing or the forward pass raised.
        """
        self.get()  # the batcher exists once the model is loaded
        return self.batcher.predict(inputs)

    def explain(self, inputs: Inputs, class_id: int | None = None) -> tuple[np.ndarray, list[Explanation]]:
        """Probabilities (N, classes) float32 of `inputs` and one explanation per image, for
        `class_id` or each image's most probable class (`explainer.Explainer.explain`).

        The worker's first explanation makes its `Explainer`: that request imports Captum and
        matplotlib (a second or two); the plain path never does.

        Raises:
            ModelNotReadyError: the model is not loaded (503).
        """
        predictor = self.predictor
        with self._explainer_lock:
            if self._explainer is None:
                from image_classifier.serving.explainer import Explainer

                self._explainer = Explainer(predictor, self.batcher)
        return self._explainer.explain(inputs, class_id)

    @property
    def predictor(self) -> Predictor:
        """The loaded `Predictor`. Raises: ModelNotReadyError: still loading, or it failed (503)."""
        if self._predictor is None or not self._loaded.is_set():
            raise ModelNotReadyError(f"model failed to load: {self.error}" if self.error else "model is loading")
        return self._predictor
