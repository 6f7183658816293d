"""Metric definitions for SageMaker: regexes over the training job's `name=value` log lines.

The training job logs one line per epoch and one at the end
(`image_classifier.training.metrics.format_metrics`):

    epoch=3 train_loss=0.41 train_accuracy=0.88 valid_loss=0.52 valid_accuracy=0.85 valid_f1=0.84
        epoch_seconds=12 images_per_second=410  (one line in the log)
    test_loss=0.5 test_accuracy=0.86 test_f1=0.85

SageMaker reads metrics from the job's log with these regexes (MetricDefinitions of
CreateTrainingJob / CreateHyperParameterTuningJob: a Name and a Regex whose first group is the
value); the tuning objective is one of them. They are defined here once, from the names the
job writes, so the two halves cannot drift apart.
"""

from __future__ import annotations

# the names the training job logs, in the order it logs them
EPOCH_METRICS = ("train_loss", "train_accuracy", "valid_loss", "valid_accuracy", "valid_f1", "epoch_seconds",
                 "images_per_second")
FINAL_METRICS = ("test_loss", "test_accuracy", "test_f1")
# a float as Python's "%.6g" writes it: 0.41, 12, 1e-05, 3.2e+04
_NUMBER = r"([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"

# tuning objectives and their direction; valid_f1 is the macro F1 (every class counts alike,
# however many images it has: the objective for imbalanced classes)
OBJECTIVES = {"valid_accuracy": "Maximize", "valid_loss": "Minimize", "valid_f1": "Maximize"}


def metric_regex(name: str) -> str:
    """The regex whose first group is `name`'s value in a log line (`(?<![a-z_])` keeps
    `valid_loss` from matching inside a longer name)."""
    return rf"(?<![a-z_]){name}={_NUMBER}"


def metric_definitions() -> list[dict[str, str]]:
    """MetricDefinitions for a training or tuning job: `[{"Name": ..., "Regex": ...}, ...]`."""
    return [{"Name": name, "Regex": metric_regex(name)} for name in EPOCH_METRICS + FINAL_METRICS]


def objective_type(objective: str) -> str:
    """`Maximize` or `Minimize` for a tuning objective.

    Raises:
        ValueError: not one of OBJECTIVES (the message lists them).
    """
    try:
        return OBJECTIVES[objective]
    except KeyError:
        raise ValueError(f"unknown objective {objective!r}; valid: {', '.join(OBJECTIVES)}") from None
