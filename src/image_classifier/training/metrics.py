"""The job's figures: the `name=value` metric log lines and `output/data/metrics.json`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from image_classifier import artifacts
from image_classifier.training import distributed
from image_classifier.training.loop import Meter

if TYPE_CHECKING:
    from image_classifier.training.checkpoints import JobState

METRICS_FILE = "metrics.json"  # in output/data: every epoch's figures, the best epoch, the test figures


def format_metrics(metrics: dict[str, float]) -> str:
    """`name=value` pairs, the form the cloud metric definitions' regexes read (`launch.metrics`)."""
    return " ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())


def epoch_line(epoch: int, train: Meter, valid: dict[str, float]) -> dict:
    """One epoch's figures, in the order the job logs them.

    Args:
        epoch: the epoch, 1-based.
        train: the epoch's training Meter (the job's, under DDP).
        valid: `loss`, `accuracy` (0-1) and `f1` (macro) of the validation pass.

    Returns:
        `epoch`, `train_loss`, `train_accuracy`, `valid_loss`, `valid_accuracy`, `valid_f1`,
        `epoch_seconds` (training only) and `images_per_second` (training).
    """
    figures = train.metrics()
    return {"epoch": epoch, "train_loss": figures["loss"], "train_accuracy": figures["accuracy"],
            "valid_loss": valid["loss"], "valid_accuracy": valid["accuracy"], "valid_f1": valid["f1"],
            "epoch_seconds": train.seconds, "images_per_second": figures["images_per_second"]}


def best_f1(state: JobState) -> float | None:
    """The best epoch's valid_f1 (None from a checkpoint of a version that did not log it)."""
    return next((e.get("valid_f1") for e in state.history if e["epoch"] == state.best_epoch), None)


def final(state: JobState, test: dict[str, float] | None) -> dict:
    """What `job.run` returns: the best epoch's validation figures, then the test figures if any."""
    result = {"best_epoch": state.best_epoch, "valid_loss": state.best_loss, "valid_accuracy": state.best_accuracy,
              "valid_f1": best_f1(state)}
    return result | (test or {})


def write_metrics(output_data_dir: Path, state: JobState, test: dict[str, float] | None = None) -> None:
    """Write `output_data_dir/metrics.json` atomically (rank 0 only: one writer under DDP).

    It holds `epochs` (every epoch's `epoch_line`), `best_epoch`, `best_valid_accuracy`,
    `best_valid_loss`, `best_valid_f1`, and `test_loss`/`test_accuracy`/`test_f1` when given.
    """
    if not distributed.is_main():  # ddp: one writer
        return
    summary = {"epochs": state.history, "best_epoch": state.best_epoch, "best_valid_accuracy": state.best_accuracy,
               "best_valid_loss": state.best_loss, "best_valid_f1": best_f1(state)}
    if test is not None:
        summary.update(test)
    artifacts.atomic_write_bytes(output_data_dir / METRICS_FILE, json.dumps(summary, indent=2).encode())


def read_epochs(output_data_dir: Path) -> list[dict]:
    """The per-epoch figures a job wrote to `output_data_dir/metrics.json`; [] when there are none."""
    path = output_data_dir / METRICS_FILE
    return json.loads(path.read_text()).get("epochs", []) if path.is_file() else []
