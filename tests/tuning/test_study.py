"""A local tuning study: pruners, argument checks, a real small study, and Ctrl-C."""

import json
import os
import signal
import threading
import time

import optuna
import psutil
import pytest

from image_classifier import cli
from image_classifier.launch import tune as cloud
from image_classifier.launch.search_space import search_space, to_optuna
from image_classifier.tuning import report
from image_classifier.tuning import study as study_module

# resnet18 from scratch at 32 px on a few real digits: seconds per job
STATIC = {"model": "resnet18", "pretrained": "false", "freeze": "none", "image-size": "32", "num-workers": "0",
          "hflip-prob": "0", "seed": "3"}
QUICK_SPACE = json.dumps({"epochs": {"type": "integer", "min": 1, "max": 2},
                          "batch-size": {"type": "categorical", "values": ["16", "32"]}})


@pytest.mark.parametrize("name, cls", [("hyperband", optuna.pruners.HyperbandPruner),
                                       ("median", optuna.pruners.MedianPruner),
                                       ("none", optuna.pruners.NopPruner)])
def test_pruners(name, cls):
    assert isinstance(study_module.make_pruner(name, 5), cls)


def test_unknown_pruner():
    with pytest.raises(ValueError, match="hyperband, median, none"):
        study_module.make_pruner("asha", 5)


def test_hyperband_budget_is_the_most_epochs_a_trial_can_run():
    assert study_module.max_epochs(to_optuna(search_space()), {}) == 5
    assert study_module.max_epochs(to_optuna(search_space(overrides='{"epochs": {"type": "categorical", '
                                                                    '"values": ["3", "12"]}}')), {}) == 12
    no_epochs = {k: v for k, v in to_optuna(search_space()).items() if k != "epochs"}
    assert study_module.max_epochs(no_epochs, {"epochs": "7"}) == 7


@pytest.mark.parametrize("static, overrides, words", [
    ({"lr": "0.01"}, None, "both static and tuned: lr"),
    ({"learning-rate": "0.01"}, None, "learning-rate"),
    ({}, '{"lr": {"type": "continuous", "min": 0.001, "max": 0.1, "scaling": "ReverseLogarithmic"}}',
     "no Optuna distribution"),
])
def test_bad_arguments_fail_before_any_job(tiny_tree, tmp_path, static, overrides, words):
    with pytest.raises(ValueError, match=words):
        study_module.tune(tiny_tree, tmp_path / "out", static, search_space_json=overrides)
    assert not (tmp_path / "out" / "trials").exists()


@pytest.mark.parametrize("kwargs", [{"max_trials": 0}, {"parallel": 0}])
def test_at_least_one_trial_and_one_job_at_a_time(tiny_tree, tmp_path, kwargs):
    with pytest.raises(ValueError, match="at least 1"):
        study_module.tune(tiny_tree, tmp_path, {}, **kwargs)


def test_a_study_continued_with_the_other_direction_is_refused(tiny_tree, tmp_path):
    optuna.create_study(storage=f"sqlite:///{tmp_path / study_module.STUDY_DB}", study_name="s", direction="maximize")
    with pytest.raises(ValueError, match="exists and maximizes its objective, not minimize"):
        study_module.tune(tiny_tree, tmp_path, STATIC, objective="valid_loss", study_name="s")
    assert not list((tmp_path / "trials").iterdir())


def test_cli_exits_2_on_a_missing_channel(tmp_path, capsys):
    assert cli.main(["tune", "--data", str(tmp_path), "--output", str(tmp_path / "out")]) == 2
    assert "no train/ folder" in capsys.readouterr().err


@pytest.mark.slow
def test_a_small_study_writes_the_cloud_tuners_best_hyperparameters(tiny_tree, tmp_path, capsys):
    out = tmp_path / "tuning"
    code = cli.main(["tune", "--data", str(tiny_tree), "--output", str(out), "--max-trials", "3", "--parallel", "2",
                     "--pruner", "none", "--seed", "0", "--search-space", QUICK_SPACE, "--study-name", "small",
                     *[f"--hyperparameter={k}={v}" for k, v in STATIC.items()]])
    printed = capsys.readouterr().out
    assert code == 0
    study = optuna.load_study(study_name="small", storage=f"sqlite:///{out / study_module.STUDY_DB}")
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3
    best = json.loads((out / report.BEST_FILE).read_text())
    cloud_keys = cloud.best_hyperparameters({"HyperParameterTuningJobName": "x", "BestTrainingJob": {
        "TrainingJobName": "y", "TunedHyperParameters": {}}}).keys()
    assert best.keys() == cloud_keys
    top = max(study.trials, key=lambda t: t.value)
    assert best["objective_value"] == top.value == study.best_value
    assert best["tuning_job"] == "small" and best["training_job"] == f"small-{top.number:03d}"
    assert best["hyperparameters"] == {**STATIC, **{k: str(v) for k, v in top.params.items()}}
    for t in study.trials:  # each trial: its own tree, the job's hyperparameters, its model, the shared cache
        base = out / "trials" / f"small-{t.number:03d}"
        assert t.user_attrs["trial_dir"] == str(base.resolve())
        assert json.loads((base / "input" / "config" / "hyperparameters.json").read_text()) == \
            t.user_attrs["hyperparameters"]
        assert (base / "model").is_dir() and any((base / "model").iterdir())
        assert len(t.intermediate_values) == t.params["epochs"]
        link = base / "checkpoints" / "feature-cache"
        assert link.is_symlink() and link.resolve() == (out / "feature-cache").resolve()
    assert f"small-{top.number:03d}" in printed and str(out / "trials" / best["training_job"] / "model") in printed
    assert (out / report.TRIALS_CSV).is_file() and (out / report.PLOTS_DIR / "optimization_history.png").is_file()


def _is_training_job(process: psutil.Process) -> bool:
    try:
        return "image_classifier.train" in process.cmdline()
    except psutil.Error:  # it exited meanwhile
        return False


@pytest.mark.slow
def test_ctrl_c_stops_the_running_jobs_and_keeps_what_finished(tiny_tree, tmp_path):
    out = tmp_path / "tuning"

    def interrupt_after_first_epoch():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            logs = list((out / "trials").glob("*/train.log"))
            if any("epoch=1 " in log.read_text() for log in logs):
                os.kill(os.getpid(), signal.SIGINT)
                return
            time.sleep(0.2)

    handler = signal.getsignal(signal.SIGINT)
    watcher = threading.Thread(target=interrupt_after_first_epoch, daemon=True)
    watcher.start()
    study, outputs, interrupted = study_module.tune(
        tiny_tree, out, STATIC, max_trials=4, parallel=2, pruner="none", show_progress_bar=False,
        search_space_json='{"epochs": {"type": "integer", "min": 40, "max": 50}}')
    watcher.join()
    assert interrupted
    assert 1 <= len(study.trials) < 4
    assert all(t.state == optuna.trial.TrialState.FAIL for t in study.trials)
    assert all(t.user_attrs["failure"].startswith("interrupted") for t in study.trials)
    # no training job left behind (other fixtures' servers, e.g. moto_server, may run beside)
    assert [p for p in psutil.Process().children(recursive=True) if _is_training_job(p)] == []
    assert "FAIL" in outputs["table"] and outputs["best"] is None
    assert signal.getsignal(signal.SIGINT) is handler  # the tuner's handler is gone
