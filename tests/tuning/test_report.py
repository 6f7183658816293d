"""The study's outputs: the table of trials, best_hyperparameters.json in the cloud tuner's form, plots."""

import json

import optuna
import pytest

from image_classifier.launch import tune as cloud
from image_classifier.launch.search_space import search_space, to_optuna
from image_classifier.tuning import report

STATIC = {"model": "resnet18", "pretrained": "false"}


def _trial(state, value, lr, epochs_reported, number_name):
    distributions = to_optuna(search_space())
    params = {"lr": lr, "batch-size": "64", "epochs": 3}
    return optuna.trial.create_trial(
        state=state, value=value if state == optuna.trial.TrialState.COMPLETE else None, params=params,
        distributions=distributions, intermediate_values={e: 0.1 * e for e in range(1, epochs_reported + 1)},
        user_attrs={"training_job": number_name,
                    "hyperparameters": {**STATIC, **{k: str(v) for k, v in params.items()}},
                    **({"failure": "ValueError: boom"} if state == optuna.trial.TrialState.FAIL else {})})


@pytest.fixture
def study():
    study = optuna.create_study(study_name="ic-local-test", direction="maximize")
    S = optuna.trial.TrialState
    for args in [(S.COMPLETE, 0.8, 0.01, 3, "ic-local-test-000"), (S.PRUNED, None, 0.05, 1, "ic-local-test-001"),
                 (S.COMPLETE, 0.9, 0.002, 3, "ic-local-test-002"), (S.FAIL, None, 0.09, 0, "ic-local-test-003")]:
        study.add_trial(_trial(*args))
    return study


def test_table_shows_every_trial_with_its_state(study):
    lines = report.format_table(study.trials, "valid_accuracy").splitlines()
    assert "valid_accuracy" in lines[0] and "state" in lines[0]
    rows = [line.split() for line in lines[1:5]]
    assert [r[2] for r in rows] == ["COMPLETE", "PRUNED", "COMPLETE", "FAIL"]
    seconds = f"{study.trials[0].duration.total_seconds():.0f}"
    assert rows[0][:6] == ["0", "ic-local-test-000", "COMPLETE", "0.8000", "3", seconds]
    pruned = study.trials[1]
    assert rows[1][3] == f"{pruned.intermediate_values[pruned.last_step]:.4f}"  # a pruned trial's last report
    assert rows[3][3] == "-" and "lr=0.09" in lines[4]
    assert lines[5] == "trial 3 FAIL: ValueError: boom"


def test_best_hyperparameters_has_the_cloud_tuners_form(study):
    best = report.best_hyperparameters(study, "valid_accuracy")
    cloud_best = cloud.best_hyperparameters({
        "HyperParameterTuningJobName": "ic", "TrainingJobDefinition": {"StaticHyperParameters": STATIC},
        "BestTrainingJob": {"TrainingJobName": "ic-001", "TunedHyperParameters": {"lr": "0.01"},
                            "FinalHyperParameterTuningJobObjectiveMetric": {"MetricName": "valid_accuracy",
                                                                           "Value": 0.9}}})
    assert best.keys() == cloud_best.keys()
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    top = max(complete, key=lambda t: t.value)
    assert best["objective_value"] == top.value and best["training_job"] == top.user_attrs["training_job"]
    assert best["tuning_job"] == "ic-local-test" and best["objective"] == "valid_accuracy"
    assert best["hyperparameters"] == {**STATIC, "lr": str(top.params["lr"]), "batch-size": "64", "epochs": "3"}
    assert all(isinstance(v, str) for v in best["hyperparameters"].values())


def test_no_completed_trial_no_best():
    study = optuna.create_study(study_name="empty")
    with pytest.raises(ValueError, match="no completed trial"):
        report.best_hyperparameters(study, "valid_loss")


def test_write_outputs(study, tmp_path):
    written = report.write_outputs(study, tmp_path, "valid_accuracy")
    assert json.loads((tmp_path / report.BEST_FILE).read_text()) == written["best"]
    assert (tmp_path / report.TRIALS_TABLE).read_text() == written["table"] + "\n"
    csv = (tmp_path / report.TRIALS_CSV).read_text().splitlines()
    assert len(csv) == 1 + len(study.trials) and "state" in csv[0]
    for name in report.PLOTS:
        assert (tmp_path / report.PLOTS_DIR / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert "<html>" in (tmp_path / report.PLOTS_DIR / f"{name}.html").read_text()
    assert (tmp_path / report.PLOTS_DIR / "plotly.min.js").is_file()
