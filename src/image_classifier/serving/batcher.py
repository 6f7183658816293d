"""Dynamic batching: concurrent requests of a worker share one forward pass; one server's workers take turns.

Request threads decode and preprocess their input themselves (in parallel), then hand the
tensor to the worker's batcher thread and wait. The batcher takes every request waiting (up to
`max_images` images of the same size) as one batch, so a lone request waits for nobody and
concurrent ones are batched by the time the previous forward takes. Every forward pass (and
every model load) of a server's workers holds the server's `shared.ForwardLock`, so each can
use all the cores without the workers fighting over them.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from image_classifier.serving.shared import ForwardLock, RunDir

logger = logging.getLogger(__name__)

DEFAULT_MAX_IMAGES = 16


@dataclass
class _Request:
    batch: torch.Tensor                      # (N, 3, H, W) float32, preprocessed
    done: threading.Event = field(default_factory=threading.Event)
    result: np.ndarray | None = None         # (N, classes) float32
    error: BaseException | None = None


class Batcher:
    """Runs `forward` ((N, 3, H, W) float32 → (N, classes) probabilities) on batches of waiting requests."""

    def __init__(self, forward: Callable[[torch.Tensor], np.ndarray], max_images: int = DEFAULT_MAX_IMAGES,
                 lock: ForwardLock | None = None):
        self.forward, self.max_images = forward, max_images
        self.lock = lock or RunDir().lock()
        self._queue: queue.Queue[_Request] = queue.Queue()
        self.batches = 0  # forwards run: tests and the benchmark read it
        threading.Thread(target=self._run, name="batcher", daemon=True).start()

    def predict(self, batch: torch.Tensor) -> np.ndarray:
        """Probabilities (N, classes) float32 for `batch`, computed with whatever else is waiting.

        Raises:
            whatever the forward pass raised for the batch this request was in.
        """
        request = _Request(batch)
        self._queue.put(request)
        request.done.wait()
        if request.error is not None:
            raise request.error
        return request.result

    def _take(self) -> list[_Request]:
        """The first waiting request and every other one of the same image size, up to max_images."""
        first = self._queue.get()
        taken, left, images = [first], [], first.batch.shape[0]
        while images < self.max_images:
            try:
                request = self._queue.get_nowait()
            except queue.Empty:
                break
            if request.batch.shape[1:] == first.batch.shape[1:] and images + request.batch.shape[0] <= self.max_images:
                taken.append(request)
                images += request.batch.shape[0]
            else:
                left.append(request)
        for request in left:  # another size, or too many images: the next batch takes them
            self._queue.put(request)
        return taken

    def _run(self) -> None:
        while True:
            requests = self._take()
            try:
                with self.lock.held():
                    probabilities = self.forward(torch.cat([r.batch for r in requests]))
                self.batches += 1
                start = 0
                for request in requests:
                    request.result = probabilities[start:start + request.batch.shape[0]]
                    start += request.batch.shape[0]
            except BaseException as exc:  # delivered to each waiting request; the batcher goes on
                for request in requests:
                    request.error = exc
            finally:
                for request in requests:
                    request.done.set()
