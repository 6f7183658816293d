"""scripts/predict.py: InvokeEndpoint against moto_server's canned answers, and the container's errors."""

import base64
import contextlib
import json

import boto3
import pytest
import requests
from botocore.stub import Stubber

from image_classifier.launch import invoke

PREDICTIONS = [{"label": "Affenpinscher", "class_id": 0, "probability": 0.93},
               {"label": "Afghan_hound", "class_id": 1, "probability": 0.05}]


@pytest.fixture
def photo(tmp_path):
    from pathlib import Path

    import sklearn.datasets

    path = tmp_path / "photo.jpg"
    path.write_bytes((Path(sklearn.datasets.__file__).parent / "images" / "china.jpg").read_bytes())
    return path


def test_prints_the_endpoints_top_k(aws, capsys, photo, tmp_path):
    """moto answers InvokeEndpoint with results queued through its moto-api (no container runs).

    moto keys its canned answers on a JSON dump of the request body, which fails (500) for a
    binary body such as a JPEG: through moto the image goes as a JSON file of base64 instances;
    the binary request is checked with a stub below.
    """
    requests.post(f"{aws}/moto-api/static/sagemaker/endpoint-results", timeout=10, json={
        "account_id": "123456789012", "region": "us-east-1",
        "results": [{"Body": json.dumps({"predictions": [PREDICTIONS]}), "ContentType": "application/json"}]})
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"instances": [{"b64": base64.b64encode(photo.read_bytes()).decode()}]}))
    assert invoke.main([str(request), "--endpoint", "ic-endpoint", "--region", "us-east-1", "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[1:] == ["Affenpinscher", "0", "0.9300"] and len(lines) == 3


def test_sends_the_image_with_its_type_and_top_k(photo):
    runtime = boto3.client("sagemaker-runtime", region_name="us-east-1", aws_access_key_id="x",
                           aws_secret_access_key="x")
    body = type("Body", (), {"read": lambda self: json.dumps({"predictions": PREDICTIONS}).encode()})()
    with Stubber(runtime) as stub:
        stub.add_response("invoke_endpoint", {"Body": body, "ContentType": "application/json"},
                          {"EndpointName": "ic", "Body": photo.read_bytes(), "ContentType": "image/jpeg",
                           "Accept": "application/json", "CustomAttributes": "top_k=3"})
        assert invoke.invoke(runtime, "ic", photo, top_k=3).predictions == PREDICTIONS


def test_a_model_error_shows_the_containers_message(photo, capsys, monkeypatch):
    """moto cannot make a container fail: the ModelError is stubbed with AWS's fields."""
    runtime = boto3.client("sagemaker-runtime", region_name="us-east-1", aws_access_key_id="x",
                           aws_secret_access_key="x")
    stub = Stubber(runtime)
    stub.add_client_error("invoke_endpoint", service_error_code="ModelError", http_status_code=424,
                          service_message="Received client error (415) from primary",
                          modeled_fields={"OriginalStatusCode": 415,
                                          "OriginalMessage": '{"error": "unsupported Content-Type"}'})
    stub.activate()
    monkeypatch.setattr(invoke.boto3, "Session", lambda **_: type("S", (), {"client": lambda self, name: runtime})())
    assert invoke.main([str(photo), "--endpoint", "ic"]) == 1
    assert "the model container answered 415: unsupported Content-Type" in capsys.readouterr().err


def test_dry_run_prints_the_request(photo, capsys):
    assert invoke.main([str(photo), "--endpoint", "ic", "--top-k", "3", "--dry-run"]) == 0
    request = json.loads(capsys.readouterr().out)
    assert request["ContentType"] == "image/jpeg" and request["CustomAttributes"] == "top_k=3"
    assert str(photo.stat().st_size) in request["Body"]


def queue(aws, *results):
    requests.post(f"{aws}/moto-api/static/sagemaker/endpoint-results", timeout=10, json={
        "account_id": "123456789012", "region": "us-east-1", "results": list(results)})


def invocations(received, endpoint: str) -> list[dict]:
    """The InvokeEndpoint requests the emulator received for `endpoint` (a REST call: no X-Amz-Target)."""
    return [r for r in received() if r["url"].split("?")[0].endswith(f"/endpoints/{endpoint}/invocations")]


def header(request: dict, name: str) -> str | None:
    return next((v for k, v in request["headers"].items() if k.lower() == name.lower()), None)


def json_file(path, size: int):
    """A JSON instances file of exactly `size` bytes (moto keys its answers on a JSON dump of the body)."""
    head = b'{"instances": []}'
    path.write_bytes(head + b" " * (size - len(head)))
    return path


def test_target_variant_goes_as_its_header_and_the_answering_variant_is_shown(aws, received, capsys, tmp_path):
    queue(aws, {"Body": json.dumps({"predictions": [PREDICTIONS]}), "ContentType": "application/json",
                "InvokedProductionVariant": "new"})
    request = json_file(tmp_path / "request.json", 1000)
    assert invoke.main([str(request), "--endpoint", "ic-ab-invoke", "--region", "us-east-1",
                        "--target-variant", "new"]) == 0
    sent = invocations(received, "ic-ab-invoke")
    assert len(sent) == 1 and header(sent[0], "X-Amzn-SageMaker-Target-Variant") == "new"
    assert not received("DescribeEndpoint")  # a small body asks nothing more
    out, err = capsys.readouterr()
    assert "answered by variant new" in err and "Affenpinscher" in out


def test_a_body_over_6_mb_is_refused_unsent(aws, received, capsys, tmp_path):
    image = tmp_path / "huge.jpg"
    with open(image, "wb") as f:
        f.truncate(invoke.REALTIME_MAX_BYTES + 1)
    assert invoke.main([str(image), "--endpoint", "ic-huge", "--region", "us-east-1"]) == 2
    err = capsys.readouterr().err
    assert "6,291,457 bytes" in err and "6 MB (6,291,456 bytes)" in err and "resize or recompress" in err
    assert received() == []


def serverless_endpoint(name: str):
    sm = boto3.client("sagemaker", region_name="us-east-1")
    sm.create_model(ModelName=name, ExecutionRoleArn="arn:aws:iam::123456789012:role/SageMakerRole",
                    PrimaryContainer={"Image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/serve:1",
                                      "ModelDataUrl": "s3://ic-out/model.tar.gz"})
    sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[{
        "VariantName": "AllTraffic", "ModelName": name,
        "ServerlessConfig": {"MemorySizeInMB": 2048, "MaxConcurrency": 5}}])
    sm.create_endpoint(EndpointName=name, EndpointConfigName=name)


def test_a_body_over_4_mb_is_refused_for_a_serverless_endpoint_as_describe_endpoint_says(aws, received, capsys,
                                                                                         tmp_path):
    serverless_endpoint("ic-sl-payload")
    request = json_file(tmp_path / "request.json", invoke.SERVERLESS_MAX_BYTES + 1)
    assert invoke.main([str(request), "--endpoint", "ic-sl-payload", "--region", "us-east-1"]) == 2
    err = capsys.readouterr().err
    assert "4,194,305 bytes" in err and "4 MB (4,194,304 bytes) of serverless endpoint ic-sl-payload" in err
    assert [r["body"] for r in received("DescribeEndpoint")] == [{"EndpointName": "ic-sl-payload"}]
    assert invocations(received, "ic-sl-payload") == []


# an instance endpoint, and one DescribeEndpoint cannot find (as when it is denied): both get the body
@pytest.mark.parametrize("endpoint", ["ic-rt-payload", "ic-nowhere"])
def test_a_body_over_4_mb_goes_to_an_endpoint_not_known_serverless(aws, received, capsys, tmp_path, endpoint):
    if endpoint == "ic-rt-payload":
        sm = boto3.client("sagemaker", region_name="us-east-1")
        sm.create_model(ModelName=endpoint, ExecutionRoleArn="arn:aws:iam::123456789012:role/SageMakerRole",
                        PrimaryContainer={"Image": "123456789012.dkr.ecr.us-east-1.amazonaws.com/serve:1"})
        sm.create_endpoint_config(EndpointConfigName=endpoint, ProductionVariants=[{
            "VariantName": "AllTraffic", "ModelName": endpoint, "InstanceType": "ml.m5.large",
            "InitialInstanceCount": 1}])
        sm.create_endpoint(EndpointName=endpoint, EndpointConfigName=endpoint)
    queue(aws, {"Body": json.dumps({"predictions": [PREDICTIONS]}), "ContentType": "application/json"})
    request = json_file(tmp_path / "request.json", invoke.SERVERLESS_MAX_BYTES + 1)
    assert invoke.main([str(request), "--endpoint", endpoint, "--region", "us-east-1"]) == 0
    assert len(received("DescribeEndpoint")) == 1 and len(invocations(received, endpoint)) == 1


class FailingSageMaker:
    def describe_endpoint(self, **_):
        raise AssertionError("DescribeEndpoint is only for bodies over 4 MB")


@pytest.mark.parametrize("size, refused", [
    (invoke.SERVERLESS_MAX_BYTES, False),
    (invoke.REALTIME_MAX_BYTES + 1, True),
])
def test_check_payload_asks_nothing_up_to_4_mb_or_over_6_mb(tmp_path, size, refused):
    image = tmp_path / "photo.jpg"
    with open(image, "wb") as f:
        f.truncate(size)
    with pytest.raises(invoke.PayloadTooLarge) if refused else contextlib.nullcontext():
        invoke.check_payload(image, "ic", FailingSageMaker())
