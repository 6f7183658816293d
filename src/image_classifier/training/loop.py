"""One epoch of training and one pass of evaluation, each returning a metrics dict."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from image_classifier.profiling.steps import NO_TIMER, NoTimer

if TYPE_CHECKING:  # smdebug is imported only when debugging is asked for
    from image_classifier.debugging.hook import DebugHook


@dataclass
class Meter:
    """Running sums of an epoch; kept in checkpoints so an epoch can resume part-way."""

    loss_sum: float = 0.0   # sum over images of the per-image loss
    correct: int = 0        # images whose top-1 prediction is right
    count: int = 0          # images seen
    steps: int = 0          # batches seen
    seconds: float = 0.0    # wall time spent

    def update(self, loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> None:
        n = targets.shape[0]
        self.loss_sum += loss.item() * n  # note: .item() is a CPU-GPU sync point
        self.correct += (logits.argmax(dim=1) == targets).sum().item()
        self.count += n
        self.steps += 1

    def metrics(self) -> dict[str, float]:
        """`loss` (mean cross-entropy), `accuracy` (top-1, 0–1), `images_per_second`."""
        count = max(self.count, 1)
        return {"loss": self.loss_sum / count, "accuracy": self.correct / count,
                "images_per_second": self.count / self.seconds if self.seconds else 0.0}

    def state_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class Outputs:
    """What an evaluation pass predicted, batch by batch, on the CPU: for figures beyond loss and accuracy."""

    probabilities: list[torch.Tensor] = field(default_factory=list)  # (n, classes) float32 softmax per batch
    targets: list[torch.Tensor] = field(default_factory=list)        # (n,) int64 per batch

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        self.probabilities.append(logits.float().softmax(dim=1).cpu())
        self.targets.append(targets.cpu())

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities (N, classes) float32, targets (N,) int64), in the loader's order."""
        if not self.targets:
            return np.zeros((0, 0), np.float32), np.zeros(0, np.int64)
        return torch.cat(self.probabilities).numpy(), torch.cat(self.targets).long().numpy()


def autocast(device: torch.device, dtype: torch.dtype | None):
    """Mixed precision on a GPU (`dtype` float16 or bfloat16); nothing when dtype is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def forward(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, criterion: nn.Module,
            device: torch.device, amp_dtype: torch.dtype | None,
            hook: DebugHook | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Move a batch to `device` and compute (logits (N, classes), loss (), targets (N,)) there."""
    images = images.to(device, non_blocking=True)
    targets = targets.to(device, non_blocking=True)
    with autocast(device, amp_dtype):
        logits = model(images)
        if hook:
            hook.record_batch(targets, logits)
        loss = criterion(logits.float(), targets)
    return logits, loss, targets


def train_one_epoch(model: nn.Module, loader: Iterable, criterion: nn.Module,
                    optimizer: torch.optim.Optimizer, device: torch.device,
                    scaler: torch.amp.GradScaler, amp_dtype: torch.dtype | None,
                    meter: Meter, should_stop: Callable[[], bool] = lambda: False,
                    hook: DebugHook | None = None, timer: NoTimer = NO_TIMER,
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None) -> Meter:
    """Train over `loader`'s batches of (images (N, 3, H, W) float32, targets (N,) int64).

    The model must already be in the right train/eval mode. Stops early, after a whole
    step, when `should_stop()` turns true (SIGTERM); `meter.steps` then says where.
    `hook` (smdebug) and `timer` (profile=true) watch; by default they do nothing.
    `scheduler`, when given, steps after every optimizer step.
    """
    if hook:
        hook.set_mode("train")
    timer.set_mode("train")
    start = time.perf_counter()
    for images, targets in timer.iterate(loader):
        # compute output
        with timer.phase("forward"):
            logits, loss, targets = forward(model, images, targets, criterion, device, amp_dtype, hook)

        # compute gradient and do an optimizer step (the scaler is a no-op unless float16)
        with timer.phase("backward"):
            optimizer.zero_grad(set_to_none=True)
            if hook:
                hook.set_grad_scale(scaler)  # the hook saves gradients unscaled
            scaler.scale(loss).backward()
        with timer.phase("optimizer"):
            scaler.step(optimizer)
            scaler.update()
            if scheduler is not None:
                scheduler.step()

        # measure accuracy and record loss
        meter.update(loss.detach(), logits.detach(), targets)
        timer.end_step()
        if should_stop():
            break
    meter.seconds += time.perf_counter() - start
    return meter


@torch.inference_mode()
def evaluate(model: nn.Module, loader: Iterable, criterion: nn.Module, device: torch.device,
             amp_dtype: torch.dtype | None, hook: DebugHook | None = None,
             hook_mode: str = "eval", timer: NoTimer = NO_TIMER,
             reduce: Callable[[Meter], Meter] | None = None, outputs: Outputs | None = None) -> dict[str, float]:
    """Mean loss and top-1 accuracy of `model` (put in eval mode) over `loader`.

    `hook_mode` is the smdebug mode of the pass: "eval" for validation, "predict" for the test channel.
    `outputs`, when given, collects every batch's probabilities and targets (this rank's).
    `reduce` turns the pass's Meter into the job's (distributed.all_reduce_meter adds the ranks'
    shards); `model` must then be the unwrapped module, so that ranks with shards of unequal
    length run no collective in the pass.
    """
    model.train(False)  # eval mode
    if hook:
        hook.set_mode(hook_mode)
    timer.set_mode("eval")
    meter = Meter()
    start = time.perf_counter()
    for images, targets in timer.iterate(loader):
        with timer.phase("forward"):
            logits, loss, targets = forward(model, images, targets, criterion, device, amp_dtype, hook)
        meter.update(loss, logits, targets)
        if outputs is not None:
            outputs.update(logits, targets)
        timer.end_step()
    meter.seconds = time.perf_counter() - start
    return (reduce(meter) if reduce else meter).metrics()
