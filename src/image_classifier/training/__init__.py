"""The training job: hyperparameters, channels, the loop, checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

METRICS_FILE = "metrics.json"  # in output/data: every epoch's figures, the best epoch, the test figures


def read_epochs(output_data_dir: Path) -> list[dict]:
    """The per-epoch figures a job wrote to `output_data_dir/metrics.json`; [] when there are none."""
    path = output_data_dir / METRICS_FILE
    return json.loads(path.read_text()).get("epochs", []) if path.is_file() else []


class TrainingInterrupted(Exception):
    """SIGTERM arrived: a checkpoint was saved and the job stopped (a restart resumes)."""
