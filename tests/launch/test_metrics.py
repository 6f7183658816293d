"""The metric definitions the launchers send match what a real training job logs."""

import json
import re

import pytest

from image_classifier.launch import metrics
from image_classifier.training.metrics import METRICS_FILE
from tests.training.test_job import run_job


@pytest.fixture(scope="module")
def job_log(tmp_path_factory, digit_tree):
    """A real (tiny) training job's log, as CloudWatch would receive it, and its metrics.json."""
    from image_classifier.local import lay_out
    from tests.conftest import TINY_JOB, sdk_hyperparameters

    env = lay_out(tmp_path_factory.mktemp("job") / "opt_ml", digit_tree, sdk_hyperparameters(**TINY_JOB))
    code, log = run_job(env)
    assert code == 0, log
    return log, json.loads((env.output_data_dir / METRICS_FILE).read_text())


@pytest.mark.slow
def test_every_definition_matches_the_log_with_the_jobs_values(job_log):
    log, saved = job_log
    for definition in metrics.metric_definitions():
        name = definition["Name"]
        values = [float(v) for v in re.findall(definition["Regex"], log)]
        if name in metrics.FINAL_METRICS:
            assert values == pytest.approx([saved[name]], rel=1e-5), name
        else:
            assert values == pytest.approx([e[name] for e in saved["epochs"]], rel=1e-5), name


def test_objectives_are_defined_metrics():
    names = {d["Name"] for d in metrics.metric_definitions()}
    assert set(metrics.OBJECTIVES) <= names


@pytest.mark.parametrize("line, name, expected", [
    ("epoch=1 train_loss=0.41 valid_loss=1e-05", "valid_loss", ["1e-05"]),
    ("epoch=1 train_loss=0.41 valid_loss=1e-05", "train_loss", ["0.41"]),
    ("x best_valid_accuracy=0.9 valid_accuracy=0.8", "valid_accuracy", ["0.8"]),
    ("images_per_second=3.2e+04", "images_per_second", ["3.2e+04"]),
    ("valid_loss=nan", "valid_loss", []),
    # an epoch line as the job logs it (image_classifier.training.metrics.format_metrics)
    ("INFO image_classifier.training.job: epoch=2 train_loss=0.9 train_accuracy=0.61 valid_loss=0.74 "
     "valid_accuracy=0.75 valid_f1=0.7321 epoch_seconds=3.1 images_per_second=23.4", "valid_f1", ["0.7321"]),
    ("x best_valid_f1=0.9 valid_f1=0", "valid_f1", ["0"]),
])
def test_regex_edges(line, name, expected):
    assert re.findall(metrics.metric_regex(name), line) == expected


@pytest.mark.parametrize("objective, direction", [("valid_accuracy", "Maximize"), ("valid_loss", "Minimize"),
                                                  ("valid_f1", "Maximize")])
def test_objective_type(objective, direction):
    assert metrics.objective_type(objective) == direction


def test_unknown_objective():
    with pytest.raises(ValueError, match="valid_accuracy, valid_loss, valid_f1"):
        metrics.objective_type("test_accuracy")
