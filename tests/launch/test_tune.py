"""scripts/tune.py against moto_server: what the emulator received, dry runs, waiting and the results."""

import json

import boto3
import pytest
from botocore.stub import Stubber

from image_classifier.launch import metrics, tune
from tests.launch.common import ROLE, launch
from tests.launch.common import TRAIN_IMAGE as IMAGE
from tests.launch.common import TRAINING_ARGS as BASE


def run(capsys, *args) -> tuple[int, dict]:
    return launch(tune.main, capsys, *args)


def describe(name: str) -> dict:
    return boto3.client("sagemaker", region_name="us-east-1").describe_hyper_parameter_tuning_job(
        HyperParameterTuningJobName=name)


def test_the_emulator_receives_the_whole_tuning_job(aws, capsys):
    code, result = run(capsys, "--objective", "valid_loss", "--strategy", "Random", "--max-jobs", "6",
                       "--max-parallel-jobs", "3", "--hyperparameter", "model=resnet50",
                       "--hyperparameter", "freeze=backbone", "--spot", "--instance-type", "ml.g5.xlarge",
                       "--instance-count", "2")
    assert code == 0
    job = describe(result["HyperParameterTuningJobName"])
    config, definition = job["HyperParameterTuningJobConfig"], job["TrainingJobDefinition"]
    assert config["Strategy"] == "Random"
    assert config["HyperParameterTuningJobObjective"] == {"Type": "Minimize", "MetricName": "valid_loss"}
    assert config["ResourceLimits"] == {"MaxNumberOfTrainingJobs": 6, "MaxParallelTrainingJobs": 3}
    assert config["TrainingJobEarlyStoppingType"] == "Auto"
    ranges = config["ParameterRanges"]
    assert ranges["ContinuousParameterRanges"] == [
        {"Name": "lr", "MinValue": "0.001", "MaxValue": "0.1", "ScalingType": "Logarithmic"}]
    assert ranges["IntegerParameterRanges"] == [
        {"Name": "epochs", "MinValue": "2", "MaxValue": "5", "ScalingType": "Linear"}]
    assert ranges["CategoricalParameterRanges"] == [{"Name": "batch-size", "Values": ["32", "64", "128"]}]
    assert definition["AlgorithmSpecification"]["TrainingImage"] == IMAGE
    assert definition["AlgorithmSpecification"]["MetricDefinitions"] == metrics.metric_definitions()
    assert definition["RoleArn"] == ROLE
    assert definition["StaticHyperParameters"] == {"model": "resnet50", "freeze": "backbone"}
    assert [(c["ChannelName"], c["DataSource"]["S3DataSource"]["S3Uri"]) for c in definition["InputDataConfig"]] == [
        ("train", "s3://ic-data/dogImages/train"), ("valid", "s3://ic-data/dogImages/valid"),
        ("test", "s3://ic-data/dogImages/test")]
    assert definition["OutputDataConfig"]["S3OutputPath"] == "s3://ic-out/jobs"
    assert definition["ResourceConfig"]["InstanceType"] == "ml.g5.xlarge"
    assert definition["ResourceConfig"]["InstanceCount"] == 2  # the container trains data-parallel
    assert definition["EnableManagedSpotTraining"] is True
    assert definition["CheckpointConfig"]["S3Uri"] == "s3://ic-out/jobs/checkpoints"


def test_model_range_and_ranges_file(aws, capsys, tmp_path):
    ranges = tmp_path / "ranges.json"
    ranges.write_text(json.dumps({"lr": {"type": "continuous", "min": 0.0001, "max": 0.01, "scaling": "Logarithmic"}}))
    code, result = run(capsys, "--include-model", "--ranges", str(ranges), "--strategy", "Hyperband")
    assert code == 0
    config = describe(result["HyperParameterTuningJobName"])["HyperParameterTuningJobConfig"]
    categorical = {r["Name"]: r["Values"] for r in config["ParameterRanges"]["CategoricalParameterRanges"]}
    assert "resnet50" in categorical["model"] and "convnext_tiny" in categorical["model"]
    assert config["ParameterRanges"]["ContinuousParameterRanges"][0]["MinValue"] == "0.0001"
    assert config["Strategy"] == "Hyperband" and config["TrainingJobEarlyStoppingType"] == "Off"


def test_dry_run_sends_nothing_and_its_request_is_accepted(aws, capsys):
    code, request = run(capsys, "--dry-run", "--job-name", "ic-dry-run")
    assert code == 0 and request["HyperParameterTuningJobName"] == "ic-dry-run"
    sm = boto3.client("sagemaker", region_name="us-east-1")
    names = [j["HyperParameterTuningJobName"] for j in sm.list_hyper_parameter_tuning_jobs()[
        "HyperParameterTuningJobSummaries"]]
    assert "ic-dry-run" not in names
    assert request["TrainingJobDefinition"]["ResourceConfig"]["InstanceCount"] == 1
    sm.create_hyper_parameter_tuning_job(**request)
    assert describe("ic-dry-run")["TrainingJobDefinition"]["AlgorithmSpecification"]["TrainingImage"] == IMAGE


def test_valid_f1_is_an_objective_to_maximise(aws, capsys):
    code, request = run(capsys, "--dry-run", "--objective", "valid_f1")
    assert code == 0
    assert request["HyperParameterTuningJobConfig"]["HyperParameterTuningJobObjective"] == {
        "Type": "Maximize", "MetricName": "valid_f1"}
    definitions = request["TrainingJobDefinition"]["AlgorithmSpecification"]["MetricDefinitions"]
    assert {"Name": "valid_f1", "Regex": metrics.metric_regex("valid_f1")} in definitions


@pytest.mark.parametrize("args, words", [
    (["--hyperparameter", "no-equals"], "KEY=VALUE"),
    (["--hyperparameter", "freeze=none", "--ranges", "/dev/null"], "not JSON"),
])
def test_bad_arguments_exit_2(aws, capsys, args, words):
    assert tune.main([*BASE, *args]) == 2
    assert words in capsys.readouterr().err


@pytest.mark.parametrize("count", ["0", "-1", "two"])
def test_instance_count_must_be_a_whole_number_from_1(aws, capsys, count):
    with pytest.raises(SystemExit) as exit_:
        tune.main([*BASE, "--instance-count", count])
    assert exit_.value.code == 2
    assert "--instance-count" in capsys.readouterr().err


def test_wait_and_best_hyperparameters_from_the_emulator(aws, capsys, tmp_path):
    """moto ends a tuning job at once and fakes its best training job: enough for wait()."""
    _, result = run(capsys)
    sm = boto3.client("sagemaker", region_name="us-east-1")
    job = tune.wait(sm, result["HyperParameterTuningJobName"], poll_seconds=0.01)
    assert job["HyperParameterTuningJobStatus"] == "Completed"
    best = tune.best_hyperparameters({**job, "BestTrainingJob": {
        "TrainingJobName": "t-1", "TunedHyperParameters": {"lr": "0.01", "epochs": "3", "batch-size": "64"},
        "FinalHyperParameterTuningJobObjectiveMetric": {"MetricName": "valid_accuracy", "Value": 0.9}}})
    assert best["hyperparameters"] == {"lr": "0.01", "epochs": "3", "batch-size": "64"}
    assert best["objective"] == "valid_accuracy" and best["objective_value"] == 0.9


def test_training_jobs_table_all_pages():
    """moto has no ListTrainingJobsForHyperParameterTuningJob: stubbed with AWS's response shape."""
    sm = boto3.client("sagemaker", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    summary = {"TrainingJobArn": "arn:aws:sagemaker:us-east-1:1:training-job/t", "CreationTime": "2026-01-01",
               "TrainingJobStatus": "Completed", "TunedHyperParameters": {"lr": "0.01"}}
    with Stubber(sm) as stub:
        stub.add_response("list_training_jobs_for_hyper_parameter_tuning_job", {
            "NextToken": "p2", "TrainingJobSummaries": [{
                **summary, "TrainingJobName": "t-2", "FinalHyperParameterTuningJobObjectiveMetric": {
                    "MetricName": "valid_accuracy", "Value": 0.91}}]}, {"HyperParameterTuningJobName": "ic"})
        stub.add_response("list_training_jobs_for_hyper_parameter_tuning_job", {"TrainingJobSummaries": [
            {**summary, "TrainingJobName": "t-1", "TrainingJobStatus": "Failed"}]},
            {"HyperParameterTuningJobName": "ic", "NextToken": "p2"})
        jobs = tune.training_jobs(sm, "ic")
    table = tune.format_table(jobs, "valid_accuracy").splitlines()
    assert len(table) == 3
    assert table[1].split()[:3] == ["t-1", "Failed", "-"] and table[2].split()[:3] == ["t-2", "Completed", "0.9100"]


def test_no_best_training_job():
    with pytest.raises(ValueError, match="no best training job"):
        tune.best_hyperparameters({"HyperParameterTuningJobName": "ic"})
