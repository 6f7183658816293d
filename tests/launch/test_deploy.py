"""scripts/deploy.py against moto_server: Model, EndpointConfig and Endpoint as received, dry runs, delete."""

import json

import boto3
import pytest
from botocore.stub import Stubber

from image_classifier.launch import deploy

IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/image-classifier-serve:abc1234"
ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
MODEL_DATA = "s3://ic-out/jobs/t-1/output/model.tar.gz"


def run(capsys, *args) -> tuple[int, list]:
    code = deploy.main(["--region", "us-east-1", *args])
    out = capsys.readouterr().out
    return code, json.loads(out[out.index("["): out.rindex("]") + 1]) if code == 0 else []


def sm():
    return boto3.client("sagemaker", region_name="us-east-1")


def test_deploy_creates_model_config_and_endpoint(aws, received, capsys):
    code, result = run(capsys, "--name", "ic-endpoint", "--image", IMAGE, "--role", ROLE, "--model-data", MODEL_DATA,
                       "--instance-type", "ml.c5.xlarge", "--instance-count", "2", "--startup-timeout", "300",
                       "--env", "MODEL_SERVER_WORKERS=2")
    assert code == 0
    names = result[0]
    endpoint = sm().describe_endpoint(EndpointName="ic-endpoint")
    assert endpoint["EndpointStatus"] == "InService" and endpoint["EndpointConfigName"] == names["EndpointConfigName"]
    variant = sm().describe_endpoint_config(EndpointConfigName=names["EndpointConfigName"])["ProductionVariants"][0]
    assert variant["VariantName"] == "AllTraffic" and [variant["ModelName"]] == names["ModelNames"]
    assert variant["InstanceType"] == "ml.c5.xlarge" and variant["InitialInstanceCount"] == 2
    model = sm().describe_model(ModelName=variant["ModelName"])
    assert model["PrimaryContainer"]["Image"] == IMAGE
    assert model["PrimaryContainer"]["ModelDataUrl"] == MODEL_DATA
    assert model["PrimaryContainer"]["Environment"] == {"MODEL_SERVER_WORKERS": "2"}
    assert model["ExecutionRoleArn"] == ROLE

    code, deleted = run(capsys, "--name", "ic-endpoint", "--delete", "--no-wait")
    assert code == 0 and deleted[0]["ModelNames"] == names["ModelNames"]
    assert deleted[0]["ScalableTargets"] == [] and not received("DeregisterScalableTarget")  # none, and no error
    assert names["EndpointConfigName"] not in [
        c["EndpointConfigName"] for c in sm().list_endpoint_configs()["EndpointConfigs"]]
    assert names["ModelNames"][0] not in [m["ModelName"] for m in sm().list_models()["Models"]]


def test_model_data_of_a_training_job(aws):
    client = sm()
    client.create_training_job(
        TrainingJobName="t-42", RoleArn=ROLE,
        AlgorithmSpecification={"TrainingImage": IMAGE, "TrainingInputMode": "File"},
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


BASE = ["--image", IMAGE, "--role", ROLE]
POLICY = {"TargetValue": 240.0,
          "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
          "ScaleInCooldown": 600, "ScaleOutCooldown": 300}


def scaling():
    return boto3.client("application-autoscaling", region_name="us-east-1")


def operations(received) -> list[str]:
    return [r["operation"] for r in received() if r["operation"]]


def test_two_variants_get_a_model_each_and_their_weights(aws, received, capsys):
    sm().create_training_job(
        TrainingJobName="t-ab", RoleArn=ROLE,
        AlgorithmSpecification={"TrainingImage": IMAGE, "TrainingInputMode": "File"},
        OutputDataConfig={"S3OutputPath": "s3://ic-out/jobs"}, StoppingCondition={"MaxRuntimeInSeconds": 60},
        ResourceConfig={"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 10})
    job_data = sm().describe_training_job(TrainingJobName="t-ab")["ModelArtifacts"]["S3ModelArtifacts"]
    code, result = run(capsys, "--name", "ic-ab", *BASE, "--variant", f"current={MODEL_DATA}:3",
                       "--variant", "new=t-ab:1",
                       "--env", "MODEL_SERVER_WORKERS=2")
    assert code == 0
    config = sm().describe_endpoint_config(EndpointConfigName=result[0]["EndpointConfigName"])["ProductionVariants"]
    assert [(v["VariantName"], v["InitialVariantWeight"]) for v in config] == [("current", 3.0), ("new", 1.0)]
    assert [v["ModelName"] for v in config] == result[0]["ModelNames"] and len(set(result[0]["ModelNames"])) == 2
    containers = {v["VariantName"]: sm().describe_model(ModelName=v["ModelName"])["PrimaryContainer"] for v in config}
    assert containers["current"]["ModelDataUrl"] == MODEL_DATA and containers["new"]["ModelDataUrl"] == job_data
    assert all(c["Image"] == IMAGE and c["Environment"] == {"MODEL_SERVER_WORKERS": "2"} for c in containers.values())
    assert [r["body"]["ExecutionRoleArn"] for r in received("CreateModel")] == [ROLE, ROLE]
    endpoint = sm().describe_endpoint(EndpointName="ic-ab")
    weights = [(v["VariantName"], v["CurrentWeight"]) for v in endpoint["ProductionVariants"]]
    assert weights == [("current", 3.0), ("new", 1.0)]


def test_autoscaling_registers_each_variant_once_the_endpoint_is_in_service(aws, received, capsys):
    code, result = run(capsys, "--name", "ic-scale", *BASE, "--variant", f"a={MODEL_DATA}",
                       "--variant", f"b={MODEL_DATA}:0.5", "--autoscale", "2:5", "--target-invocations", "240")
    assert code == 0
    ids = ["endpoint/ic-scale/variant/a", "endpoint/ic-scale/variant/b"]
    assert result[0]["ScalableTargets"] == ids
    targets = scaling().describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=ids)["ScalableTargets"]
    assert sorted((t["ResourceId"], t["ScalableDimension"], t["MinCapacity"], t["MaxCapacity"]) for t in targets) == [
        (i, "sagemaker:variant:DesiredInstanceCount", 2, 5) for i in ids]
    for resource_id in ids:
        policies = scaling().describe_scaling_policies(
            ServiceNamespace="sagemaker", ResourceId=resource_id)["ScalingPolicies"]
        assert [(p["PolicyType"], p["TargetTrackingScalingPolicyConfiguration"]) for p in policies] == [
            ("TargetTrackingScaling", POLICY)]
    put = [r["body"] for r in received("PutScalingPolicy")]
    assert [p["ResourceId"] for p in put] == ids
    assert all(p["TargetTrackingScalingPolicyConfiguration"] == POLICY for p in put)
    ops = operations(received)
    in_service = max(i for i, op in enumerate(ops[:ops.index("RegisterScalableTarget")]) if op == "DescribeEndpoint")
    assert ops.index("CreateEndpoint") < in_service  # registered after the wait saw InService
    config = sm().describe_endpoint_config(EndpointConfigName=result[0]["EndpointConfigName"])["ProductionVariants"]
    assert [v["InitialInstanceCount"] for v in config] == [2, 2]  # --autoscale's MIN, no --instance-count given


def test_delete_deregisters_the_scalable_targets_before_the_endpoint(aws, received, capsys):
    code, _ = run(capsys, "--name", "ic-scale-del", *BASE, "--variant", f"a={MODEL_DATA}",
                  "--variant", f"b={MODEL_DATA}",
                  "--autoscale", "1:3", "--target-invocations", "60",
                  "--scale-in-cooldown", "900", "--scale-out-cooldown", "120")
    assert code == 0
    put = received("PutScalingPolicy")[0]["body"]["TargetTrackingScalingPolicyConfiguration"]
    assert (put["ScaleInCooldown"], put["ScaleOutCooldown"]) == (900, 120)
    before = len(operations(received))
    code, deleted = run(capsys, "--name", "ic-scale-del", "--delete", "--no-wait")
    assert code == 0 and len(deleted[0]["ScalableTargets"]) == 2
    ops = operations(received)[before:]
    assert ops.count("DeregisterScalableTarget") == 2
    assert max(i for i, op in enumerate(ops) if op == "DeregisterScalableTarget") < ops.index("DeleteEndpoint")
    ids = ["endpoint/ic-scale-del/variant/a", "endpoint/ic-scale-del/variant/b"]
    assert scaling().describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=ids)["ScalableTargets"] == []


def test_serverless_variant_has_its_config_and_no_instance_fields(aws, received, capsys):
    code, result = run(capsys, "--name", "ic-serverless", *BASE, "--model-data", MODEL_DATA, "--serverless", "3072:20")
    assert code == 0
    instance_fields = {"InstanceType", "InitialInstanceCount", "ContainerStartupHealthCheckTimeoutInSeconds"}
    sent = received("CreateEndpointConfig")[0]["body"]["ProductionVariants"]
    stored = sm().describe_endpoint_config(EndpointConfigName=result[0]["EndpointConfigName"])["ProductionVariants"]
    for variant in sent + stored:
        assert variant["ServerlessConfig"] == {"MemorySizeInMB": 3072, "MaxConcurrency": 20}
        assert not instance_fields & set(variant)
    assert sm().describe_endpoint(EndpointName="ic-serverless")["ProductionVariants"][0]["CurrentServerlessConfig"] == {
        "MemorySizeInMB": 3072, "MaxConcurrency": 20}


def exit_code(*args) -> int:
    """deploy.main's exit code, argparse's refusals (SystemExit) included."""
    try:
        return deploy.main(["--region", "us-east-1", *args])
    except SystemExit as exc:
        return exc.code


@pytest.mark.parametrize("args, words", [
    (["--variant", "a"], "NAME=SOURCE[:WEIGHT]"),
    (["--variant", "a=not a source"], "neither an s3://"),
    (["--variant", "a=job:abc"], "the weight must be a number >= 0, got 'abc'"),
    (["--variant", f"a_b={MODEL_DATA}"], "variant name 'a_b'"),
    (["--variant", f"{'v' * 64}={MODEL_DATA}"], "1-63 letters"),
    (["--variant", f"a={MODEL_DATA}:-1"], "weight must be a number >= 0"),
    (["--variant", f"a={MODEL_DATA}", "--variant", f"a={MODEL_DATA}:2"], "unique: a given more than once"),
    (["--variant", f"a={MODEL_DATA}:0", "--variant", f"b={MODEL_DATA}:0"], "a weight above 0"),
    (["--model-data", MODEL_DATA, "--variant", f"a={MODEL_DATA}"], "not allowed with argument"),
    (["--name", "ic_endpoint", "--model-data", MODEL_DATA], "endpoint name 'ic_endpoint'"),
    (["--training-job", "t_42"], "--training-job takes a training job's name"),
    (["--model-data", MODEL_DATA, "--env", "MODEL_SERVER_WORKERS"], "KEY=VALUE"),
    (["--model-data", MODEL_DATA, "--serverless", "2048:10", "--autoscale", "1:2", "--target-invocations", "100"],
     "scales by itself"),
    (["--model-data", MODEL_DATA, "--serverless", "2048:10", "--instance-type", "ml.c5.xlarge",
      "--instance-count", "2"],
     "leave out --instance-type, --instance-count"),
    (["--model-data", MODEL_DATA, "--serverless", "1500:10"], "memory must be one of 1024, 2048"),
    (["--model-data", MODEL_DATA, "--serverless", "2048:201"], "max concurrency must be 1-200"),
    (["--variant", f"a={MODEL_DATA}", "--variant", f"b={MODEL_DATA}", "--serverless", "2048:5"],
     "one production variant"),
    (["--model-data", MODEL_DATA, "--autoscale", "3:2", "--target-invocations", "100"], "MIN must not exceed MAX"),
    (["--model-data", MODEL_DATA, "--async-output", "s3://b/o", "--autoscale", "0:0"], "MAX must be at least 1"),
    (["--model-data", MODEL_DATA, "--autoscale", "0:2", "--target-invocations", "100"], "MIN must be at least 1"),
    (["--model-data", MODEL_DATA, "--autoscale", "1:2"], "needs --target-invocations"),
    (["--model-data", MODEL_DATA, "--autoscale", "1:2", "--target-invocations", "0"], "above 0"),
    (["--model-data", MODEL_DATA, "--autoscale", "1:2", "--target-invocations", "100", "--no-wait"], "needs --wait"),
    (["--model-data", MODEL_DATA, "--autoscale", "2:3", "--target-invocations", "100", "--instance-count", "4"],
     "--instance-count 4 is outside --autoscale 2:3"),
    (["--model-data", MODEL_DATA, "--target-invocations", "100"], "only go with --autoscale"),
])
def test_refusals_send_nothing(received, capsys, args, words):
    assert exit_code(*BASE, *args) == 2
    assert words in capsys.readouterr().err
    assert received() == []


def test_a_refused_endpoint_config_deletes_the_models_this_run_created(aws, received, capsys):
    code = deploy.main(["--region", "us-east-1", "--name", "ic-refused", *BASE, "--variant", f"a={MODEL_DATA}",
                        "--variant", f"b={MODEL_DATA}", "--instance-type", "ml.bogus.large"])
    assert code == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "CreateEndpointConfig" in errors[0] and "deleted what this run created" in errors[0]
    created = sorted(r["body"]["ModelName"] for r in received("CreateModel"))
    assert len(created) == 2 and sorted(r["body"]["ModelName"] for r in received("DeleteModel")) == created
    assert not received("CreateEndpoint") and not received("DeleteEndpoint")
    assert not set(created) & {m["ModelName"] for m in sm().list_models()["Models"]}


def test_dry_run_of_variants_and_autoscaling_sends_nothing(aws, received, capsys):
    code, requests = run(capsys, "--name", "ic-dry-ab", *BASE, "--variant", f"a={MODEL_DATA}:9",
                         "--variant", f"b={MODEL_DATA}:1", "--autoscale", "1:3", "--target-invocations", "240",
                         "--dry-run")
    assert code == 0 and received() == []
    models, config, endpoint, scaling_requests = requests[:2], requests[2], requests[3], requests[4:]
    assert [m["ModelName"] for m in models] == [v["ModelName"] for v in config["ProductionVariants"]]
    assert [v["InitialVariantWeight"] for v in config["ProductionVariants"]] == [9.0, 1.0]
    assert endpoint == {"EndpointName": "ic-dry-ab", "EndpointConfigName": config["EndpointConfigName"]}
    assert [(r["ResourceId"], "PolicyName" in r) for r in scaling_requests] == [
        ("endpoint/ic-dry-ab/variant/a", False), ("endpoint/ic-dry-ab/variant/a", True),
        ("endpoint/ic-dry-ab/variant/b", False), ("endpoint/ic-dry-ab/variant/b", True)]
    assert scaling_requests[1]["TargetTrackingScalingPolicyConfiguration"] == POLICY


def test_delete_dry_run_deletes_nothing(aws, received, capsys):
    code, _ = run(capsys, "--name", "ic-keep", *BASE, "--model-data", MODEL_DATA)
    assert code == 0
    code, requests = run(capsys, "--name", "ic-keep", "--delete", "--dry-run")
    assert code == 0 and [list(r) for r in requests] == [["EndpointName"], ["EndpointConfigName"], ["ModelName"]]
    assert not [op for op in operations(received) if op.startswith(("Delete", "Deregister"))]
    assert sm().describe_endpoint(EndpointName="ic-keep")["EndpointStatus"] == "InService"


def test_long_names_fit_in_63_characters_and_stay_apart(aws, capsys):
    endpoint = "e" * 63
    code, result = run(capsys, "--name", endpoint, *BASE, "--variant", f"{'v' * 62}a={MODEL_DATA}",
                       "--variant", f"{'v' * 62}b={MODEL_DATA}")
    assert code == 0
    names = [result[0]["EndpointConfigName"], *result[0]["ModelNames"]]
    assert all(len(n) <= 63 for n in names) and len(set(names)) == 3


def test_an_endpoint_that_fails_is_an_error_with_its_failure_reason():
    client = boto3.client("sagemaker", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    with Stubber(client) as stub:
        stub.add_response("describe_endpoint", {
            "EndpointName": "ic", "EndpointArn": "arn:aws:sagemaker:us-east-1:1:endpoint/ic",
            "EndpointStatus": "Failed", "FailureReason": "the container did not answer /ping",
            "CreationTime": "2026-01-01", "LastModifiedTime": "2026-01-01"}, {"EndpointName": "ic"})
        with pytest.raises(deploy.DeployError, match="it is Failed, failure reason: the container did not answer"):
            deploy.wait_in_service(client, "ic")
