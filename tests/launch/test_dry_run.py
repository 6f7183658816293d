"""launch/dry_run.py: a dry run records the requests that change something, sends none, and leaves os.environ be."""

import os

import boto3
import pytest

from image_classifier.launch import tune
from image_classifier.launch.dry_run import DryRun, Stopped
from tests.launch.common import launch

ENDPOINT = {"EndpointName": "ic-never", "EndpointConfigName": "ic-never-config"}


def test_recorded_requests_answer_empty_and_reads_go_out(aws, received):
    session = boto3.Session(region_name="us-east-1")
    dry_run = DryRun(session, {"sagemaker": ("CreateEndpoint",)})
    sm = session.client("sagemaker")
    sm.create_endpoint(**ENDPOINT)
    assert "ic-never" not in [e["EndpointName"] for e in sm.list_endpoints()["Endpoints"]]  # a read goes out
    assert [(r.operation, r.params) for r in dry_run.requests] == [("CreateEndpoint", ENDPOINT)]
    assert [r["operation"] for r in received()] == ["ListEndpoints"]


def test_stop_raises_after_recording(aws, received):
    session = boto3.Session(region_name="us-east-1")
    dry_run = DryRun(session, {"sagemaker": ("CreateEndpoint",)}, stop=True)
    with pytest.raises(Stopped):
        session.client("sagemaker").create_endpoint(**ENDPOINT)
    assert dry_run.params() == [ENDPOINT] and received() == []


def test_a_request_botocore_refuses_is_not_recorded(aws, received):
    session = boto3.Session(region_name="us-east-1")
    dry_run = DryRun(session, {"sagemaker": ("CreateEndpoint",)})
    with pytest.raises(Exception, match="EndpointConfigName"):
        session.client("sagemaker").create_endpoint(EndpointName="ic-never")
    assert dry_run.requests == [] and received() == []


def test_the_sdks_role_check_is_answered_without_touching_the_environment(aws, received, capsys, monkeypatch):
    """moto answers IAM's SimulatePrincipalPolicy with a 500: a dry run of the SDK's ModelTrainer works
    without SAGEMAKER_VALIDATE_ROLE because it answers the check itself, and sets no variable."""
    monkeypatch.delenv("SAGEMAKER_VALIDATE_ROLE")
    before = dict(os.environ)
    code, request = launch(tune.main, capsys, "--dry-run", "--job-name", "ic-dry-env")
    assert code == 0 and request["HyperParameterTuningJobName"] == "ic-dry-env"
    assert dict(os.environ) == before
    assert not [r for r in received() if r["operation"] == "CreateHyperParameterTuningJob" or "iam" in r["url"]]
