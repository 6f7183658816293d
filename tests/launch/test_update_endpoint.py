"""scripts/update_endpoint.py against the emulator: traffic shifts, blue/green updates (a failed one
rolled back by SageMaker, one refused), rollbacks along the previous-config tags, dry runs, refusals."""

import json
import uuid

import boto3
import pytest
import requests

from image_classifier.launch import update_endpoint
from image_classifier.launch.history import PREVIOUS_CONFIG_TAG, previous_config

from .common import refuse

IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/image-classifier-serve:abc1234"
NEW_IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/image-classifier-serve:def5678"
ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
OLD_DATA = "s3://ic-out/jobs/t-1/output/model.tar.gz"
NEW_DATA = "s3://ic-out/jobs/t-2/output/model.tar.gz"
FAIL_ENV = "EMULATOR_UPDATE_FAILS"  # tests/launch/emulator.py: the update fails with this variable's value
CHANGING = ("CreateModel", "CreateEndpointConfig", "UpdateEndpoint", "UpdateEndpointWeightsAndCapacities")


def sm():
    return boto3.client("sagemaker", region_name="us-east-1")


def start_endpoint(aws: str, variants: dict[str, float | None]) -> tuple[str, str]:
    """An endpoint in the shape deploy.py makes: a Model and a variant per entry (its weight, or None for
    none given, as deploy.py gives none), instance-based, with a start-up health-check timeout. The
    emulator's recording starts again after it: `received` holds what came after.

    Returns:
        the endpoint's name and its EndpointConfigName.
    """
    name = f"ic-{uuid.uuid4().hex[:8]}"
    production_variants = []
    for variant, weight in variants.items():
        model = f"{name}-{variant}-0"
        sm().create_model(ModelName=model, ExecutionRoleArn=ROLE, PrimaryContainer={
            "Image": IMAGE, "ModelDataUrl": OLD_DATA, "Environment": {"MODEL_SERVER_WORKERS": "2"}})
        production_variants.append({
            "VariantName": variant, "ModelName": model, "InstanceType": "ml.c5.xlarge", "InitialInstanceCount": 1,
            "ContainerStartupHealthCheckTimeoutInSeconds": 300,
            **({"InitialVariantWeight": weight} if weight is not None else {})})
    sm().create_endpoint_config(EndpointConfigName=f"{name}-0", ProductionVariants=production_variants)
    sm().create_endpoint(EndpointName=name, EndpointConfigName=f"{name}-0")
    requests.post(f"{aws}/moto-api/recorder/reset-recording", timeout=10)
    return name, f"{name}-0"


def run(capsys, *args) -> tuple[int, object, str]:
    """update_endpoint.main with `args` (polling at once); (exit code, the JSON it printed or None, stderr)."""
    code = update_endpoint.main(["--region", "us-east-1", "--poll", "0", *args])
    out, err = capsys.readouterr()
    start = min((i for i in (out.find("{"), out.find("[")) if i >= 0), default=-1)
    return code, json.loads(out[start:]) if start >= 0 else None, err


def config_names() -> set[str]:
    return {c["EndpointConfigName"] for c in sm().list_endpoint_configs(MaxResults=100)["EndpointConfigs"]}


def model_names() -> set[str]:
    return {m["ModelName"] for m in sm().list_models(MaxResults=100)["Models"]}


def live_variants(name: str) -> dict[str, dict]:
    return {v["VariantName"]: v for v in sm().describe_endpoint(EndpointName=name)["ProductionVariants"]}


def test_shift_weights(aws, received, capsys):
    name, _ = start_endpoint(aws, {"champion": 1.0, "challenger": 1.0})
    code, variants, _ = run(capsys, "--name", name, "--weight", "champion=0.2", "--weight", "challenger=0.8")
    assert code == 0
    [request] = received("UpdateEndpointWeightsAndCapacities")
    assert request["body"] == {"EndpointName": name, "DesiredWeightsAndCapacities": [
        {"VariantName": "challenger", "DesiredWeight": 0.8}, {"VariantName": "champion", "DesiredWeight": 0.2}]}
    live = live_variants(name)
    assert live["champion"]["DesiredWeight"] == pytest.approx(0.2)
    assert live["challenger"]["DesiredWeight"] == pytest.approx(0.8)
    printed = {v["VariantName"]: v["DesiredWeight"] for v in variants}
    assert printed == pytest.approx({"champion": 0.2, "challenger": 0.8})


@pytest.mark.parametrize("args, words", [
    (["--weight", "nobody=1"], "no variant nobody"),
    (["--weight", "champion=0", "--weight", "challenger=0"], "weight would be 0"),
    (["--instance-count", "champion=2", "--instance-count", "challenger=2"], "one variant at a time"),
    (["--weight", "champion=1", "--weight", "champion=2"], "named twice"),
    (["--model-data", NEW_DATA, "--variant", "nobody"], "no variant 'nobody'"),
    (["--model-data", NEW_DATA], "several variants"),
    (["--model-data", "ic-out/model.tar.gz", "--variant", "champion"], "S3 URI"),
    (["--model-data", NEW_DATA, "--variant", "champion", *[f"--rollback-alarm=a{i}" for i in range(11)]], "at most 10"),
])
def test_refused_before_sending(aws, received, capsys, args, words):
    name, config = start_endpoint(aws, {"champion": 1.0, "challenger": 1.0})
    code, _, err = run(capsys, "--name", name, *args)
    assert code == 2 and words in err
    assert [r["operation"] for r in received() if r["operation"] in CHANGING] == []
    assert sm().describe_endpoint(EndpointName=name)["EndpointConfigName"] == config


def test_blue_green_copies_the_live_endpoint_and_tags_the_previous_config(aws, received, capsys):
    name, old_config = start_endpoint(aws, {"AllTraffic": None})
    # autoscaling grew the variant to 3 instances since deploy.py made the config with 1
    sm().update_endpoint_weights_and_capacities(EndpointName=name, DesiredWeightsAndCapacities=[
        {"VariantName": "AllTraffic", "DesiredInstanceCount": 3, "DesiredWeight": 1.0}])
    code, result, err = run(capsys, "--name", name, "--model-data", NEW_DATA, "--env", "TOP_K=3",
                            "--traffic", "canary:10:300", "--termination-wait", "120",
                            "--rollback-alarm", "ic-5xx", "--rollback-alarm", "ic-latency")
    assert code == 0, err
    new_config, new_model = result["EndpointConfigName"], result["ModelName"]
    assert result["PreviousEndpointConfigName"] == old_config

    [model] = received("CreateModel")
    assert model["body"] == {"ModelName": new_model, "ExecutionRoleArn": ROLE, "EnableNetworkIsolation": False,
                             "PrimaryContainer": {"Image": IMAGE, "ModelDataUrl": NEW_DATA,
                                                  "Environment": {"MODEL_SERVER_WORKERS": "2", "TOP_K": "3"}}}
    [config] = received("CreateEndpointConfig")
    assert config["body"]["EndpointConfigName"] == new_config
    assert config["body"]["ProductionVariants"] == [{
        "VariantName": "AllTraffic", "ModelName": new_model, "InstanceType": "ml.c5.xlarge",
        "InitialInstanceCount": 3, "InitialVariantWeight": 1.0, "ContainerStartupHealthCheckTimeoutInSeconds": 300}]
    assert config["body"]["Tags"] == [{"Key": PREVIOUS_CONFIG_TAG, "Value": old_config}]
    [update] = received("UpdateEndpoint")
    assert update["body"] == {"EndpointName": name, "EndpointConfigName": new_config, "DeploymentConfig": {
        "BlueGreenUpdatePolicy": {
            "TrafficRoutingConfiguration": {"Type": "CANARY", "WaitIntervalInSeconds": 300,
                                            "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 10}},
            "TerminationWaitInSeconds": 120},
        "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": "ic-5xx"}, {"AlarmName": "ic-latency"}]}}}

    endpoint = sm().describe_endpoint(EndpointName=name)
    assert endpoint["EndpointStatus"] == "InService" and endpoint["EndpointConfigName"] == new_config
    assert previous_config(sm(), new_config) == old_config and previous_config(sm(), old_config) is None
    assert "Updating" in err  # the progress lines


def test_blue_green_replaces_only_the_named_variant(aws, received, capsys):
    name, _ = start_endpoint(aws, {"champion": 0.9, "challenger": 0.1})
    code, result, _ = run(capsys, "--name", name, "--model-data", NEW_DATA, "--variant", "challenger",
                          "--image", NEW_IMAGE)
    assert code == 0
    [config] = received("CreateEndpointConfig")
    variants = {v["VariantName"]: v for v in config["body"]["ProductionVariants"]}
    assert variants["champion"]["ModelName"] == f"{name}-champion-0"
    assert variants["challenger"]["ModelName"] == result["ModelName"]
    assert (variants["champion"]["InitialVariantWeight"], variants["challenger"]["InitialVariantWeight"]) == (0.9, 0.1)
    assert received("CreateModel")[0]["body"]["PrimaryContainer"]["Image"] == NEW_IMAGE


def test_serverless_variant_keeps_its_serverless_config(aws, received, capsys):
    name = f"ic-{uuid.uuid4().hex[:8]}"
    serverless = {"MemorySizeInMB": 2048, "MaxConcurrency": 5}
    sm().create_model(ModelName=f"{name}-0", ExecutionRoleArn=ROLE,
                      PrimaryContainer={"Image": IMAGE, "ModelDataUrl": OLD_DATA})
    sm().create_endpoint_config(EndpointConfigName=f"{name}-0", ProductionVariants=[
        {"VariantName": "AllTraffic", "ModelName": f"{name}-0", "ServerlessConfig": serverless}])
    sm().create_endpoint(EndpointName=name, EndpointConfigName=f"{name}-0")
    code, result, _ = run(capsys, "--name", name, "--model-data", NEW_DATA, "--traffic", "canary:10:60")
    assert code == 0
    config = received("CreateEndpointConfig")[-1]  # the first is the test's own
    assert config["body"]["ProductionVariants"] == [
        {"VariantName": "AllTraffic", "ModelName": result["ModelName"], "ServerlessConfig": serverless}]
    assert run(capsys, "--name", name, "--rollback")[0] == 0
    assert "RetainAllVariantProperties" not in received("UpdateEndpoint")[-1]["body"]  # no instance counts to keep
    assert sm().describe_endpoint(EndpointName=name)["EndpointConfigName"] == f"{name}-0"


def test_failed_update_leaves_the_old_config_and_deletes_what_it_created(aws, received, capsys):
    name, old_config = start_endpoint(aws, {"AllTraffic": None})
    code, _, err = run(capsys, "--name", name, "--model-data", NEW_DATA, "--env", f"{FAIL_ENV}=ping failed")
    assert code == 1 and "ping failed" in err and old_config in err
    [config] = received("CreateEndpointConfig")
    new_config, new_model = config["body"]["EndpointConfigName"], received("CreateModel")[0]["body"]["ModelName"]
    endpoint = sm().describe_endpoint(EndpointName=name)
    assert endpoint["EndpointStatus"] == "InService" and endpoint["EndpointConfigName"] == old_config
    assert new_config not in config_names() and new_model not in model_names()
    assert old_config in config_names() and f"{name}-AllTraffic-0" in model_names()


@pytest.fixture
def update_endpoint_refused(monkeypatch):
    """SageMaker refuses every UpdateEndpoint (as it would one racing another update)."""
    refuse(monkeypatch, update_endpoint, "UpdateEndpoint", "ValidationException", "Cannot update in-progress endpoint")


def test_refused_update_deletes_the_new_config_and_model(aws, received, capsys, update_endpoint_refused):
    name, old_config = start_endpoint(aws, {"AllTraffic": None})
    code, _, err = run(capsys, "--name", name, "--model-data", NEW_DATA)
    assert code == 1 and "in-progress" in err
    new_config = received("CreateEndpointConfig")[0]["body"]["EndpointConfigName"]
    new_model = received("CreateModel")[0]["body"]["ModelName"]
    assert new_config not in config_names() and new_model not in model_names()
    assert sm().describe_endpoint(EndpointName=name)["EndpointConfigName"] == old_config


def test_ctrl_c_while_waiting_keeps_the_update_and_says_how_to_check(aws, received, capsys, monkeypatch):
    name, _ = start_endpoint(aws, {"AllTraffic": None})

    def interrupt(_):
        raise KeyboardInterrupt

    monkeypatch.setattr(update_endpoint.time, "sleep", interrupt)
    code, _, err = run(capsys, "--name", name, "--model-data", NEW_DATA)
    assert code == 130
    assert "does not stop it" in err and f"describe-endpoint --endpoint-name {name}" in err and "--rollback" in err
    new_config = received("CreateEndpointConfig")[0]["body"]["EndpointConfigName"]
    assert new_config in config_names()  # SageMaker is updating to it: it stays
    assert sm().describe_endpoint(EndpointName=name)["EndpointConfigName"] == new_config


def test_not_in_service_refused_with_nothing_created(aws, received, capsys):
    name, config = start_endpoint(aws, {"AllTraffic": None})
    sm().update_endpoint(EndpointName=name, EndpointConfigName=config)  # Updating until next described
    code, _, err = run(capsys, "--name", name, "--model-data", NEW_DATA)
    assert code == 2 and "Updating, not InService" in err
    assert received("CreateModel") == [] and received("CreateEndpointConfig") == []


def test_rollback_step_by_step_along_the_tags(aws, received, capsys):
    name, first = start_endpoint(aws, {"AllTraffic": None})
    _, second, _ = run(capsys, "--name", name, "--model-data", NEW_DATA)
    _, third, _ = run(capsys, "--name", name, "--model-data", "s3://ic-out/jobs/t-3/output/model.tar.gz")
    assert previous_config(sm(), third["EndpointConfigName"]) == second["EndpointConfigName"]

    code, result, err = run(capsys, "--name", name, "--rollback", "--cleanup")
    assert code == 0, err
    assert received("UpdateEndpoint")[-1]["body"] == {
        "EndpointName": name, "EndpointConfigName": second["EndpointConfigName"], "RetainAllVariantProperties": True,
        "DeploymentConfig": {"BlueGreenUpdatePolicy": {
            "TrafficRoutingConfiguration": {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 0},
            "TerminationWaitInSeconds": 0}}}
    assert result["RolledBackFrom"] == third["EndpointConfigName"]
    assert sm().describe_endpoint(EndpointName=name)["EndpointConfigName"] == second["EndpointConfigName"]
    # --cleanup: the config rolled back from and its model are gone, the one now serving stays
    assert third["EndpointConfigName"] not in config_names() and third["ModelName"] not in model_names()
    assert second["ModelName"] in model_names()

    code, _, err = run(capsys, "--name", name, "--rollback")
    assert code == 0
    assert sm().describe_endpoint(EndpointName=name)["EndpointConfigName"] == first
    assert second["EndpointConfigName"] in config_names() and "--cleanup deletes them" in err  # no --cleanup: kept

    code, _, err = run(capsys, "--name", name, "--rollback")
    assert code == 2 and "nothing to roll back to" in err


def test_rollback_without_previous_config_refused(aws, received, capsys):
    name, config = start_endpoint(aws, {"AllTraffic": None})
    code, _, err = run(capsys, "--name", name, "--rollback")
    assert code == 2 and f"endpoint config {config} names no previous config" in err
    assert received("UpdateEndpoint") == []


def test_dry_run_sends_nothing_and_the_emulator_accepts_its_requests(aws, received, capsys):
    name, old_config = start_endpoint(aws, {"AllTraffic": None})
    code, requests, _ = run(capsys, "--name", name, "--model-data", NEW_DATA, "--traffic", "linear:25:60",
                            "--dry-run")
    assert code == 0
    assert [r["operation"] for r in requests] == ["CreateModel", "CreateEndpointConfig", "UpdateEndpoint"]
    assert [r["operation"] for r in received() if r["operation"] in CHANGING] == []
    model, config, update = (r["request"] for r in requests)
    assert update["DeploymentConfig"]["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"]["LinearStepSize"] == {
        "Type": "CAPACITY_PERCENT", "Value": 25}
    sm().create_model(**model)
    sm().create_endpoint_config(**config)
    sm().update_endpoint(**update)
    sm().describe_endpoint(EndpointName=name)  # the emulator answers Updating once, then settles
    assert sm().describe_endpoint(EndpointName=name)["EndpointConfigName"] == config["EndpointConfigName"]
    assert previous_config(sm(), config["EndpointConfigName"]) == old_config


@pytest.mark.parametrize("args", [
    [], ["--rollback", "--weight", "a=1"], ["--model-data", NEW_DATA, "--rollback"],
    ["--weight", "a=1", "--variant", "a"], ["--weight", "a=-1"], ["--weight", "a"], ["--instance-count", "a=0"],
    ["--weight", "a=1", "--cleanup"],
    ["--rollback", "--termination-wait", "3601"], ["--rollback", "--traffic", "canary:60:60"],
])
def test_usage_errors(args):
    with pytest.raises(SystemExit) as exit_:
        update_endpoint.main(args)
    assert exit_.value.code == 2


def test_deploy_delete_takes_the_configs_kept_for_rollback_and_their_models(aws, received, capsys):
    from image_classifier.launch import deploy

    name, first = start_endpoint(aws, {"champion": 1.0, "challenger": 1.0})
    _, second, _ = run(capsys, "--name", name, "--model-data", NEW_DATA, "--variant", "challenger")
    _, third, _ = run(capsys, "--name", name, "--model-data", "s3://ic-out/jobs/t-3/output/model.tar.gz",
                      "--variant", "challenger")
    configs = [third["EndpointConfigName"], second["EndpointConfigName"], first]
    assert set(configs) <= config_names()

    assert deploy.main(["--region", "us-east-1", "--name", name, "--delete", "--no-wait"]) == 0
    assert [r["body"]["EndpointConfigName"] for r in received("DeleteEndpointConfig")] == configs
    models = [r["body"]["ModelName"] for r in received("DeleteModel")]
    # champion's model serves in all three configs: deleted once
    assert sorted(models) == sorted({f"{name}-champion-0", f"{name}-challenger-0", second["ModelName"],
                                     third["ModelName"]})
    assert not set(configs) & config_names() and not set(models) & model_names()
