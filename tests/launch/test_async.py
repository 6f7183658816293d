"""deploy.py --async-output against moto_server: the endpoint config's AsyncInferenceConfig, the
container environment, scaling to 0 on the backlog with the scale-out-from-0 policy and alarm, delete."""

import json

import boto3
import pytest

from image_classifier.launch import deploy
from image_classifier.sagemaker_env import MAX_PAYLOAD_ENV, MODEL_SERVER_TIMEOUT_ENV
from tests.launch.test_deploy import BASE, MODEL_DATA, exit_code, operations, run, scaling, sm

TOPIC = "arn:aws:sns:us-east-1:123456789012:ic-async"
ERRORS = "arn:aws:sns:us-east-1:123456789012:ic-async-errors"
ASYNC = ["--async-output", "s3://ic-async/out", "--async-failure", "s3://ic-async/failed",
         "--async-success-topic", TOPIC, "--async-error-topic", ERRORS, "--async-max-concurrent", "4"]
EXPECTED_CONFIG = {
    "OutputConfig": {"S3OutputPath": "s3://ic-async/out", "S3FailurePath": "s3://ic-async/failed",
                     "NotificationConfig": {"SuccessTopic": TOPIC, "ErrorTopic": ERRORS}},
    "ClientConfig": {"MaxConcurrentInvocationsPerInstance": 4}}


def cloudwatch():
    return boto3.client("cloudwatch", region_name="us-east-1")


def test_async_endpoint_config_and_container_environment(aws, received, capsys):
    code, result = run(capsys, "--name", "ic-async", *BASE, "--model-data", MODEL_DATA, *ASYNC,
                       "--env", "MODEL_SERVER_WORKERS=2")
    assert code == 0
    assert received("CreateEndpointConfig")[0]["body"]["AsyncInferenceConfig"] == EXPECTED_CONFIG
    environment = sm().describe_model(ModelName=result[0]["ModelNames"][0])["PrimaryContainer"]["Environment"]
    assert environment == {MAX_PAYLOAD_ENV: "1000", MODEL_SERVER_TIMEOUT_ENV: "3600", "MODEL_SERVER_WORKERS": "2"}
    assert result[0]["ScalableTargets"] == [] and not received("PutMetricAlarm")


def test_env_overrides_the_async_environment(aws, received, capsys):
    code, requests = run(capsys, "--name", "ic-async-env", *BASE, "--model-data", MODEL_DATA,
                         "--async-output", "s3://ic-async/out", "--env", f"{MODEL_SERVER_TIMEOUT_ENV}=900",
                         "--dry-run")
    assert code == 0 and received() == []
    assert requests[0]["PrimaryContainer"]["Environment"] == {MAX_PAYLOAD_ENV: "1000", MODEL_SERVER_TIMEOUT_ENV: "900"}
    assert requests[1]["AsyncInferenceConfig"] == {"OutputConfig": {"S3OutputPath": "s3://ic-async/out"}}


def test_async_autoscaling_reaches_zero_and_scales_out_from_it(aws, received, capsys):
    code, result = run(capsys, "--name", "ic-async-scale", *BASE, "--model-data", MODEL_DATA, *ASYNC,
                       "--autoscale", "0:3", "--target-backlog", "10")
    assert code == 0
    resource_id = "endpoint/ic-async-scale/variant/AllTraffic"
    assert result[0]["ScalableTargets"] == [resource_id]
    variant = sm().describe_endpoint_config(EndpointConfigName=result[0]["EndpointConfigName"])["ProductionVariants"]
    assert variant[0]["InitialInstanceCount"] == 1  # an endpoint starts with an instance, then may scale to 0
    target = received("RegisterScalableTarget")[0]["body"]
    assert (target["MinCapacity"], target["MaxCapacity"]) == (0, 3)
    tracking, step = [r["body"] for r in received("PutScalingPolicy")]
    assert tracking["PolicyType"] == "TargetTrackingScaling"
    assert tracking["TargetTrackingScalingPolicyConfiguration"] == {
        "TargetValue": 10.0, "ScaleInCooldown": 600, "ScaleOutCooldown": 300,
        "CustomizedMetricSpecification": {
            "MetricName": "ApproximateBacklogSizePerInstance", "Namespace": "AWS/SageMaker",
            "Dimensions": [{"Name": "EndpointName", "Value": "ic-async-scale"}], "Statistic": "Average"}}
    assert step["PolicyType"] == "StepScaling" and step["StepScalingPolicyConfiguration"] == {
        "AdjustmentType": "ChangeInCapacity", "MetricAggregationType": "Average", "Cooldown": 300,
        "StepAdjustments": [{"MetricIntervalLowerBound": 0.0, "ScalingAdjustment": 1}]}
    policies = scaling().describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=resource_id)
    arns = {p["PolicyName"]: p["PolicyARN"] for p in policies["ScalingPolicies"]}
    assert set(arns) == {"backlog-per-instance", "has-backlog-without-capacity"}
    alarm = cloudwatch().describe_alarms(AlarmNames=result[0]["Alarms"])["MetricAlarms"]
    assert [(a["MetricName"], a["Namespace"], a["Statistic"], a["Threshold"], a["ComparisonOperator"],
             a["EvaluationPeriods"], a["Period"], a["AlarmActions"]) for a in alarm] == [
        ("HasBacklogWithoutCapacity", "AWS/SageMaker", "Average", 1.0, "GreaterThanOrEqualToThreshold", 2, 60,
         [arns["has-backlog-without-capacity"]])]
    # the metric has the dimension EndpointName alone: another (VariantName) and the alarm would never fire
    assert [(a["Dimensions"], a.get("DatapointsToAlarm"), a.get("TreatMissingData")) for a in alarm] == [
        ([{"Name": "EndpointName", "Value": "ic-async-scale"}], 2, "missing")]
    ops = operations(received)
    assert ops.index("CreateEndpoint") < ops.index("RegisterScalableTarget") < ops.index("PutMetricAlarm")

    before = len(ops)
    code, deleted = run(capsys, "--name", "ic-async-scale", "--delete", "--no-wait")
    assert code == 0 and deleted[0]["ScalableTargets"] == [resource_id]
    assert deleted[0]["AlarmsAndDashboards"] == result[0]["Alarms"]
    ops = operations(received)[before:]
    assert ops.index("DeleteAlarms") < ops.index("DeregisterScalableTarget") < ops.index("DeleteEndpoint")
    assert cloudwatch().describe_alarms(AlarmNames=result[0]["Alarms"])["MetricAlarms"] == []
    assert scaling().describe_scalable_targets(ServiceNamespace="sagemaker",
                                               ResourceIds=[resource_id])["ScalableTargets"] == []


def test_async_dry_run_sends_nothing(aws, received, capsys):
    code, requests = run(capsys, "--name", "ic-async-dry", *BASE, "--model-data", MODEL_DATA, *ASYNC,
                         "--autoscale", "0:2", "--dry-run")
    assert code == 0 and received() == []
    assert requests[1]["AsyncInferenceConfig"] == EXPECTED_CONFIG
    assert [next(k for k in ("MinCapacity", "PolicyType", "AlarmName") if k in r) for r in requests[3:]] == [
        "MinCapacity", "PolicyType", "PolicyType", "AlarmName"]
    assert requests[6]["AlarmActions"] == ["<PolicyARN of the step scaling policy>"]
    assert requests[4]["TargetTrackingScalingPolicyConfiguration"]["TargetValue"] == 5.0  # AWS's example


@pytest.mark.parametrize("args, words", [
    (["--async-failure", "s3://b/f"], "only go with --async-output"),
    (["--async-output", "b/out"], "--async-output takes an S3 prefix"),
    (["--async-output", "s3:///out"], "--async-output takes an S3 prefix"),  # no bucket
    (["--async-output", "s3://b/out", "--async-failure", "http://x"], "--async-failure takes an S3 prefix"),
    (["--async-output", "s3://b/out", "--async-success-topic", "ic-topic"], "SNS topic ARN"),
    (["--async-output", "s3://b/out", "--async-error-topic", "arn:aws:sqs:us-east-1:123456789012:q"],
     "SNS topic ARN"),
    (["--async-output", "s3://b/out", "--async-max-concurrent", "1001"], "must be 1-1000"),
    (["--async-output", "s3://b/out", "--serverless", "2048:5"], "leave out --serverless"),
    (["--async-output", "s3://b/out", "--autoscale", "0:2", "--target-invocations", "100"], "scales on its backlog"),
    (["--async-output", "s3://b/out", "--autoscale", "0:2", "--target-backlog", "0"], "above 0"),
    (["--async-output", "s3://b/out", "--target-backlog", "3"], "only go with --autoscale"),
    (["--autoscale", "0:2", "--target-invocations", "100"], "MIN must be at least 1"),
])
def test_async_refusals_send_nothing(received, capsys, args, words):
    assert exit_code(*BASE, "--model-data", MODEL_DATA, *args) == 2
    assert words in capsys.readouterr().err
    assert received() == []


def test_environment_is_the_servers_own_variables(tmp_path):
    """--async-output's environment parses into the server's settings as 1 GB and an hour, which
    nginx's body limit and its wait for gunicorn's answer follow."""
    from image_classifier.launch import async_inference
    from image_classifier.sagemaker_env import ServerSettings
    from image_classifier.serving import front

    settings = ServerSettings.from_environ(async_inference.ENVIRONMENT)
    assert settings.max_payload_bytes == 10**9 and settings.model_server_timeout == 3600
    conf = front.nginx_conf(settings, tmp_path, tmp_path / "gunicorn.sock")
    assert "client_max_body_size 1000000000;" in conf
    assert f"proxy_read_timeout {3600 + front.PROXY_MARGIN_SECONDS}s;" in conf
    assert deploy.build_parser().parse_args(["--async-output", "s3://b/o"]).async_output == "s3://b/o"


# --- predict.py --async ----------------------------------------------------------------

PREDICTIONS = [{"label": "Affenpinscher", "class_id": 0, "probability": 0.93},
               {"label": "Afghan_hound", "class_id": 1, "probability": 0.05}]


def queue_async(aws, *results):
    """moto's answers to the next InvokeEndpointAsync calls: the objects it writes (output or failure)."""
    import requests

    requests.post(f"{aws}/moto-api/static/sagemaker/async-endpoint-results", timeout=10, json={
        "account_id": "123456789012", "region": "us-east-1", "results": list(results)})


@pytest.fixture
def batch(tmp_path):
    """An .npy batch of 8 images: a body a real-time endpoint would take too, sent through S3 here."""
    import numpy as np

    path = tmp_path / "batch.npy"
    np.save(path, np.zeros((8, 3, 32, 32), np.float32))
    return path


def test_predict_async_prints_the_output_objects_table(aws, received, capsys, batch):
    from image_classifier.client import format_answer
    from image_classifier.launch import invoke

    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="ic-async-in")
    queue_async(aws, {"data": json.dumps({"predictions": [PREDICTIONS, PREDICTIONS[::-1]]})})
    code = invoke.main([str(batch), "--endpoint", "ic-async", "--region", "us-east-1", "--top-k", "2",
                        "--async", "s3://ic-async-in/requests", "--invocation-timeout", "1800"])
    out = capsys.readouterr().out
    assert code == 0 and out.strip() == format_answer([PREDICTIONS, PREDICTIONS[::-1]])
    call = next(r for r in received() if r["url"].endswith("/endpoints/ic-async/async-invocations"))
    headers = {key.lower(): value for key, value in call["headers"].items()}
    location = headers["x-amzn-sagemaker-inputlocation"]
    assert location.startswith("s3://ic-async-in/requests/") and location.endswith("/batch.npy")
    assert headers["x-amzn-sagemaker-content-type"] == "application/x-npy"
    assert headers["x-amzn-sagemaker-custom-attributes"] == "top_k=2"
    assert headers["x-amzn-sagemaker-invocationtimeoutseconds"] == "1800"
    bucket, key = location.removeprefix("s3://").split("/", 1)
    uploaded = boto3.client("s3", region_name="us-east-1").get_object(Bucket=bucket, Key=key)
    assert uploaded["Body"].read() == batch.read_bytes()


def test_predict_async_reports_the_failure_object(aws, capsys, batch):
    from image_classifier.launch import invoke

    boto3.client("s3", region_name="us-east-1").create_bucket(Bucket="ic-async-in")
    trace = "Traceback (most recent call last):\n" + "  File x\n" * 200
    queue_async(aws, {"is_failure": True, "data": "the model container answered 500: out of memory\n" + trace})
    code = invoke.main([str(batch), "--endpoint", "ic-async", "--region", "us-east-1",
                        "--async", "s3://ic-async-in/requests"])
    err = capsys.readouterr().err
    assert code == 1 and "the endpoint failed the request" in err and "out of memory" in err
    line = next(line for line in err.splitlines() if "failed the request" in line)
    assert line.endswith("...") and len(line) < 700  # one line, the failure object's first 500 bytes


@pytest.mark.parametrize("args, words", [
    (["--async", "ic-async-in/requests"], "S3 prefix"),
    (["--async", "s3://ic-async-in/r", "--target-variant", "a"], "--target-variant"),
    (["--async", "s3://ic-async-in/r", "--invocation-timeout", "3601"], "1-3600"),
    (["--async", "s3:///r"], "S3 prefix"),
    (["--invocation-timeout", "600"], "only goes with --async"),
])
def test_predict_async_refusals_send_nothing(received, capsys, batch, args, words):
    from image_classifier.launch import invoke

    assert invoke.main([str(batch), "--endpoint", "ic-async", "--region", "us-east-1", *args]) == 2
    assert words in capsys.readouterr().err and received() == []


def test_predict_async_dry_run_sends_nothing(received, capsys, batch):
    from image_classifier.launch import invoke

    code = invoke.main([str(batch), "--endpoint", "ic-async", "--region", "us-east-1",
                        "--async", "s3://ic-async-in/requests", "--dry-run"])
    printed = json.loads(capsys.readouterr().out)
    assert code == 0 and received() == []
    assert printed["InvokeEndpointAsync"]["InputLocation"] == printed["PutObject"]["Location"]
    assert printed["InvokeEndpointAsync"]["InvocationTimeoutSeconds"] == 3600
    assert "TargetVariant" not in printed["InvokeEndpointAsync"]


def test_a_body_over_1_gb_is_refused(tmp_path):
    from image_classifier.launch import invoke_async

    big = tmp_path / "big.npy"
    with big.open("wb") as f:
        f.truncate(10**9 + 1)  # sparse: no GB written
    with pytest.raises(ValueError, match="over Asynchronous Inference's limit of 1 GB"):
        invoke_async.check_payload(big)


# --- the container takes what Asynchronous Inference sends -----------------------------

@pytest.mark.slow
def test_a_server_with_the_async_environment_takes_a_batch_far_over_6_mb(model_dir, tmp_path):
    """The model server (nginx in front of gunicorn) started with the environment --async-output
    writes answers an .npy batch of 20 MB, more than three times the real-time limit, image by image."""
    import shutil

    import requests

    from image_classifier.launch import async_inference
    from tests.serving.images import invocation_headers, load_npy, npy, random_batch
    from tests.serving.servers import start, stop, wait_for_answer

    shutil.copytree(model_dir, tmp_path / "model")
    process, url, log = start(tmp_path, 1, **async_inference.ENVIRONMENT)
    try:
        wait_for_answer(url, process, log, want=200, workers=1)
        body = npy(random_batch(1600, side=32))
        assert len(body) > 3 * 6 * 1024 * 1024
        response = requests.post(f"{url}/invocations", data=body, timeout=600,
                                 headers=invocation_headers("application/x-npy", "application/x-npy"))
        assert response.status_code == 200, response.text[:500]
        assert load_npy(response.content).shape == (1600, 10)
    finally:
        stop(process)
