"""Debugging in whole training jobs: the rules after each epoch, their files, debug-stop-on."""

import json

import pytest

from image_classifier.debugging.hook import DEBUG_OUTPUT_DIR
from image_classifier.debugging.results import RULES_DIR, RULES_SUMMARY
from image_classifier.debugging.rule_names import RULE_NAMES
from image_classifier.training.config import TrainConfig
from image_classifier.training.job import METRICS_FILE
from tests.training.test_job import run_job

pytest.importorskip("smdebug")


@pytest.mark.slow
def test_debug_stop_on_stops_training_when_the_rule_fires(opt_ml):
    """The tiny job from scratch overfits its 24 validation digits at once (valid_loss >> train_loss)."""
    env = opt_ml(epochs=4, **{"debug-stop-on": "overfit,DeadRelu"})
    code, log = run_job(env)
    assert code == 0, log[-3000:]
    assert "rule Overfit fired at step" in log
    assert "stopping training after epoch 1: rule(s) Overfit fired (debug-stop-on)" in log
    assert [e["epoch"] for e in json.loads((env.output_data_dir / METRICS_FILE).read_text())["epochs"]] == [1]
    assert (env.model_dir / "model.pth").is_file()  # the best weights so far are still the model
    # the rules table in the log, and the results as files
    table = log[log.index("debugger rules:"):]
    for name in RULE_NAMES:
        assert name in table
    debug = env.output_data_dir / DEBUG_OUTPUT_DIR
    overfit = json.loads((debug / RULES_DIR / "Overfit.json").read_text())
    assert overfit["RuleTriggered"] >= 1 and "ratio_threshold:0.1" in overfit["RuleParameters"]
    summary = {r["rule"]: r for r in json.loads((debug / RULES_SUMMARY).read_text())}
    assert summary["Overfit"]["status"] == "IssuesFound" and summary["Overfit"]["step"] is not None
    assert summary["VanishingGradient"]["status"] == "NoIssuesFound"


@pytest.mark.parametrize("value", ["Overfit,Nope", "vanishing_gradient"])
def test_debug_stop_on_names_known_rules(value):
    with pytest.raises(ValueError, match=r"debug-stop-on.*VanishingGradient"):
        TrainConfig.from_hyperparameters({"debug-stop-on": value})


def test_debug_stop_on_is_case_insensitive():
    config = TrainConfig.from_hyperparameters({"debug-stop-on": "overfit, DEADRELU"})
    assert config.stop_on_rules == ("Overfit", "DeadRelu")


@pytest.mark.slow
def test_sigterm_closes_the_hook_without_evaluating(opt_ml):
    """After SIGTERM SageMaker kills the job soon: the hook is closed (tensors kept), rules and reports skipped."""
    import signal

    from tests.training.test_job import signal_after_epoch

    env = opt_ml(epochs=20, debug=True, profile=True)
    code, log = signal_after_epoch(env, signal.SIGTERM)
    assert code == 143, log[-3000:]
    debug = env.output_data_dir / DEBUG_OUTPUT_DIR
    assert (debug / "tensors").is_dir()
    assert "debugger rules:" not in log and "profiler rules:" not in log
    assert not (debug / "debugger-report.html").exists()
