"""The job's resume state in the checkpoint dir (spot training): written atomically, resumed only by its own job."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from image_classifier import artifacts
from image_classifier.training import distributed

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class JobState:
    """What a checkpoint holds besides model, optimizer and scheduler states."""

    epoch: int = 0                     # epochs completed
    step: int = 0                      # steps done in the epoch in progress (0 = at a boundary)
    meter: dict = field(default_factory=dict)   # Meter of the epoch in progress
    best_accuracy: float = -1.0
    best_loss: float = float("inf")
    best_epoch: int = 0
    best_state: dict | None = None     # model state_dict of the best epoch, on the CPU
    epochs_without_improvement: int = 0
    history: list = field(default_factory=list)  # one metrics dict per completed epoch

    def end_epoch(self, line: dict, model: nn.Module) -> None:
        """Record a completed epoch's figures (`metrics.epoch_line`) and keep the best weights
        (valid accuracy, then loss on ties)."""
        improved = (line["valid_accuracy"], -line["valid_loss"]) > (self.best_accuracy, -self.best_loss)
        if improved:
            self.best_accuracy, self.best_loss = line["valid_accuracy"], line["valid_loss"]
            self.best_epoch = line["epoch"]
            self.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        self.epochs_without_improvement = 0 if improved else self.epochs_without_improvement + 1
        self.history.append(line)
        self.epoch, self.step, self.meter = line["epoch"], 0, {}


class Checkpointer:
    """Saves and restores the whole job state in `directory/checkpoint.pt`.

    The file is one `torch.save` dict, written atomically (`artifacts.atomic_torch_save`): a
    job killed mid-write leaves the previous checkpoint. It describes itself: `identity` (the
    job's config and classes), `job` (JobState), the `model`, `optimizer`, `scheduler` and
    `scaler` state_dicts, and the CPU and CUDA random states.
    """

    def __init__(self, directory: Path, identity: dict[str, Any], model: nn.Module,
                 optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                 scaler: torch.amp.GradScaler):
        self.path = directory / CHECKPOINT_FILE
        self.identity = identity  # config and classes: a checkpoint of another job is not resumed
        self.model, self.optimizer, self.scheduler, self.scaler = model, optimizer, scheduler, scaler

    def save(self, state: JobState) -> None:
        """Write `state` and the objects' states (rank 0 only: one writer under DDP)."""
        if not distributed.is_main():  # ddp: one writer
            return
        artifacts.atomic_torch_save({
            "identity": self.identity, "job": vars(state), "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }, self.path)

    def restore(self) -> JobState:
        """The saved state, loaded into the objects; a fresh JobState if there is none, or it is another job's."""
        if not self.path.is_file():
            return JobState()
        saved = torch.load(self.path, map_location="cpu", weights_only=True)
        if saved.get("identity") != self.identity:
            logger.warning("checkpoint %s is from a job with other hyperparameters or classes: "
                           "starting afresh", self.path)
            return JobState()
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.scaler.load_state_dict(saved["scaler"])
        torch.set_rng_state(saved["rng"])
        if saved["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(saved["cuda_rng"])
        state = JobState(**saved["job"])
        logger.info("resuming from checkpoint %s: epoch %d, step %d", self.path, state.epoch + 1, state.step)
        return state
