"""Deploy model artifacts to a SageMaker real-time endpoint with the serving image, or delete it.

Creates a Model (the serving image and `model.tar.gz`), an EndpointConfig (instance type and
count, container start-up health-check timeout) and an Endpoint, with the SageMaker SDK v3's
`sagemaker.core.resources`; `--delete` removes all three.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any, Callable

import boto3

from image_classifier.launch.common import DryRun, parse_static, sending_nothing

logger = logging.getLogger(__name__)

OPERATIONS = ("CreateModel", "CreateEndpointConfig", "CreateEndpoint")
VARIANT = "AllTraffic"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deploy.py", description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="image-classifier", help="endpoint name (default: %(default)s)")
    parser.add_argument("--region", default=None, help="AWS region (default: the AWS configuration's)")
    parser.add_argument("--delete", action="store_true", help="delete the endpoint, its config and its models")
    parser.add_argument("--image", help="serving image URI in ECR")
    parser.add_argument("--role", help="IAM role ARN the endpoint runs as")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model-data", help="S3 URI of model.tar.gz")
    source.add_argument("--training-job", help="take the model artifacts of this training job")
    parser.add_argument("--instance-type", default="ml.m5.large")
    parser.add_argument("--instance-count", type=int, default=1)
    parser.add_argument("--startup-timeout", type=int, default=600,
                        help="seconds SageMaker waits for /ping after the container starts")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="container environment, e.g. MODEL_SERVER_WORKERS=2 (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="print the requests, send nothing")
    parser.add_argument("--wait", action=argparse.BooleanOptionalAction, default=True,
                        help="wait until the endpoint is InService (default) or deleted")
    return parser


def model_data_of(sm_client, args: argparse.Namespace) -> str:
    """`--model-data`, or the S3ModelArtifacts of `--training-job`.

    Raises:
        ValueError: neither given.
    """
    if args.model_data:
        return args.model_data
    if not args.training_job:
        raise ValueError("give --model-data s3://.../model.tar.gz or --training-job NAME")
    return sm_client.describe_training_job(TrainingJobName=args.training_job)["ModelArtifacts"]["S3ModelArtifacts"]


def create(args: argparse.Namespace, boto_session: boto3.Session) -> list[dict[str, Any]]:
    """Create the Model, EndpointConfig and Endpoint; on a dry run, only their requests.

    Returns:
        the three requests on a dry run, else `[{"EndpointName": ...}]`.
    """
    from sagemaker.core.resources import Endpoint, EndpointConfig, Model
    from sagemaker.core.shapes import ContainerDefinition, ProductionVariant

    if not (args.image and args.role):
        raise ValueError("--image and --role are needed to deploy")
    suffix = time.strftime("%Y%m%d-%H%M%S")
    model_name, config_name = f"{args.name}-{suffix}", f"{args.name}-{suffix}"
    model_data = model_data_of(boto_session.client("sagemaker"), args)
    region = boto_session.region_name
    steps: list[Callable[[], Any]] = [
        lambda: Model.create(
            model_name=model_name, execution_role_arn=args.role, session=boto_session, region=region,
            primary_container=ContainerDefinition(image=args.image, model_data_url=model_data,
                                                  environment=parse_static(args.env))),
        lambda: EndpointConfig.create(
            endpoint_config_name=config_name, session=boto_session, region=region,
            production_variants=[ProductionVariant(
                variant_name=VARIANT, model_name=model_name, instance_type=args.instance_type,
                initial_instance_count=args.instance_count,
                container_startup_health_check_timeout_in_seconds=args.startup_timeout)]),
        lambda: Endpoint.create(endpoint_name=args.name, endpoint_config_name=config_name,
                                session=boto_session, region=region),
    ]
    if args.dry_run:
        requests = []
        with sending_nothing(boto_session, OPERATIONS):
            for step in steps:
                try:
                    step()
                except DryRun as request:
                    requests.append(request.params)
        return requests
    endpoint = [step() for step in steps][-1]
    if args.wait:
        endpoint.wait_for_status("InService")
    return [{"EndpointName": args.name, "EndpointConfigName": config_name, "ModelName": model_name}]


def delete(args: argparse.Namespace, boto_session: boto3.Session) -> list[dict[str, Any]]:
    """Delete the endpoint, then its config and the config's models; returns what was deleted."""
    sm = boto_session.client("sagemaker")
    config_name = sm.describe_endpoint(EndpointName=args.name)["EndpointConfigName"]
    variants = sm.describe_endpoint_config(EndpointConfigName=config_name)["ProductionVariants"]
    sm.delete_endpoint(EndpointName=args.name)
    if args.wait:
        sm.get_waiter("endpoint_deleted").wait(EndpointName=args.name)
    sm.delete_endpoint_config(EndpointConfigName=config_name)
    for variant in variants:
        sm.delete_model(ModelName=variant["ModelName"])
    return [{"EndpointName": args.name, "EndpointConfigName": config_name,
             "ModelNames": [v["ModelName"] for v in variants]}]


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    boto_session = boto3.Session(region_name=args.region)
    try:
        result = delete(args, boto_session) if args.delete else create(args, boto_session)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, default=str))
    return 0
