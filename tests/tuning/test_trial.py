"""One tuning trial: metrics read from the job's log lines, the shared feature cache, pruning and failures."""

import json
import os

import optuna
import pytest

from image_classifier.launch import metrics
from image_classifier.launch.search_space import IntegerRange, to_optuna
from image_classifier.sagemaker_env import SageMakerEnv
from image_classifier.training.checkpoints import CHECKPOINT_FILE
from image_classifier.training.metrics import format_metrics
from image_classifier.tuning import trial as trial_module
from image_classifier.tuning.trial import TrialFailed, TrialJob, link_feature_cache, parse_metrics
from tests.conftest import TINY_JOB


def _epoch_line(**values):
    figures = {"epoch": 3, "train_loss": 0.41, "train_accuracy": 0.88, "valid_loss": 1e-05, "valid_accuracy": 0.85,
               "valid_f1": 0.8125, "epoch_seconds": 12.5, "images_per_second": 410.25, **values}
    return f"2026-01-01 10:00:00,000 INFO image_classifier.training.job: {format_metrics(figures)}\n", figures


def test_parse_metrics_reads_an_epoch_line_as_the_job_writes_it():
    line, figures = _epoch_line()
    assert parse_metrics(line) == pytest.approx({k: float(v) for k, v in figures.items()})


def test_parse_metrics_reads_the_final_line_and_nothing_else():
    test = {"test_loss": 0.5, "test_accuracy": 0.8625, "test_f1": 0.85}
    assert parse_metrics(f"INFO job: {format_metrics(test)}") == test
    assert parse_metrics("INFO job: channel train: 1258 images in 10 classes") == {}
    # `epoch_seconds=` alone is no epoch, `best_valid_accuracy=` no valid_accuracy
    assert parse_metrics("epoch_seconds=3 best_valid_accuracy=0.9") == {"epoch_seconds": 3.0}


def test_parse_metrics_uses_the_cloud_metric_definitions():
    line, _ = _epoch_line(valid_accuracy=0.123456789)
    names = {d["Name"] for d in metrics.metric_definitions()}
    assert names <= set(parse_metrics(line)) | set(metrics.FINAL_METRICS)
    assert parse_metrics(line)["valid_accuracy"] == pytest.approx(0.123457)  # %.6g, as logged


def test_every_trial_links_the_one_shared_feature_cache(tmp_path):
    workdir = tmp_path / "tuning"
    links = [link_feature_cache(SageMakerEnv(base_dir=workdir / "trials" / str(n)), workdir) for n in (0, 1)]
    for n, link in enumerate(links):
        assert link == workdir / "trials" / str(n) / "checkpoints" / "feature-cache" and link.is_symlink()
        assert link.resolve() == (workdir / "feature-cache").resolve()
    (links[0] / "features.pt").write_bytes(b"cached")
    assert (links[1] / "features.pt").read_bytes() == b"cached"


def _static(**overrides) -> dict[str, str]:
    values = {**TINY_JOB, **overrides}
    return {k.replace("_", "-"): str(v).lower() if isinstance(v, bool) else str(v) for k, v in values.items()
            if k != "epochs"}


class _AlwaysPrune(optuna.pruners.BasePruner):
    """Prunes every trial at its first report."""

    def prune(self, study, trial):
        return True


@pytest.mark.slow
def test_a_pruned_trial_stops_its_job_and_is_marked_pruned(tiny_tree, tmp_path):
    job = TrialJob(data_dir=tiny_tree, workdir=tmp_path, objective="valid_accuracy", static=_static(),
                   distributions=to_optuna([IntegerRange("epochs", 20, 21)]), name_prefix="t")
    study = optuna.create_study(direction="maximize", pruner=_AlwaysPrune())
    study.optimize(job, n_trials=1, catch=(TrialFailed,))
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert list(trial.intermediate_values) == [1]            # pruned on its first epoch line
    assert trial.user_attrs["exit_code"] == 143              # the job's answer to SIGTERM
    env = SageMakerEnv(base_dir=tmp_path / "trials" / "t-000")
    assert "SIGTERM" in env.failure_path.read_text()
    assert not list(env.model_dir.glob("*"))                 # it never got to its artifacts
    assert not (env.checkpoint_dir / CHECKPOINT_FILE).exists()  # removed once the trial ended
    log = (env.base_dir / trial_module.LOG_FILE).read_text()
    assert "epoch=1 " in log and "epoch=20 " not in log


@pytest.mark.slow
def test_a_failed_job_is_a_failed_trial_with_its_reason_and_the_study_goes_on(tiny_tree, tmp_path):
    job = TrialJob(data_dir=tiny_tree, workdir=tmp_path, objective="valid_loss",
                   static=_static(model="resnet18", **{"crop-scale-min": "0.5"}),
                   distributions=to_optuna([IntegerRange("epochs", 1, 2)]), name_prefix="t")
    (tiny_tree / "valid_backup").mkdir(exist_ok=True)
    study = optuna.create_study(direction="minimize")
    moved = next((tiny_tree / "valid").iterdir())
    os.rename(moved, tiny_tree / "valid_backup" / moved.name)  # valid now lacks a class of train
    try:
        study.optimize(job, n_trials=2, catch=(TrialFailed,))
    finally:
        os.rename(tiny_tree / "valid_backup" / moved.name, moved)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL] * 2
    for t in study.trials:
        assert t.user_attrs["exit_code"] == 1
        reason = (tmp_path / "trials" / f"t-{t.number:03d}" / "output" / "failure").read_text()
        assert t.user_attrs["failure"] == reason.strip() and "class" in reason
    assert json.loads((tmp_path / "trials" / "t-001" / "input" / "config" / "hyperparameters.json").read_text())[
        "crop-scale-min"] == "0.5"
