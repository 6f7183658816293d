"""Dynamic batching: concurrent requests of a worker share one forward pass; one server's workers take turns.

Request threads read and decode their body themselves (in parallel: Pillow, no torch), then
hand the input to the worker's batcher thread and wait. The batcher takes every request
waiting, up to `max_images` images, as one batch, so a lone request waits for nobody and
concurrent ones are batched by the time the previous forward pass takes. It preprocesses
them and runs the forward pass holding the server's `shared.ForwardLock`, so that each pass
uses all the cores without the workers fighting over them (model loads hold it too).
Other torch work that must take turns with the forward passes (an explanation's forward and
backward passes) runs in the same thread, alone, between batches: `Batcher.run`.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Sized
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from image_classifier.serving.shared import ForwardLock, RunDir

logger = logging.getLogger(__name__)

DEFAULT_MAX_IMAGES = 16
T = TypeVar("T")


@dataclass
class _Request:
    item: Sized                              # the input: its len() is its number of images
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None                       # (N, classes) float32, or what `task` returned
    error: BaseException | None = None
    task: Callable[[], Any] | None = None    # `Batcher.run`: called alone instead of a forward pass


def _identity(item: Any) -> np.ndarray:
    return item


class Batcher:
    """Runs `prepare` then `forward` on batches of the requests waiting, in a thread of its own.

    Args:
        forward: (N, 3, H, W) float32 array → (N, classes) float32 probabilities.
        prepare: one request's input → its (n, 3, H, W) float32 array; default: the input is
            that array. It runs in the batcher's thread: with the TorchScript server (before
            issue 18) each thread running torch operations got an OpenMP team of its own, and
            preprocessing in the request's thread cost 64 ms a request against 49 (resnet50,
            224 px, 2 cores, side by side). Preprocessing is Pillow and numpy now; one A/B with
            OpenVINO int8 in the request's thread gave 81.5 against 78.0 images/s, not yet
            conclusive.
        max_images: most images in one forward pass (inputs are never split).
        lock: held around each batch's preprocessing and forward passes; default the server's.
    """

    def __init__(self, forward: Callable[[np.ndarray], np.ndarray],
                 prepare: Callable[[Any], np.ndarray] = _identity, max_images: int = DEFAULT_MAX_IMAGES,
                 lock: ForwardLock | None = None):
        self.forward, self.prepare, self.max_images = forward, prepare, max_images
        self.lock = lock or RunDir().lock()
        self._queue: queue.Queue[_Request] = queue.Queue()
        self._backlog: deque[_Request] = deque()  # taken from the queue but not fitting the last batch
        self.batches = 0  # forward passes run: the tests read it
        threading.Thread(target=self._run, name="batcher", daemon=True).start()

    @property
    def waiting(self) -> int:
        """Requests and tasks handed in and not yet taken into a batch (the tests wait on it)."""
        return self._queue.qsize() + len(self._backlog)

    def predict(self, item: Sized) -> np.ndarray:
        """Probabilities (len(item), classes) float32, computed with whatever else is waiting.

        Raises:
            whatever `prepare` raised for this input, or `forward` for its batch.
        """
        return self._submit(_Request(item))

    def run(self, task: Callable[[], T]) -> T:
        """`task()` in the batcher's thread, holding the lock, alone between two batches; its result.

        For torch work that must take turns with the forward passes and run in the thread that
        already has an OpenMP team (see `prepare`). The requests waiting meanwhile are batched next.

        Raises:
            whatever `task` raised.
        """
        return self._submit(_Request((), task=task))

    def _submit(self, request: _Request) -> Any:
        self._queue.put(request)
        request.done.wait()
        if request.error is not None:
            raise request.error
        return request.result

    def _next(self, block: bool) -> _Request:
        return self._backlog.popleft() if self._backlog else self._queue.get(block)

    def _take(self) -> list[_Request]:
        """The oldest waiting request and the ones after it, in order, up to max_images images;
        a task alone."""
        first = self._next(block=True)
        taken, images = [first], len(first.item)
        while first.task is None and images < self.max_images:
            try:
                request = self._next(block=False)
            except queue.Empty:
                break
            if request.task is not None or images + len(request.item) > self.max_images:
                self._backlog.appendleft(request)  # first in the next batch
                break
            taken.append(request)
            images += len(request.item)
        return taken

    def _run(self) -> None:
        while True:
            requests = self._take()
            try:
                with self.lock.held():
                    if requests[0].task is not None:
                        requests[0].result = requests[0].task()
                    else:
                        self._predict(requests)
            except BaseException as exc:  # delivered to each waiting request; the batcher goes on
                for request in requests:
                    if request.result is None:
                        request.error = request.error or exc
            finally:
                for request in requests:
                    request.done.set()
                # while `_take` waits for the next request, hold nothing of this batch: its inputs
                # (a 50-megapixel image is 200 MB in Pillow) would stay alive until then
                del requests, request

    def _predict(self, requests: list[_Request]) -> None:
        """Preprocess each request (a failure is its own), then one forward pass per input size."""
        groups: dict[tuple[int, ...], list[tuple[_Request, np.ndarray]]] = {}
        for request in requests:
            try:
                batch = self.prepare(request.item)
            except Exception as exc:
                request.error = exc
                continue
            groups.setdefault(tuple(batch.shape[1:]), []).append((request, batch))
        for group in groups.values():
            try:
                probabilities = self.forward(np.concatenate([batch for _, batch in group]))
            except Exception as exc:
                for request, _ in group:
                    request.error = exc
                continue
            self.batches += 1
            start = 0
            for request, batch in group:
                request.result = probabilities[start:start + len(batch)]
                start += len(batch)
