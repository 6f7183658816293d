"""scripts/register.py and deploy.py's registry sources against moto_server: register, approve,
deploy the latest Approved package, predict; dry runs and refusals."""

import json
import random

import boto3
import pytest
import requests
from botocore.exceptions import ClientError

from image_classifier.launch import deploy, invoke, model_packages, registry
from image_classifier.serving import codec, content_types
from tests.launch.common import ROLE, tar_gz

IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/image-classifier-serve:abc1234"
BUCKET = "ic-registry"
REPORT = {"channel": "test", "images": 270, "classes": 10, "accuracy": 0.93, "macro_f1": 0.92}
PREDICTIONS = [{"label": "Affenpinscher", "class_id": 0, "probability": 0.93}]


def sm():
    return boto3.client("sagemaker", region_name="us-east-1")


def s3():
    return boto3.client("s3", region_name="us-east-1")


def training_job(name: str, report: dict | None = REPORT) -> str:
    """A Completed training job in the emulator, its model.tar.gz and its output.tar.gz (holding the
    evaluation report `report`, and a debug tensor before it, as a debug job's does) in S3;
    returns its S3ModelArtifacts."""
    try:
        s3().create_bucket(Bucket=BUCKET)
    except ClientError:
        pass
    sm().create_training_job(
        TrainingJobName=name, RoleArn=ROLE,
        AlgorithmSpecification={"TrainingImage": IMAGE, "TrainingInputMode": "File"},
        OutputDataConfig={"S3OutputPath": f"s3://{BUCKET}/jobs"}, StoppingCondition={"MaxRuntimeInSeconds": 60},
        ResourceConfig={"InstanceType": "ml.m5.large", "InstanceCount": 1, "VolumeSizeInGB": 10})
    model_data = sm().describe_training_job(TrainingJobName=name)["ModelArtifacts"]["S3ModelArtifacts"]
    assert model_data == f"s3://{BUCKET}/jobs/{name}/output/model.tar.gz"
    s3().put_object(Bucket=BUCKET, Key=f"jobs/{name}/output/model.tar.gz", Body=tar_gz({"model.pt": b"weights"}))
    files = {"debug/tensors/000.tfevents": b"0" * 1000, "metrics.json": b'{"epochs": []}'}
    if report is not None:
        files["evaluation/metrics.json"] = json.dumps(report).encode()
    s3().put_object(Bucket=BUCKET, Key=f"jobs/{name}/output/output.tar.gz", Body=tar_gz(files))
    return model_data


def run(main, capsys, *args) -> tuple[int, list]:
    code = main(["--region", "us-east-1", *args])
    out = capsys.readouterr().out
    return code, json.loads(out[out.index("["): out.rindex("]") + 1]) if code == 0 else []


def register(capsys, *args) -> dict:
    code, result = run(registry.main, capsys, "--image", IMAGE, *args)
    assert code == 0
    return result[0]


def test_content_types_are_the_codecs():
    assert tuple(codec._DECODERS) == content_types.REQUEST_TYPES
    assert tuple(codec._ENCODERS) == content_types.RESPONSE_TYPES


def test_register_approve_deploy_the_latest_approved_and_predict(aws, received, capsys, tmp_path):
    model_data = training_job("reg-flow-1")
    first = register(capsys, "--group", "ic-flow", "--training-job", "reg-flow-1", "--description", "resnet18")
    assert first["ModelApprovalStatus"] == "PendingManualApproval"
    package = sm().describe_model_package(ModelPackageName=first["ModelPackageArn"])
    spec = package["InferenceSpecification"]
    assert spec["Containers"] == [{"Image": IMAGE, "ModelDataUrl": model_data}]
    assert spec["SupportedContentTypes"] == ["image/jpeg", "image/png", "application/x-image",
                                             "application/octet-stream", "application/x-npy", "application/json"]
    assert spec["SupportedResponseMIMETypes"] == ["application/json", "application/x-npy", "image/png"]
    assert spec["SupportedRealtimeInferenceInstanceTypes"][0] == deploy.INSTANCE_TYPE
    assert spec["SupportedTransformInstanceTypes"] == list(registry.TRANSFORM_INSTANCE_TYPES)
    metrics = f"s3://{BUCKET}/jobs/reg-flow-1/output/metrics.json"
    assert package["ModelMetrics"] == {"ModelQuality": {"Statistics": {"ContentType": "application/json",
                                                                       "S3Uri": metrics}}}
    uploaded = s3().get_object(Bucket=BUCKET, Key="jobs/reg-flow-1/output/metrics.json")["Body"].read()
    assert json.loads(uploaded) == REPORT  # the evaluation report, not the job's epoch figures
    assert package["ModelPackageDescription"] == "resnet18"
    assert package["CustomerMetadataProperties"] == {"TrainingJobName": "reg-flow-1"}

    deploying = ["--name", "ic-from-registry", "--role", ROLE, "--latest-approved", "ic-flow"]
    assert deploy.main(["--region", "us-east-1", *deploying]) == 2  # nothing Approved yet
    assert "holds no Approved model package" in capsys.readouterr().err and not received("CreateModel")

    code, approved = run(registry.main, capsys, "--approve-arn", first["ModelPackageArn"], "--reason", "F1 0.92")
    assert code == 0 and approved[0]["ModelApprovalStatus"] == "Approved"
    package = sm().describe_model_package(ModelPackageName=first["ModelPackageArn"])
    assert package["ModelApprovalStatus"] == "Approved" and package["ApprovalDescription"] == "F1 0.92"
    training_job("reg-flow-2")
    second = register(capsys, "--group", "ic-flow", "--training-job", "reg-flow-2")  # newer, pending
    assert second["ModelPackageArn"] != first["ModelPackageArn"]

    code, result = run(deploy.main, capsys, *deploying)
    assert code == 0
    config = sm().describe_endpoint_config(EndpointConfigName=result[0]["EndpointConfigName"])
    model = sm().describe_model(ModelName=config["ProductionVariants"][0]["ModelName"])
    assert model["PrimaryContainer"] == {"ModelPackageName": first["ModelPackageArn"]}  # not the pending one
    container = sm().describe_model_package(ModelPackageName=model["PrimaryContainer"]["ModelPackageName"])[
        "InferenceSpecification"]["Containers"][0]
    assert (container["Image"], container["ModelDataUrl"]) == (IMAGE, model_data)
    assert sm().describe_endpoint(EndpointName="ic-from-registry")["EndpointStatus"] == "InService"

    requests.post(f"{aws}/moto-api/static/sagemaker/endpoint-results", timeout=10, json={
        "account_id": "123456789012", "region": "us-east-1",
        "results": [{"Body": json.dumps({"predictions": [PREDICTIONS]}), "ContentType": "application/json"}]})
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"instances": []}))
    assert invoke.main([str(request), "--endpoint", "ic-from-registry", "--region", "us-east-1"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[1:] == ["Affenpinscher", "0", "0.9300"]


def test_the_latest_approved_is_the_newest_and_a_rejected_one_is_not_deployed(aws, received, capsys):
    arns = []
    for job in ("reg-new-1", "reg-new-2", "reg-new-3"):
        training_job(job)
        arns.append(register(capsys, "--group", "ic-newest", "--training-job", job, "--approve")["ModelPackageArn"])
    code, rejected = run(registry.main, capsys, "--reject-arn", arns[2], "--reason", "worse on the new breeds")
    assert code == 0 and rejected[0]["ModelApprovalStatus"] == "Rejected"
    assert sm().describe_model_package(ModelPackageName=arns[2])["ModelApprovalStatus"] == "Rejected"
    update = {"ModelPackageArn": arns[2], "ModelApprovalStatus": "Rejected",
              "ApprovalDescription": "worse on the new breeds"}
    assert [r["body"] for r in received("UpdateModelPackage")] == [update]
    assert model_packages.latest_approved(sm(), "ic-newest") == arns[1]
    assert deploy.main(["--region", "us-east-1", "--role", ROLE, "--model-package", arns[2]]) == 2
    assert "is Rejected, not Approved" in capsys.readouterr().err and not received("CreateModel")


def test_the_latest_approved_is_found_past_pages_of_pending_ones(aws, received, capsys):
    # the emulator pages before it filters (as AWS may): the first pages hold only the newer pending packages
    training_job("reg-paged")
    approved = register(capsys, "--group", "ic-paged", "--training-job", "reg-paged", "--approve")["ModelPackageArn"]
    for _ in range(3):
        register(capsys, "--group", "ic-paged", "--training-job", "reg-paged")
    first = sm().list_model_packages(ModelPackageGroupName="ic-paged", ModelApprovalStatus="Approved",
                                     SortBy="CreationTime", SortOrder="Descending", MaxResults=2)
    assert first["ModelPackageSummaryList"] == [] and first["NextToken"]  # what one request alone would see
    listed = len(received("ListModelPackages"))
    assert model_packages.latest_approved(sm(), "ic-paged", page_size=2) == approved
    assert len(received("ListModelPackages")) - listed == 2


def test_the_group_is_made_once_and_the_report_uploaded_once(aws, received, capsys):
    training_job("reg-once")
    for version in (1, 2):
        arn = register(capsys, "--group", "ic-once", "--training-job", "reg-once")["ModelPackageArn"]
        assert arn.endswith(f"model-package/ic-once/{version}")
    assert len(received("CreateModelPackageGroup")) == 1 and len(received("CreateModelPackage")) == 2
    puts = [r for r in received() if r["url"].endswith("/output/metrics.json") and r["body"]]
    assert len(puts) == 1


def test_model_data_without_a_report_beside_it_needs_metrics(aws, received, capsys, tmp_path):
    s3().create_bucket(Bucket="ic-elsewhere")
    s3().put_object(Bucket="ic-elsewhere", Key="models/v7/model.tar.gz", Body=b"model")
    args = ["--group", "ic-elsewhere", "--image", IMAGE, "--model-data", "s3://ic-elsewhere/models/v7/model.tar.gz"]
    assert registry.main(["--region", "us-east-1", *args]) == 1
    assert "give the job's metrics.json with --metrics FILE" in capsys.readouterr().err
    assert not received("CreateModelPackage")
    report = tmp_path / "metrics.json"
    report.write_text(json.dumps(REPORT))
    code, result = run(registry.main, capsys, *args, "--metrics", str(report))
    assert code == 0 and result[0]["ModelMetrics"] == "s3://ic-elsewhere/models/v7/metrics.json"
    assert json.loads(s3().get_object(Bucket="ic-elsewhere", Key="models/v7/metrics.json")["Body"].read()) == REPORT


def test_a_job_without_an_evaluation_report_is_not_registered(aws, received, capsys):
    training_job("reg-no-report", report=None)
    assert registry.main(["--region", "us-east-1", "--group", "ic-none", "--image", IMAGE,
                          "--training-job", "reg-no-report"]) == 1
    assert "holds no evaluation/metrics.json" in capsys.readouterr().err
    assert not received("CreateModelPackage")


NOISE = random.Random(0).randbytes(20_000)  # a debug tensor gzip cannot shrink: a cut archive ends inside it


@pytest.mark.parametrize("archive", [
    b"not a gzip file", tar_gz({"debug/000.tfevents": NOISE, "evaluation/metrics.json": b"{}"})[:5000]],
    ids=["not-gzip", "truncated"])
def test_a_corrupt_output_archive_is_one_line(aws, received, capsys, archive):
    training_job("reg-corrupt")
    s3().put_object(Bucket=BUCKET, Key="jobs/reg-corrupt/output/output.tar.gz", Body=archive)
    assert registry.main(["--region", "us-east-1", "--group", "ic-corrupt", "--image", IMAGE,
                          "--training-job", "reg-corrupt"]) == 1
    err = capsys.readouterr().err
    assert "output.tar.gz is not a readable .tar.gz" in err and "Traceback" not in err
    assert not received("CreateModelPackage")


def test_a_package_without_a_model_tar_gz_is_not_deployed(aws, received, capsys):
    sm().create_model_package_group(ModelPackageGroupName="ic-source")
    source = {"S3DataSource": {"S3Uri": f"s3://{BUCKET}/uncompressed/", "S3DataType": "S3Prefix",
                               "CompressionType": "None"}}
    arn = sm().create_model_package(
        ModelPackageGroupName="ic-source", ModelApprovalStatus="Approved",
        InferenceSpecification={"Containers": [{"Image": IMAGE, "ModelDataSource": source}],
                                "SupportedContentTypes": ["image/jpeg"],
                                "SupportedResponseMIMETypes": ["application/json"]})["ModelPackageArn"]
    assert deploy.main(["--region", "us-east-1", "--role", ROLE, "--model-package", arn]) == 2
    assert "has no ModelDataUrl" in capsys.readouterr().err and not received("CreateModel")


def test_dry_run_sends_nothing_and_the_emulator_accepts_its_requests(aws, received, capsys):
    training_job("reg-dry")
    code, sent = run(registry.main, capsys, "--group", "ic-dry", "--image", IMAGE, "--training-job", "reg-dry",
                     "--dry-run")
    assert code == 0 and list(sent[0]) == ["ModelPackageGroupName", "ModelPackageGroupDescription"]
    assert not received("CreateModelPackageGroup") and not received("CreateModelPackage")
    with pytest.raises(ClientError):
        s3().head_object(Bucket=BUCKET, Key="jobs/reg-dry/output/metrics.json")  # not uploaded
    with pytest.raises(ClientError):
        sm().describe_model_package_group(ModelPackageGroupName="ic-dry")
    group, package = sent
    assert package["ModelApprovalStatus"] == "PendingManualApproval"
    sm().create_model_package_group(**group)
    arn = sm().create_model_package(**package)["ModelPackageArn"]
    code, sent = run(registry.main, capsys, "--approve-arn", arn, "--dry-run")
    assert code == 0 and sent == [{"ModelPackageArn": arn, "ModelApprovalStatus": "Approved"}]
    assert not received("UpdateModelPackage")
    assert sm().describe_model_package(ModelPackageName=arn)["ModelApprovalStatus"] == "PendingManualApproval"


ARN = "arn:aws:sagemaker:us-east-1:123456789012:model-package/ic-bad/1"
# model package ARNs UpdateModelPackage's ModelPackageArn takes and DescribeModelPackage's ModelPackageName does not
NOT_NAMES = [ARN.replace("ic-bad", "ic_bad"), ARN.replace("ic-bad", "ic-bad-"), ARN.replace("ic-bad", "m" * 64),
             ARN.replace("/1", "/1/2")]
REGISTER = ["--group", "ic-bad", "--image", IMAGE, "--training-job", "t-1"]


@pytest.mark.parametrize("main, args, words", [
    (registry.main, ["--group", "ic-bad", "--training-job", "t-1"], "--image is needed"),
    (registry.main, ["--group", "ic_bad", "--image", IMAGE, "--training-job", "t-1"], "model package group name"),
    (registry.main, ["--group", "ic-bad", "--image", IMAGE], "give --training-job JOB or --model-data"),
    (registry.main, ["--group", "ic-bad", "--image", IMAGE, "--model-data", "s3://b/model.pt"], "model.tar.gz"),
    (registry.main, [*REGISTER, "--metrics", "/nowhere/metrics.json"], "no such file"),
    (registry.main, [*REGISTER, "--reason", "why"], "--reason goes with"),
    (registry.main, [*REGISTER, "--realtime-instance-type", "ml.m5.huge"], "offers no ml.m5.huge"),
    (registry.main, [*REGISTER, "--transform-instance-type", "ml.t2.medium"], "offers no ml.t2.medium"),
    (registry.main, ["--approve-arn", "ic-bad/1"], "not a model package ARN"),
    *[(main, [flag, arn], "not a model package ARN") for arn in NOT_NAMES
      for main, flag in ((registry.main, "--approve-arn"), (registry.main, "--reject-arn"))],
    *[(deploy.main, ["--role", ROLE, "--model-package", arn], "not a model package ARN") for arn in NOT_NAMES],
    (registry.main, ["--reject-arn", ARN, "--image", IMAGE], "--image only go with --group"),
    (registry.main, ["--approve-arn", ARN, "--approve"], "--approve only go with --group"),
    (deploy.main, ["--role", ROLE, "--model-package", "arn:aws:sagemaker:us-east-1:1:model/x"], "not a model package"),
    (deploy.main, ["--role", ROLE, "--latest-approved", "ic_bad"], "model package group name"),
    (deploy.main, ["--role", ROLE, "--image", IMAGE, "--latest-approved", "ic-bad"], "leave out --image"),
    (deploy.main, ["--latest-approved", "ic-bad"], "--role is needed"),
    (deploy.main, ["--role", ROLE, "--latest-approved", "ic-bad", "--autoscale", "1:2"], "--target-invocations"),
])
def test_bad_arguments_are_refused_before_any_request(aws, received, capsys, main, args, words):
    assert main(["--region", "us-east-1", *args]) == 2
    assert words in capsys.readouterr().err
    assert received() == []


def test_one_action_at_a_time(capsys):
    with pytest.raises(SystemExit) as exit_:
        registry.main(["--group", "g", "--approve-arn", ARN])
    assert exit_.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
