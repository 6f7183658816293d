"""scripts/train_debug.py against moto_server: the training job the emulator received, dry runs, downloads."""

import json

import boto3
import pytest

from image_classifier.debugging.hook import HOOK_CONFIG_FILE, hook_config
from image_classifier.launch import metrics, train_debug
from tests.launch.common import ROLE, launch, tar_gz
from tests.launch.common import TRAIN_IMAGE as IMAGE
from tests.launch.common import TRAINING_ARGS as BASE


def run(capsys, *args) -> tuple[int, dict]:
    return launch(train_debug.main, capsys, *args)


def describe(name: str) -> dict:
    return boto3.client("sagemaker", region_name="us-east-1").describe_training_job(TrainingJobName=name)


def test_the_emulator_receives_the_debug_training_job(aws, capsys, tmp_path):
    best = tmp_path / "best_hyperparameters.json"
    best.write_text(json.dumps({"tuning_job": "t", "training_job": "t-001", "objective": "valid_accuracy",
                                "objective_value": 0.8, "hyperparameters": {"lr": "0.0123", "batch-size": "64"}}))
    code, result = run(capsys, "--best", str(best), "--hyperparameter", "batch-size=32",
                       "--hyperparameter", "debug-stop-on=Overfit", "--job-name", "ic-debug-1")
    assert code == 0 and result["TrainingJobName"] == "ic-debug-1"
    job = describe("ic-debug-1")
    assert job["AlgorithmSpecification"]["TrainingImage"] == IMAGE
    assert job["RoleArn"] == ROLE
    assert job["HyperParameters"] == {"lr": "0.0123", "batch-size": "32", "debug-stop-on": "Overfit",
                                      "debug": "true", "profile": "true",
                                      "sagemaker_mpi_num_of_processes_per_host": "1"}  # no torchrun
    assert job["ResourceConfig"]["InstanceCount"] == 1
    assert [(c["ChannelName"], c["DataSource"]["S3DataSource"]["S3Uri"]) for c in job["InputDataConfig"]] == [
        ("train", "s3://ic-data/dogImages/train"), ("valid", "s3://ic-data/dogImages/valid"),
        ("test", "s3://ic-data/dogImages/test")]
    assert job["OutputDataConfig"]["S3OutputPath"] == "s3://ic-out/jobs"
    hook = job["DebugHookConfig"]
    assert hook["LocalPath"] == "/opt/ml/output/tensors"
    assert hook["S3OutputPath"] == "s3://ic-out/jobs/ic-debug-1/debug-output"
    assert hook["HookParameters"] == {"train.save_interval": "5", "eval.save_interval": "1"}
    collections = {c["CollectionName"]: c["CollectionParameters"] for c in hook["CollectionConfigurations"]}
    for name in ("weights", "gradients", "biases"):
        assert collections[name] == {"train.save_interval": "5", "eval.save_interval": "1"}
    assert collections["losses"] == {"save_interval": "1"}
    assert "DebugRuleConfigurations" not in job or not job["DebugRuleConfigurations"]
    # the printout says where the reports and tensors land
    assert result["outputs"]["model artifacts"] == "s3://ic-out/jobs/ic-debug-1/output/model.tar.gz"
    assert "s3://ic-out/jobs/ic-debug-1/output/output.tar.gz (debug/tensors/)" in result["outputs"]["tensors"]


def test_builtin_rules(aws, capsys):
    code, result = run(capsys, "--builtin-rules", "--job-name", "ic-debug-rules")
    assert code == 0
    rules = describe("ic-debug-rules")["DebugRuleConfigurations"]
    assert [r["RuleConfigurationName"] for r in rules] == [
        "VanishingGradient", "Overfit", "Overtraining", "PoorWeightInitialization"]
    for rule in rules:
        assert rule["RuleEvaluatorImage"] == \
            "503895931360.dkr.ecr.us-east-1.amazonaws.com/sagemaker-debugger-rules:latest"
        assert rule["RuleParameters"] == {"rule_to_invoke": rule["RuleConfigurationName"]}
    assert result["outputs"]["ProfilerReport"] == "s3://ic-out/jobs/ic-debug-rules/rule-output/ProfilerReport/profiler-output/"


def test_dry_run_sends_nothing_and_its_request_is_accepted(aws, capsys):
    """moto keeps neither ProfilerConfig nor ProfilerRuleConfigurations, nor the metric definitions
    (it answers canned ones): those are checked in the dry run's request instead."""
    code, request = run(capsys, "--dry-run", "--builtin-rules", "--job-name", "ic-debug-dry")
    assert code == 0
    sm = boto3.client("sagemaker", region_name="us-east-1")
    assert "ic-debug-dry" not in [j["TrainingJobName"] for j in sm.list_training_jobs()["TrainingJobSummaries"]]
    assert request["AlgorithmSpecification"]["MetricDefinitions"] == metrics.metric_definitions()
    assert request["ProfilerConfig"] == {"S3OutputPath": "s3://ic-out/jobs", "ProfilingIntervalInMilliseconds": 500}
    [report] = request["ProfilerRuleConfigurations"]
    assert report["RuleConfigurationName"] == "ProfilerReport"
    assert report["RuleParameters"] == {"rule_to_invoke": "ProfilerReport"}
    sm.create_training_job(**request)
    assert describe("ic-debug-dry")["DebugHookConfig"]["CollectionConfigurations"] == \
        request["DebugHookConfig"]["CollectionConfigurations"]


def test_a_debug_job_has_one_instance(aws, capsys):
    assert train_debug.main([*BASE, "--instance-count", "2"]) == 2
    assert "--instance-count 2: a debug job trains in one process" in capsys.readouterr().err


def test_bad_best_file(aws, capsys, tmp_path):
    best = tmp_path / "best.json"
    best.write_text(json.dumps({"lr": 0.1}))
    assert train_debug.main([*BASE, "--best", str(best)]) == 2
    assert "has no \"hyperparameters\" object" in capsys.readouterr().err


def test_wait_then_download_the_reports(aws, capsys, tmp_path, monkeypatch):
    """moto ends every training job at once ("Completed") and writes no outputs: the test puts
    them where SageMaker would, then checks what --download fetched."""
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="ic-out")
    job = "ic-debug-wait"
    s3.put_object(Bucket="ic-out", Key=f"jobs/{job}/output/output.tar.gz", Body=tar_gz({
        "metrics.json": b"{}", "debug/debugger-report.html": b"<html>", "debug/rules/Overfit.json": b"{}",
        "debug/tensors/index/000000000/000000000000_worker_0.json": b"{}", "profiler/profiler-report.html": b"<html>"}))
    s3.put_object(Bucket="ic-out", Key=f"jobs/{job}/rule-output/ProfilerReport/profiler-output/profiler-report.html",
                  Body=b"<html>")
    monkeypatch.setattr(train_debug.time, "sleep", lambda s: None)
    out_dir = tmp_path / "reports"
    code = train_debug.main([*BASE, "--job-name", job, "--wait", "--download", str(out_dir)])
    assert code == 0
    files = sorted(str(p.relative_to(out_dir)) for p in out_dir.rglob("*") if p.is_file())
    assert files == ["debug/debugger-report.html", "debug/rules/Overfit.json", "profiler/profiler-report.html",
                     "rule-output/ProfilerReport/profiler-output/profiler-report.html"]
    assert f"training job {job}: Completed" in capsys.readouterr().out


@pytest.mark.slow
def test_the_hook_config_sent_is_what_the_container_saves(aws, capsys, opt_ml):
    """The DebugHookConfig the emulator received, written as SageMaker writes debughookconfig.json,
    makes a real (tiny) training job save those collections."""
    from smdebug import modes
    from smdebug.trials import create_trial

    from image_classifier.training.config import TrainConfig
    from image_classifier.training.job import run as run_job

    assert run(capsys, "--job-name", "ic-debug-contract")[0] == 0
    sent = describe("ic-debug-contract")["DebugHookConfig"]
    assert sent["CollectionConfigurations"] == hook_config("x")["CollectionConfigurations"]
    env = opt_ml(debug=False, epochs=1)  # the file alone turns the hook on
    sent["LocalPath"] = str(env.output_dir / "tensors")  # /opt/ml/output/tensors in this tree
    env.config_dir.joinpath(HOOK_CONFIG_FILE).write_text(json.dumps(sent))
    run_job(env, TrainConfig.from_hyperparameters(env.hyperparameters()))
    trial = create_trial(str(env.output_dir / "tensors"))
    assert trial.tensor("ResNet_fc.1.weight").steps(mode=modes.TRAIN) == [0]  # 4 steps, every 5th
    assert trial.tensor("CrossEntropyLoss_output_0").steps(mode=modes.TRAIN) == [0, 1, 2, 3]
