"""scripts/pipeline.py: the definition JSON, upsert and start against the emulator, dry runs, refusals."""

import json

import boto3
import pytest
from botocore.exceptions import ClientError

from image_classifier.launch import metrics, pipeline, registry
from image_classifier.serving import content_types
from tests.launch.common import ROLE, TRAIN_IMAGE

SERVE_IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/image-classifier-serve:abc1234"
ARGS = ["--name", "ic-pipeline", "--role", ROLE, "--train-image", TRAIN_IMAGE, "--serve-image", SERVE_IMAGE,
        "--data", "s3://ic-data/dogImages/", "--output", "s3://ic-out/jobs/", "--region", "us-east-1"]


def run(capsys, *args) -> tuple[int, dict]:
    code = pipeline.main([*ARGS, *args])
    out = capsys.readouterr().out
    start = out.find("{\n")
    return code, json.loads(out[start: out.index("\n}", start) + 2]) if start >= 0 else {}


@pytest.fixture(autouse=True)
def no_pause(monkeypatch):
    """--wait polls at once: the emulator's executions settle on the second DescribePipelineExecution."""
    monkeypatch.setattr(pipeline, "POLL_SECONDS", 0.0)


def sm():
    return boto3.client("sagemaker", region_name="us-east-1")


@pytest.fixture
def definition(aws, tmp_path, capsys) -> dict:
    out = tmp_path / "definition.json"
    code, _ = run(capsys, "--definition-out", str(out), "--metric", "test_f1", "--hyperparameter", "freeze=none")
    assert code == 0
    return json.loads(out.read_text())


def steps_by_name(definition: dict) -> dict:
    found = {}
    for step in definition["Steps"]:
        found[step["Name"]] = step
        for branch in ("IfSteps", "ElseSteps"):
            found.update({s["Name"]: s for s in step["Arguments"].get(branch, [])})
    return found


def test_definition_parameters(definition):
    parameters = {p["Name"]: (p["Type"], p["DefaultValue"]) for p in definition["Parameters"]}
    assert parameters == {
        "TrainingData": ("String", "s3://ic-data/dogImages"), "Model": ("String", "resnet50"),
        "Epochs": ("Integer", 5), "LearningRate": ("Float", 0.001), "BatchSize": ("Integer", 32),
        "TrainingInstanceType": ("String", "ml.g4dn.xlarge"), "TrainingInstanceCount": ("Integer", 1),
        "MinTestMetric": ("Float", 0.8), "ModelPackageGroupName": ("String", "image-classifier"),
        "ModelApprovalStatus": ("String", "PendingManualApproval")}


def test_definition_training_step(definition):
    train = steps_by_name(definition)["Train"]
    assert train["Type"] == "Training"
    request = train["Arguments"]
    assert request["AlgorithmSpecification"]["TrainingImage"] == TRAIN_IMAGE
    assert request["AlgorithmSpecification"]["MetricDefinitions"] == metrics.metric_definitions()
    # HyperParameters takes strings: the Integer and Float parameters go in as a Std:Join of themselves
    assert request["HyperParameters"] == {
        "freeze": "none", "model": {"Get": "Parameters.Model"},
        **{key: {"Std:Join": {"On": "", "Values": [{"Get": f"Parameters.{name}"}]}}
           for key, name in (("epochs", "Epochs"), ("lr", "LearningRate"), ("batch-size", "BatchSize"))}}
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in request["InputDataConfig"]}
    assert channels == {c: {"Std:Join": {"On": "/", "Values": [{"Get": "Parameters.TrainingData"}, c]}}
                        for c in ("train", "valid", "test")}
    assert request["ResourceConfig"]["InstanceType"] == {"Get": "Parameters.TrainingInstanceType"}
    assert request["ResourceConfig"]["InstanceCount"] == {"Get": "Parameters.TrainingInstanceCount"}
    assert request["OutputDataConfig"]["S3OutputPath"] == "s3://ic-out/jobs"
    assert request["RoleArn"] == ROLE


def test_definition_condition_registration_and_failure(definition):
    steps = steps_by_name(definition)
    check = steps["QualityCheck"]["Arguments"]
    assert check["Conditions"] == [{"Type": "GreaterThanOrEqualTo",
                                    "LeftValue": {"Get": "Steps.Train.FinalMetricDataList['test_f1'].Value"},
                                    "RightValue": {"Get": "Parameters.MinTestMetric"}}]
    assert [s["Name"] for s in check["IfSteps"]] == ["Register"]
    assert [s["Name"] for s in check["ElseSteps"]] == ["BelowThreshold"]
    register = steps["Register"]
    assert register["Type"] == "RegisterModel"
    package = register["Arguments"]
    assert package["ModelPackageGroupName"] == {"Get": "Parameters.ModelPackageGroupName"}
    assert package["ModelApprovalStatus"] == {"Get": "Parameters.ModelApprovalStatus"}
    spec = package["InferenceSpecification"]
    assert spec["Containers"][0]["Image"] == SERVE_IMAGE
    assert spec["Containers"][0]["ModelDataUrl"] == {"Get": "Steps.Train.ModelArtifacts.S3ModelArtifacts"}
    # the same package as register.py's: what the server decodes and answers, the same instance types
    assert spec["SupportedContentTypes"] == list(content_types.REQUEST_TYPES)
    assert spec["SupportedResponseMIMETypes"] == list(content_types.RESPONSE_TYPES)
    assert spec["SupportedRealtimeInferenceInstanceTypes"] == list(registry.REALTIME_INSTANCE_TYPES)
    assert spec["SupportedTransformInstanceTypes"] == list(registry.TRANSFORM_INSTANCE_TYPES)
    assert package["CustomerMetadataProperties"] == {"TrainingJobName": {"Get": "Steps.Train.TrainingJobName"}}
    assert steps["BelowThreshold"]["Type"] == "Fail"


def test_upsert_creates_then_updates_and_start_runs(aws, received, capsys):
    code, created = run(capsys, "--name", "ic-upsert", "--upsert")
    assert code == 0 and len(received("CreatePipeline")) == 1 and not received("UpdatePipeline")
    sent = json.loads(received("CreatePipeline")[0]["body"]["PipelineDefinition"])
    assert {p["Name"] for p in sent["Parameters"]} == set(pipeline.PARAMETERS)
    described = sm().describe_pipeline(PipelineName="ic-upsert")
    assert described["PipelineArn"] == created["PipelineArn"] and described["RoleArn"] == ROLE

    code, updated = run(capsys, "--name", "ic-upsert", "--upsert", "--start", "--param", "Epochs=12",
                        "--param", "MinTestMetric=0.5", "--wait")
    assert code == 0 and len(received("UpdatePipeline")) == 1 and updated["PipelineArn"] == created["PipelineArn"]
    start = received("StartPipelineExecution")[0]["body"]
    assert start["PipelineParameters"] == [{"Name": "Epochs", "Value": "12"}, {"Name": "MinTestMetric", "Value": "0.5"}]
    assert len(received("DescribePipelineExecution")) >= 2  # Executing, then Succeeded
    assert received("ListPipelineExecutionSteps")
    execution = sm().describe_pipeline_execution(PipelineExecutionArn=updated["PipelineExecutionArn"])
    assert execution["PipelineExecutionStatus"] == "Succeeded"


def test_wait_exits_non_zero_when_the_execution_fails(aws, capsys):
    # the emulator's training metric is 0.9 (tests/launch/emulator.py): a bar of 0.99 takes the FailStep
    code, started = run(capsys, "--name", "ic-fails", "--upsert", "--start", "--param", "MinTestMetric=0.99",
                          "--wait")
    assert code == pipeline.FAILED
    execution = sm().describe_pipeline_execution(PipelineExecutionArn=started["PipelineExecutionArn"])
    assert execution["PipelineExecutionStatus"] == "Failed"
    steps = sm().list_pipeline_execution_steps(PipelineExecutionArn=started["PipelineExecutionArn"])
    assert [s["StepName"] for s in steps["PipelineExecutionSteps"] if s["StepStatus"] == "Failed"] == [
        "BelowThreshold"]


def test_dry_run_sends_nothing_that_changes(aws, received, capsys):
    code, result = run(capsys, "--name", "ic-dry", "--upsert", "--start", "--param", "Epochs=3", "--dry-run")
    assert code == 0
    assert [r["operation"] for r in result["requests"]] == ["CreatePipeline", "StartPipelineExecution"]
    assert result["requests"][1]["PipelineParameters"] == [{"Name": "Epochs", "Value": "3"}]
    assert json.loads(result["requests"][0]["PipelineDefinition"])["Steps"][0]["Name"] == "Train"
    # a dry run reads (DescribePipeline: create or update), changes nothing
    assert [r["operation"] for r in received()] == ["DescribePipeline"]
    assert "ic-dry" not in [p["PipelineName"] for p in sm().list_pipelines()["PipelineSummaries"]]


def emulated(name: str, condition: dict, parameters: list[dict] = ()) -> dict:
    """Run a pipeline of a Training step and a Condition step (`condition`, Register or Fail) in the emulator;
    its settled DescribePipelineExecution."""
    below = {"Name": "Below", "Type": "Fail", "Arguments": {"ErrorMessage": "below"}}
    check = {"Name": "Check", "Type": "Condition",
             "Arguments": {"Conditions": [condition], "IfSteps": [], "ElseSteps": [below]}}
    definition = {"Version": "2020-12-01", "Parameters": [{"Name": "Bar", "Type": "Float", "DefaultValue": 0.9}],
                  "Steps": [{"Name": "Train", "Type": "Training", "Arguments": {}}, check]}
    sm().create_pipeline(PipelineName=name, PipelineDefinition=json.dumps(definition), RoleArn=ROLE)
    arn = sm().start_pipeline_execution(PipelineName=name, PipelineParameters=list(parameters))["PipelineExecutionArn"]
    sm().describe_pipeline_execution(PipelineExecutionArn=arn)  # Executing
    return sm().describe_pipeline_execution(PipelineExecutionArn=arn)


METRIC = {"Get": "Steps.Train.FinalMetricDataList['test_accuracy'].Value"}  # the emulator's 0.9


@pytest.mark.parametrize("kind, right, status", [
    ("GreaterThanOrEqualTo", {"Get": "Parameters.Bar"}, "Succeeded"),
    ("GreaterThan", {"Get": "Parameters.Bar"}, "Failed"),
    ("GreaterThan", 0.5, "Succeeded"),
    ("LessThan", 0.95, "Succeeded"),
    ("LessThanOrEqualTo", 0.5, "Failed"),
    ("Equals", 0.9, "Succeeded"),
])
def test_the_emulator_applies_the_condition_type(aws, kind, right, status):
    condition = {"Type": kind, "LeftValue": METRIC, "RightValue": right}
    assert emulated(f"ic-cond-{kind}-{status}", condition)["PipelineExecutionStatus"] == status


@pytest.mark.parametrize("left, parameters", [
    ({"Get": "Parameters.Nope"}, []),  # a parameter the definition does not declare
    ({"Get": "Steps.Tran.FinalMetricDataList['test_accuracy'].Value"}, []),  # no such step
    ({"Get": "Steps.Train.ModelArtifacts.S3ModelArtifacts"}, []),  # not a metric
    (METRIC, [{"Name": "Nope", "Value": "1"}]),  # a value for no parameter
], ids=["parameter", "step", "property", "value"])
def test_the_emulator_refuses_what_it_cannot_resolve(aws, left, parameters):
    with pytest.raises(ClientError, match="ValidationException"):
        emulated(f"ic-unresolved-{len(left['Get'])}-{len(parameters)}",
                 {"Type": "GreaterThanOrEqualTo", "LeftValue": left, "RightValue": 0.5}, parameters)


@pytest.mark.parametrize("args, words", [
    (["--upsert", "--name", "bad_name"], "pipeline name"),
    (["--upsert", "--role", "SageMakerRole"], "--role takes an IAM role ARN"),
    (["--upsert", "--data", "/local/data"], "--data takes an S3 URI"),
    (["--upsert", "--output", "ic-out"], "--output takes an S3 URI"),
    (["--start", "--param", "Epochs"], "--param takes NAME=VALUE"),
    (["--start", "--param", "Epoch=3"], "--param takes NAME=VALUE"),
    (["--start", "--param", "Epochs=three"], "pipeline Integer"),
    (["--start", "--param", "ModelApprovalStatus=Yes"], "ModelApprovalStatus takes one of"),
    (["--upsert", "--param", "Epochs=3"], "go with --start"),
    (["--upsert", "--hyperparameter", "epochs=3"], "--param Epochs="),
    ([], "nothing to do"),
    (["--definition-out", "/nowhere/definition.json"], "no folder /nowhere"),
    (["--start", "--param", "ModelPackageGroupName=ic_models"], "model package group name"),
    (["--start", "--param", "ModelPackageGroupName=" + "m" * 64], "model package group name"),
    (["--start", "--param", "TrainingInstanceType=ml.g4dn.huge"], "offers no ml.g4dn.huge"),
    (["--start", "--param", "TrainingInstanceType=ml.t2.medium"], "offers no ml.t2.medium"),  # an endpoint's only
])
def test_bad_arguments_refused_before_any_call(aws, received, capsys, args, words):
    code = pipeline.main([*ARGS, *args])
    assert code == 2 and words in capsys.readouterr().err
    assert received() == []
