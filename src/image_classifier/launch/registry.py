"""Register a trained model in SageMaker's Model Registry, or approve or reject a registered one.

`--group NAME` makes the model package group if it is missing (CreateModelPackageGroup), then a
model package in it (CreateModelPackage): the serving image and the model data, the content
types the server reads and the Accept types it writes (serving/content_types.py), the instance
types it is meant for (real-time and transform), and ModelMetrics whose ModelQuality statistics
are the training job's evaluation report, `metrics.json`. The package waits for a person
(PendingManualApproval) unless `--approve`. `--approve-arn ARN` and `--reject-arn ARN` set the
approval status later (UpdateModelPackage); `deploy.py --latest-approved GROUP` deploys the newest
Approved package (launch/model_packages.py).

Where metrics.json comes from: the training job writes its evaluation report to
`output/data/evaluation/metrics.json` (training/evaluation.py, evaluation/report.py), and SageMaker
uploads `output/data` only packed, as `output.tar.gz` beside `model.tar.gz`
(`s3://BUCKET/PREFIX/JOB/output/`). ModelMetrics needs the JSON file itself in S3, so the
launcher reads that one member from output.tar.gz (streamed: a debug job's archive holds
hundreds of MB of tensors it does not keep) and uploads it as `metrics.json` beside
`model.tar.gz`, where a re-registration finds it and uploads nothing. `--metrics FILE` gives a
local report instead (e.g. from a local training run).
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import tarfile
import zlib
from pathlib import Path
from typing import Any

import boto3
import botocore.session
from botocore.exceptions import ClientError

from image_classifier.evaluation import REPORT_DIR
from image_classifier.evaluation.report import METRICS_FILE
from image_classifier.launch import model_packages, variants
from image_classifier.launch.batch_transform import INSTANCE_TYPE as TRANSFORM_INSTANCE_TYPE
from image_classifier.launch.deploy import INSTANCE_TYPE, model_data_of
from image_classifier.launch.dry_run import DryRun
from image_classifier.launch.exit_codes import FAILED, LAUNCHER, exit_on, one_line
from image_classifier.launch.model_packages import APPROVED, PENDING, REJECTED
from image_classifier.launch.upload import parse_s3_uri
from image_classifier.serving import content_types

logger = logging.getLogger(__name__)

# what a dry run records instead of sending (the metrics.json upload is skipped and logged)
CHANGING = {"sagemaker": ("CreateModelPackageGroup", "CreateModelPackage", "UpdateModelPackage")}
OUTPUT_ARCHIVE = "output.tar.gz"  # the job's output/data, as SageMaker uploads it beside model.tar.gz
REPORT_MEMBER = f"{REPORT_DIR}/{METRICS_FILE}"  # the evaluation report's figures, inside output.tar.gz
# CPU instances the package is registered for (the server runs on CPUs; OpenVINO int8 wants AVX-512
# VNNI: m5/c5 have it); deploy.py's default first, then batch_transform.py's
REALTIME_INSTANCE_TYPES = (INSTANCE_TYPE, TRANSFORM_INSTANCE_TYPE, "ml.c5.xlarge", "ml.c5.2xlarge")
TRANSFORM_INSTANCE_TYPES = (TRANSFORM_INSTANCE_TYPE, "ml.m5.large", "ml.c5.xlarge", "ml.c5.2xlarge")
REGISTER_ONLY = ("training_job", "model_data", "image", "description", "metrics", "realtime_instance_type",
                 "transform_instance_type")


class RegistryError(RuntimeError):
    """What the registration needs is not there (no evaluation report beside the model)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="register.py", description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--group", metavar="NAME", help="register a model package in this model package group "
                                                        "(made if missing)")
    action.add_argument("--approve-arn", metavar="ARN", help="set this model package's status to Approved")
    action.add_argument("--reject-arn", metavar="ARN", help="set this model package's status to Rejected")
    parser.add_argument("--region", default=None, help="AWS region (default: the AWS configuration's)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--training-job", metavar="JOB", help="register this training job's model artifacts")
    source.add_argument("--model-data", metavar="S3_URI", help="register this s3://.../model.tar.gz")
    parser.add_argument("--image", help="serving image URI in ECR (scripts/build_and_push.sh)")
    parser.add_argument("--approve", action="store_true",
                        help="register as Approved (default: PendingManualApproval, for a person to approve)")
    parser.add_argument("--description", help="the model package's description")
    parser.add_argument("--metrics", type=Path, metavar="FILE",
                        help=f"a local evaluation report {METRICS_FILE} to register (default: {REPORT_MEMBER} "
                             f"of the {OUTPUT_ARCHIVE} beside the model data)")
    parser.add_argument("--realtime-instance-type", action="append", metavar="TYPE",
                        help=f"an instance type for real-time endpoints, repeatable "
                             f"(default: {' '.join(REALTIME_INSTANCE_TYPES)})")
    parser.add_argument("--transform-instance-type", action="append", metavar="TYPE",
                        help=f"an instance type for batch transform, repeatable "
                             f"(default: {' '.join(TRANSFORM_INSTANCE_TYPES)})")
    parser.add_argument("--reason", help="with --approve-arn/--reject-arn: why (the ApprovalDescription)")
    parser.add_argument("--dry-run", action="store_true", help="print the requests, send nothing")
    return parser


def instance_types(given: list[str] | None, defaults: tuple[str, ...], shape: str, flag: str) -> list[str]:
    """`given` (or `defaults`), each checked against the enum of botocore's `shape`.

    Raises:
        ValueError: a type SageMaker does not offer there.
    """
    chosen = list(dict.fromkeys(given or defaults))
    offered = botocore.session.get_session().get_service_model("sagemaker").shape_for(shape).enum
    unknown = [t for t in chosen if t not in offered]
    if unknown:
        raise ValueError(f"{flag}: SageMaker offers no {', '.join(unknown)} there ({shape}); e.g. {defaults[0]}")
    return chosen


def realtime_types(args: argparse.Namespace) -> list[str]:
    """SupportedRealtimeInferenceInstanceTypes. Raises: ValueError: one SageMaker does not offer."""
    return instance_types(args.realtime_instance_type, REALTIME_INSTANCE_TYPES, "ProductionVariantInstanceType",
                           "--realtime-instance-type")


def transform_types(args: argparse.Namespace) -> list[str]:
    """SupportedTransformInstanceTypes. Raises: ValueError: one SageMaker does not offer."""
    return instance_types(args.transform_instance_type, TRANSFORM_INSTANCE_TYPES, "TransformInstanceType",
                           "--transform-instance-type")


def check_register(args: argparse.Namespace) -> None:
    """Check the arguments of a registration, before anything is sent.

    Raises:
        ValueError: what is missing or does not fit, and how to mend it.
    """
    model_packages.check_group(args.group)
    if not args.image:
        raise ValueError("--image is needed: the serving image the package runs")
    if not (args.training_job or args.model_data):
        raise ValueError("give --training-job JOB or --model-data s3://.../model.tar.gz")
    if args.model_data and not (args.model_data.startswith("s3://") and args.model_data.endswith(".tar.gz")):
        raise ValueError(f"--model-data takes the S3 URI of a model.tar.gz, got {args.model_data!r}")
    if args.training_job and not variants.is_name(args.training_job):
        raise ValueError(f"--training-job takes a training job's name, got {args.training_job!r}")
    if args.metrics and not args.metrics.is_file():
        raise ValueError(f"--metrics {args.metrics}: no such file")
    if args.reason:
        raise ValueError("--reason goes with --approve-arn or --reject-arn")
    realtime_types(args), transform_types(args)


def read_report(s3, model_data: str) -> bytes:
    """The evaluation report's metrics.json in the output.tar.gz beside `model_data`, streamed.

    Raises:
        RegistryError: no output.tar.gz there, one that is not a .tar.gz, or no report in it.
    """
    bucket, key = parse_s3_uri(model_data)
    archive = f"{key.rpartition('/')[0]}/{OUTPUT_ARCHIVE}"
    try:
        body = s3.get_object(Bucket=bucket, Key=archive)["Body"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("NoSuchKey", "404"):
            raise
        raise RegistryError(f"no s3://{bucket}/{archive} beside the model data, so no evaluation report: "
                            f"give the job's {METRICS_FILE} with --metrics FILE") from None
    try:
        with tarfile.open(fileobj=body, mode="r|gz") as tar:
            for member in tar:
                if member.isfile() and member.name.removeprefix("./") == REPORT_MEMBER:
                    return tar.extractfile(member).read()
    except (tarfile.TarError, gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise RegistryError(f"s3://{bucket}/{archive} is not a readable .tar.gz ({exc}): give the job's "
                            f"{METRICS_FILE} with --metrics FILE") from None
    raise RegistryError(f"s3://{bucket}/{archive} holds no {REPORT_MEMBER} (the job wrote no evaluation report): "
                        f"give one with --metrics FILE")


def _exists(s3, bucket: str, key: str) -> bool:
    try:
        s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return True


def metrics_to_upload(s3, model_data: str, local: Path | None) -> tuple[str, bytes | None]:
    """Where the package's metrics.json is (beside `model_data`), and the bytes to upload there:
    `local`'s, else the report in the job's output.tar.gz; None when it is there already.

    Raises:
        RegistryError: no report to be found (see `read_report`), or one that is not a JSON object.
    """
    bucket, key = parse_s3_uri(model_data)
    target = f"{key.rpartition('/')[0]}/{METRICS_FILE}"
    uri = f"s3://{bucket}/{target}"
    if local is None and _exists(s3, bucket, target):
        logger.info("%s is there already", uri)
        return uri, None
    body = local.read_bytes() if local else read_report(s3, model_data)
    try:
        if not isinstance(json.loads(body), dict):
            raise ValueError("not an object")
    except ValueError as exc:
        raise RegistryError(f"{local or REPORT_MEMBER} is not a JSON object ({exc}): not an evaluation report") \
            from None
    return uri, body


def package_request(args: argparse.Namespace, model_data: str, metrics: str) -> dict[str, Any]:
    """CreateModelPackage's parameters for the model package of `model_data`, `metrics` its report's URI."""
    request: dict[str, Any] = {
        "ModelPackageGroupName": args.group,
        "InferenceSpecification": {
            "Containers": [{"Image": args.image, "ModelDataUrl": model_data}],
            "SupportedContentTypes": list(content_types.REQUEST_TYPES),
            "SupportedResponseMIMETypes": list(content_types.RESPONSE_TYPES),
            "SupportedRealtimeInferenceInstanceTypes": realtime_types(args),
            "SupportedTransformInstanceTypes": transform_types(args),
        },
        "ModelMetrics": {"ModelQuality": {"Statistics": {"ContentType": content_types.JSON, "S3Uri": metrics}}},
        "ModelApprovalStatus": APPROVED if args.approve else PENDING,
    }
    if args.description:
        request["ModelPackageDescription"] = args.description
    if args.training_job:
        request["CustomerMetadataProperties"] = {"TrainingJobName": args.training_job}
    return request


def _group_exists(sm, group: str) -> bool:
    try:
        sm.describe_model_package_group(ModelPackageGroupName=group)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "ValidationException":  # AWS: "... does not exist"
            raise
        return False
    return True


def register(args: argparse.Namespace, boto_session: boto3.Session) -> list[dict[str, Any]]:
    """Make the group if missing, upload metrics.json beside the model if it is not there, then
    create the model package.

    Returns:
        the requests on a dry run, else `[{"ModelPackageArn": ..., "ModelApprovalStatus": ...}]`.

    Raises:
        ValueError: the arguments (nothing is sent), a training job without model artifacts.
        RegistryError: no evaluation report to register.
    """
    check_register(args)
    dry_run = DryRun(boto_session, CHANGING) if args.dry_run else None  # before the clients are made
    sm, s3 = boto_session.client("sagemaker"), boto_session.client("s3")
    model_data = model_data_of(sm, args)
    metrics, body = metrics_to_upload(s3, model_data, args.metrics)
    request = package_request(args, model_data, metrics)
    if not _group_exists(sm, args.group):
        sm.create_model_package_group(ModelPackageGroupName=args.group,
                                      ModelPackageGroupDescription=f"image-classifier models: {args.group}")
    if body is not None:
        if dry_run:
            logger.info("dry run: %s (%d bytes) not uploaded to %s", REPORT_MEMBER, len(body), metrics)
        else:
            bucket, key = parse_s3_uri(metrics)
            s3.put_object(Bucket=bucket, Key=key, Body=body, ContentType=content_types.JSON)
    answer = sm.create_model_package(**request)
    if dry_run:
        return dry_run.params()
    return [{"ModelPackageArn": answer["ModelPackageArn"], "ModelApprovalStatus": request["ModelApprovalStatus"],
             "ModelMetrics": metrics}]


def set_status(args: argparse.Namespace, boto_session: boto3.Session) -> list[dict[str, Any]]:
    """Approve (`--approve-arn`) or reject (`--reject-arn`) a model package (UpdateModelPackage).

    Returns:
        the request on a dry run, else `[{"ModelPackageArn": ..., "ModelApprovalStatus": ...}]`.

    Raises:
        ValueError: a malformed ARN, or registration options given (nothing is sent).
    """
    given = [f"--{name.replace('_', '-')}" for name in REGISTER_ONLY if getattr(args, name)]
    if given or args.approve:
        raise ValueError(f"{', '.join(given or ['--approve'])} only go with --group (registering)")
    arn = model_packages.check_arn(args.approve_arn or args.reject_arn)
    request = {"ModelPackageArn": arn, "ModelApprovalStatus": APPROVED if args.approve_arn else REJECTED}
    if args.reason:
        request["ApprovalDescription"] = args.reason
    dry_run = DryRun(boto_session, CHANGING) if args.dry_run else None
    boto_session.client("sagemaker").update_model_package(**request)
    if dry_run:
        return dry_run.params()
    return [{"ModelPackageArn": arn, "ModelApprovalStatus": request["ModelApprovalStatus"]}]


@exit_on({**LAUNCHER, RegistryError: (FAILED, one_line)})
def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    boto_session = boto3.Session(region_name=args.region)
    result = register(args, boto_session) if args.group else set_status(args, boto_session)
    print(json.dumps(result, indent=2, default=str))
    return 0
