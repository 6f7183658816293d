"""The demo end to end: sample data, the demo's training job, a real server, predictions."""

import json
import re
import socket

import pytest

from image_classifier.demo import run_demo
from image_classifier.training.job import METRICS_FILE


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_demo_reaches_95_percent_and_prints_predictions(tmp_path, capfd):
    code = run_demo(data_dir=tmp_path / "data", base_dir=tmp_path / "opt_ml", port=free_port())

    out = capfd.readouterr().out
    assert code == 0, out
    metrics = json.loads((tmp_path / "opt_ml" / "output" / "data" / METRICS_FILE).read_text())
    assert metrics["test_accuracy"] >= 0.95
    tables = re.findall(r"rank\s+label\s+class_id\s+probability\n((?:\s+\d+\s+\S+\s+\d+\s+[0-9.]+\n?){5})", out)
    assert len(tables) == 2, out
    # the test digit is a zero (the first test image in sorted order) and the model knows it
    assert tables[1].split()[1] == "zero"
