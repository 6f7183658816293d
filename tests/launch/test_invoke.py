"""scripts/predict.py: InvokeEndpoint against moto_server's canned answers, and the container's errors."""

import base64
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
    import sklearn.datasets
    from pathlib import Path

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
        assert invoke.invoke(runtime, "ic", photo, top_k=3) == PREDICTIONS


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
