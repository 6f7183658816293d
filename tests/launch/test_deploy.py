"""scripts/deploy.py against moto_server: Model, EndpointConfig and Endpoint as received, dry runs, delete."""

import json

import boto3
import pytest

from image_classifier.launch import deploy

IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/image-classifier-serve:abc1234"
ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
MODEL_DATA = "s3://ic-out/jobs/t-1/output/model.tar.gz"


def _drop_empty_structures(parsed, **_):
    for key in [k for k, v in parsed.items() if v == {}]:
        del parsed[key]


@pytest.fixture(autouse=True)
def moto_describes_like_aws(monkeypatch):
    """moto answers DescribeModel with `"VpcConfig": {}` and DescribeEndpointConfig with
    `"DataCaptureConfig": {}` where AWS leaves those keys out, and the SDK's shapes refuse the
    empty structures: drop them from every answer, as AWS would send it."""
    real = boto3.Session

    def session(*args, **kwargs):
        s = real(*args, **kwargs)
        s.events.register("after-call.sagemaker", _drop_empty_structures)
        return s

    monkeypatch.setattr(deploy.boto3, "Session", session)


def run(capsys, *args) -> tuple[int, list]:
    code = deploy.main(["--region", "us-east-1", *args])
    out = capsys.readouterr().out
    return code, json.loads(out[out.index("["): out.rindex("]") + 1]) if code == 0 else []


def sm():
    return boto3.client("sagemaker", region_name="us-east-1")


def test_deploy_creates_model_config_and_endpoint(aws, capsys):
    code, result = run(capsys, "--name", "ic-endpoint", "--image", IMAGE, "--role", ROLE, "--model-data", MODEL_DATA,
                       "--instance-type", "ml.c5.xlarge", "--instance-count", "2", "--startup-timeout", "300",
                       "--env", "MODEL_SERVER_WORKERS=2")
    assert code == 0
    names = result[0]
    endpoint = sm().describe_endpoint(EndpointName="ic-endpoint")
    assert endpoint["EndpointStatus"] == "InService" and endpoint["EndpointConfigName"] == names["EndpointConfigName"]
    variant = sm().describe_endpoint_config(EndpointConfigName=names["EndpointConfigName"])["ProductionVariants"][0]
    assert variant["ModelName"] == names["ModelName"] and variant["InstanceType"] == "ml.c5.xlarge"
    assert variant["InitialInstanceCount"] == 2
    model = sm().describe_model(ModelName=names["ModelName"])
    assert model["PrimaryContainer"]["Image"] == IMAGE
    assert model["PrimaryContainer"]["ModelDataUrl"] == MODEL_DATA
    assert model["PrimaryContainer"]["Environment"] == {"MODEL_SERVER_WORKERS": "2"}
    assert model["ExecutionRoleArn"] == ROLE

    code, deleted = run(capsys, "--name", "ic-endpoint", "--delete", "--no-wait")
    assert code == 0 and deleted[0]["ModelNames"] == [names["ModelName"]]
    assert names["EndpointConfigName"] not in [c["EndpointConfigName"] for c in sm().list_endpoint_configs()["EndpointConfigs"]]
    assert names["ModelName"] not in [m["ModelName"] for m in sm().list_models()["Models"]]


def test_model_data_of_a_training_job(aws):
    client = sm()
    client.create_training_job(
        TrainingJobName="t-42", RoleArn=ROLE, AlgorithmSpecification={"TrainingImage": IMAGE, "TrainingInputMode": "File"},
        OutputDataConfig={"S3OutputPath": "s3://ic-out/jobs"}, StoppingCondition={"MaxRuntimeInSeconds": 60},
        ResourceConfig={"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 10})
    args = deploy.build_parser().parse_args(["--training-job", "t-42"])
    expected = client.describe_training_job(TrainingJobName="t-42")["ModelArtifacts"]["S3ModelArtifacts"]
    assert deploy.model_data_of(client, args) == expected


def test_dry_run_sends_nothing_and_the_emulator_accepts_its_requests(aws, capsys):
    code, requests = run(capsys, "--name", "ic-dry", "--image", IMAGE, "--role", ROLE, "--model-data", MODEL_DATA,
                         "--dry-run")
    assert code == 0 and len(requests) == 3
    assert "ic-dry" not in [e["EndpointName"] for e in sm().list_endpoints()["Endpoints"]]
    model, config, endpoint = requests
    assert config["ProductionVariants"][0]["ContainerStartupHealthCheckTimeoutInSeconds"] == 600
    sm().create_model(**model)
    sm().create_endpoint_config(**config)
    sm().create_endpoint(**endpoint)
    assert sm().describe_endpoint(EndpointName="ic-dry")["EndpointConfigName"] == config["EndpointConfigName"]


@pytest.mark.parametrize("args, words", [
    (["--image", IMAGE, "--role", ROLE], "--model-data"),
    (["--model-data", MODEL_DATA], "--image and --role"),
])
def test_missing_arguments(aws, capsys, args, words):
    assert deploy.main(["--region", "us-east-1", *args]) == 2
    assert words in capsys.readouterr().err
