"""Deploy model artifacts to a SageMaker endpoint with the serving image, or delete it.

Creates one Model per production variant (the serving image and its `model.tar.gz`, or a model
package of the Model Registry: launch/model_packages.py), an EndpointConfig holding the variants
(instances, or `--serverless` memory and concurrency; each variant's share of the traffic; with
`--async-output` an asynchronous endpoint, launch/async_inference.py; with `--data-capture` its
capture, launch/monitoring.py) and an Endpoint, with boto3's SageMaker client, the one API of
these resources (create, describe, wait, delete); `--autoscale` then gives each variant a
target-tracking policy (launch/autoscaling.py; on its backlog for an asynchronous endpoint, with
the policy and alarm that scale out from zero), and `--dashboard` a CloudWatch dashboard and
alarms. `--dry-run` records the requests instead of sending them (launch/dry_run.py). Every
argument is checked before anything is created, and a failure midway deletes what the run had
created. `--delete` removes the alarms and dashboard, the scaling, the endpoint, its config and
its models, in that order.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import dataclass, field, replace
from typing import Any

import boto3
from botocore import xform_name
from botocore.exceptions import ClientError, WaiterError

from image_classifier.launch import async_inference, autoscaling, endpoint_extras, model_packages, monitoring, variants
from image_classifier.launch.common import parse_static, positive_int
from image_classifier.launch.dry_run import DryRun
from image_classifier.launch.exit_codes import FAILED, LAUNCHER, exit_on, one_line
from image_classifier.launch.history import kept_configs
from image_classifier.launch.variants import Serverless, Variant

logger = logging.getLogger(__name__)

# what a dry run records instead of sending, by service
CREATING = {"sagemaker": ("CreateModel", "CreateEndpointConfig", "CreateEndpoint"),
            "application-autoscaling": ("RegisterScalableTarget", "PutScalingPolicy"),
            "cloudwatch": ("PutMetricAlarm", "PutDashboard")}
DELETING = {"sagemaker": ("DeleteEndpoint", "DeleteEndpointConfig", "DeleteModel"),
            "application-autoscaling": ("DeregisterScalableTarget",),
            "cloudwatch": ("DeleteAlarms", "DeleteDashboards")}
WAIT_POLL, WAIT_ATTEMPTS = 5, 720  # DescribeEndpoint every 5 s, for up to an hour
VARIANT = "AllTraffic"  # the one variant of --model-data / --training-job
INSTANCE_TYPE, INSTANCE_COUNT, STARTUP_TIMEOUT = "ml.m5.large", 1, 600  # instance variants' defaults


class DeployError(RuntimeError):
    """A request failed midway; what the run had created is deleted again, as the message says."""


@dataclass(frozen=True)
class Plan:
    """What create() deploys, every argument checked: the variants and where they run."""

    variants: list[Variant]
    environment: dict[str, str]
    serverless: Serverless | None
    scaling: autoscaling.Scaling | None
    instance_type: str = INSTANCE_TYPE
    instance_count: int = INSTANCE_COUNT
    startup_timeout: int = STARTUP_TIMEOUT
    config_extras: dict[str, Any] = field(default_factory=dict)  # AsyncInferenceConfig, DataCaptureConfig
    asynchronous: async_inference.AsyncOutput | None = None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deploy.py", description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="image-classifier", help="endpoint name (default: %(default)s)")
    parser.add_argument("--region", default=None, help="AWS region (default: the AWS configuration's)")
    parser.add_argument("--delete", action="store_true",
                        help="delete the endpoint's alarms and dashboard, its scaling, the endpoint, its config and "
                             "its models")
    parser.add_argument("--image", help="serving image URI in ECR")
    parser.add_argument("--role", help="IAM role ARN the endpoint runs as")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model-data", help=f"S3 URI of model.tar.gz, served as the one variant {VARIANT}")
    source.add_argument("--training-job",
                        help=f"serve this training job's model artifacts as the one variant {VARIANT}")
    source.add_argument("--variant", action="append", type=variants.parse_variant, metavar="NAME=SOURCE[:WEIGHT]",
                        help="a production variant, repeatable (A/B tests): SOURCE an s3://.../model.tar.gz or a "
                             "training job name, WEIGHT its share of the traffic against the other variants' "
                             "(>= 0, default 1), e.g. --variant current=s3://b/a/model.tar.gz:9 --variant new=JOB:1")
    model_packages.add_arguments(source)  # --model-package ARN, --latest-approved GROUP (Model Registry)
    where = parser.add_argument_group("where the variants run (each variant the same)")
    where.add_argument("--instance-type", help=f"(default: {INSTANCE_TYPE})")
    where.add_argument("--instance-count", type=positive_int,
                       help=f"instances per variant (default: {INSTANCE_COUNT}, or MIN of --autoscale)")
    where.add_argument("--startup-timeout", type=int,
                       help=f"seconds SageMaker waits for /ping after the container starts "
                            f"(default: {STARTUP_TIMEOUT})")
    where.add_argument("--serverless", type=variants.parse_serverless, metavar="MEMORY_MB:MAX_CONCURRENCY",
                       help="a serverless variant instead of instances, e.g. 2048:10: memory 1024-6144 in steps of "
                            "1024 MB, 1-200 concurrent invocations; it scales itself (no --autoscale), holds one "
                            "variant, and takes requests of 4 MB at most")
    scaling = parser.add_argument_group("autoscaling (Application Auto Scaling, once the endpoint is InService)")
    scaling.add_argument("--autoscale", type=autoscaling.parse_capacity, metavar="MIN:MAX",
                         help="scale each variant between MIN and MAX instances (MIN >= 1; 0 for an asynchronous "
                              "endpoint, --async-output); needs --wait")
    scaling.add_argument("--target-invocations", type=float, metavar="N",
                         help="invocations per instance per minute to keep each variant at "
                              "(CloudWatch's SageMakerVariantInvocationsPerInstance): load-test one instance for "
                              "its peak requests/s, then N = peak * 60 * 0.5 (AWS's starting safety factor)")
    scaling.add_argument("--scale-in-cooldown", type=int, metavar="S",
                         help=f"seconds after removing instances before removing more (default: "
                              f"{autoscaling.SCALE_IN_COOLDOWN})")
    scaling.add_argument("--scale-out-cooldown", type=int, metavar="S",
                         help=f"seconds after adding instances before adding more (default: "
                              f"{autoscaling.SCALE_OUT_COOLDOWN})")
    async_inference.add_arguments(parser)
    monitoring.add_arguments(parser)
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="container environment, e.g. MODEL_SERVER_WORKERS=2 (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="print the requests, send nothing")
    parser.add_argument("--wait", action=argparse.BooleanOptionalAction, default=True,
                        help="wait until the endpoint is InService (default) or deleted")
    return parser


def model_data_url(sm_client, source: str) -> str:
    """`source` if it is an S3 URI, else the S3ModelArtifacts of the training job it names.

    Raises:
        ValueError: the training job has no model artifacts (it did not complete).
    """
    if source.startswith("s3://"):
        return source
    job = sm_client.describe_training_job(TrainingJobName=source)
    if "S3ModelArtifacts" not in job.get("ModelArtifacts", {}):
        raise ValueError(f"training job {source} has no model artifacts (it is {job.get('TrainingJobStatus')})")
    return job["ModelArtifacts"]["S3ModelArtifacts"]


def model_data_of(sm_client, args: argparse.Namespace) -> str:
    """`--model-data`, or the S3ModelArtifacts of `--training-job`.

    Raises:
        ValueError: neither given; `--model-data` not an s3:// URI; the job has no model artifacts.
    """
    if args.model_data:
        if not args.model_data.startswith("s3://"):
            raise ValueError(f"--model-data takes an S3 URI (s3://bucket/key/model.tar.gz), got {args.model_data!r}")
        return args.model_data
    if not args.training_job:
        raise ValueError("give --model-data s3://.../model.tar.gz or --training-job NAME")
    return model_data_url(sm_client, args.training_job)


def plan(args: argparse.Namespace) -> Plan:
    """Check the arguments together, before anything is sent.

    Raises:
        ValueError: what is missing or does not fit, and how to mend it.
    """
    if not (args.image and args.role):
        raise ValueError("--image and --role are needed to deploy")
    if not variants.is_name(args.name):
        raise ValueError(f"endpoint name {args.name!r} must be 1-63 letters, digits and hyphens, "
                         "starting and ending with a letter or digit")
    if args.model_data and not args.model_data.startswith("s3://"):
        raise ValueError(f"--model-data takes an s3:// URI, got {args.model_data!r}")
    if args.training_job and not variants.is_name(args.training_job):
        raise ValueError(f"--training-job takes a training job's name, got {args.training_job!r}")
    chosen = args.variant or [Variant(VARIANT, args.model_data or args.training_job or "")]
    if not chosen[0].source:
        raise ValueError("give --model-data s3://.../model.tar.gz, --training-job NAME "
                         "or --variant NAME=SOURCE[:WEIGHT]")
    variants.check_variants(chosen)
    environment = parse_static(args.env)
    asynchronous = async_inference.check(args)
    extras = {**async_inference.config(asynchronous), **monitoring.data_capture(args)}
    monitoring.check_watching(args)
    if asynchronous:  # what --env sets wins
        environment = {**async_inference.ENVIRONMENT, **environment}
    if args.serverless:
        _check_serverless(args, chosen)
    scaling = _scaling(args)
    if args.serverless:
        return Plan(chosen, environment, args.serverless, None, config_extras=extras)
    count = args.instance_count or max(1, scaling.min_capacity if scaling else INSTANCE_COUNT)
    if scaling and not scaling.min_capacity <= count <= scaling.max_capacity:
        raise ValueError(f"--instance-count {count} is outside --autoscale "
                         f"{scaling.min_capacity}:{scaling.max_capacity}: give a count within it, or leave it out")
    timeout = STARTUP_TIMEOUT if args.startup_timeout is None else args.startup_timeout
    return replace(Plan(chosen, environment, None, scaling, args.instance_type or INSTANCE_TYPE, count, timeout),
                   config_extras=extras, asynchronous=asynchronous)


def _check_serverless(args: argparse.Namespace, chosen: list[Variant]) -> None:
    """Raises: ValueError: --serverless with what a serverless variant does not take."""
    if args.autoscale:
        raise ValueError("--serverless scales by itself (up to MAX_CONCURRENCY): leave out --autoscale")
    given = [flag for flag, value in (("--instance-type", args.instance_type),
                                      ("--instance-count", args.instance_count),
                                      ("--startup-timeout", args.startup_timeout)) if value is not None]
    if given:
        raise ValueError(f"--serverless runs on no instances of yours: leave out {', '.join(given)}")
    if len(chosen) > 1:
        raise ValueError("a serverless endpoint holds one production variant (multiple variants are among "
                         "Serverless Inference's feature exclusions): deploy instance variants for an A/B test")


def _scaling(args: argparse.Namespace) -> autoscaling.Scaling | None:
    """--autoscale and its options as a Scaling, or None without --autoscale.

    Raises:
        ValueError: options without --autoscale, no --target-invocations, --no-wait, a bad number.
    """
    options = [flag for flag, value in (("--target-invocations", args.target_invocations),
                                        ("--scale-in-cooldown", args.scale_in_cooldown),
                                        ("--scale-out-cooldown", args.scale_out_cooldown)) if value is not None]
    if args.target_backlog is not None:
        options.append("--target-backlog")
    if not args.autoscale:
        if options:
            raise ValueError(f"{', '.join(options)} only go with --autoscale MIN:MAX")
        return None
    target = _scaling_target(args)
    if not (math.isfinite(target) and target > 0):
        flag = "--target-backlog" if args.async_output else "--target-invocations"
        raise ValueError(f"{flag} must be a number above 0, got {target}")
    if not args.wait:
        raise ValueError("--autoscale registers the variants once the endpoint is InService: it needs --wait")
    cooldowns = [args.scale_in_cooldown, args.scale_out_cooldown]
    if any(c is not None and c < 0 for c in cooldowns):
        raise ValueError("cooldowns are seconds >= 0")
    defaults = (autoscaling.SCALE_IN_COOLDOWN, autoscaling.SCALE_OUT_COOLDOWN)
    scale_in, scale_out = (d if c is None else c for c, d in zip(cooldowns, defaults))
    return autoscaling.Scaling(*args.autoscale, target, scale_in, scale_out)


def _scaling_target(args: argparse.Namespace) -> float:
    """What --autoscale keeps each variant at: --target-invocations, or for an asynchronous endpoint
    --target-backlog (default async_inference.TARGET_BACKLOG).

    Raises:
        ValueError: the target of the other kind of endpoint, none given, MIN 0 for a real-time endpoint.
    """
    if args.async_output:
        if args.target_invocations is not None:
            raise ValueError("an asynchronous endpoint scales on its backlog: give --target-backlog N "
                             "(queued requests per instance), not --target-invocations")
        return async_inference.TARGET_BACKLOG if args.target_backlog is None else args.target_backlog
    if args.autoscale[0] < 1:
        raise ValueError(f"MIN must be at least 1 (SageMaker's minimum for an instance-based variant), got "
                         f"{args.autoscale[0]}; an asynchronous endpoint (--async-output) may scale to 0")
    if args.target_invocations is None:
        raise ValueError("--autoscale needs --target-invocations N (invocations per instance per minute)")
    return args.target_invocations


def _variant(variant: Variant, model: str, chosen: Plan) -> dict[str, Any]:
    """A ProductionVariant of CreateEndpointConfig: `variant` on `model`, on instances or serverless."""
    request: dict[str, Any] = {"VariantName": variant.name, "ModelName": model}
    if chosen.serverless:
        return {**request, "InitialVariantWeight": variant.weight, "ServerlessConfig": {
            "MaxConcurrency": chosen.serverless.max_concurrency, "MemorySizeInMB": chosen.serverless.memory_mb}}
    return {**request, "InitialInstanceCount": chosen.instance_count, "InstanceType": chosen.instance_type,
            "InitialVariantWeight": variant.weight,
            "ContainerStartupHealthCheckTimeoutInSeconds": chosen.startup_timeout}


def _steps(args: argparse.Namespace, chosen: Plan, model_data: dict[str, str],
           config_name: str) -> list[tuple[tuple[str, str], str, dict[str, Any]]]:
    """The SageMaker requests that create the Models (`model_data`: name → S3 URI, in the variants'
    order), the EndpointConfig and the Endpoint: each as (the (kind, name) it creates, the client
    method, its parameters)."""
    steps = []
    for model, url in model_data.items():
        container = model_packages.container(args, url)
        if chosen.environment:
            container["Environment"] = chosen.environment
        steps.append((("model", model), "create_model",
                      {"ModelName": model, "PrimaryContainer": container, "ExecutionRoleArn": args.role}))
    steps.append((("endpoint config", config_name), "create_endpoint_config", {
        "EndpointConfigName": config_name,
        "ProductionVariants": [_variant(v, model, chosen) for v, model in zip(chosen.variants, model_data)],
        **chosen.config_extras}))
    steps.append((("endpoint", args.name), "create_endpoint",
                  {"EndpointName": args.name, "EndpointConfigName": config_name}))
    return steps


def create(args: argparse.Namespace, boto_session: boto3.Session) -> list[dict[str, Any]]:
    """Create the Models, the EndpointConfig and the Endpoint, then the scaling; on a dry run,
    only their requests.

    Returns:
        the requests on a dry run, else `[{"EndpointName": ..., "EndpointConfigName": ...,
        "ModelNames": [...], "ScalableTargets": [...]}]`.

    Raises:
        ValueError: the arguments (nothing is sent), or a training job without artifacts.
        DeployError: a request failed, or the endpoint did not reach InService; what the run had
            created is deleted.
    """
    model_packages.resolve(boto_session, args, plan)  # a model package: its image and model data
    chosen = plan(args)
    suffix = time.strftime("%Y%m%d-%H%M%S")
    config_name = variants.resource_name(args.name, suffix)
    models = [variants.resource_name(f"{args.name}-{v.name}", suffix) for v in chosen.variants]
    dry_run = DryRun(boto_session, CREATING) if args.dry_run else None  # before the clients are made
    sm = boto_session.client("sagemaker")
    data = [model_data_url(sm, v.source) for v in chosen.variants]
    steps = _steps(args, chosen, dict(zip(models, data)), config_name)
    extras = [step for v in chosen.variants for step in _scaling_steps(args.name, v.name, chosen)]
    if args.dashboard:
        if not dry_run:  # a read, before any change
            endpoint_extras.check_dashboard_free(boto_session.client("cloudwatch"), args.name)
        extras += monitoring.requests(args, [v.name for v in chosen.variants], sm.meta.region_name)
    created: list[tuple[str, str]] = []  # (kind, name), oldest first
    try:
        for resource, method, params in steps:
            getattr(sm, method)(**params)
            created.append(resource)
        if args.wait and not dry_run:
            wait_in_service(sm, args.name)
        endpoint_extras.send(boto_session, extras, created)
    except Exception as exc:
        raise DeployError(f"{one_line(exc)}; {roll_back(boto_session, [] if dry_run else created)}") from exc
    if dry_run:
        return dry_run.params()
    return [{"EndpointName": args.name, "EndpointConfigName": config_name, "ModelNames": models,
             "ScalableTargets": [name for kind, name in created if kind == "scalable target"],
             "Alarms": [name for kind, name in created if kind == "alarm"],
             "Dashboards": [name for kind, name in created if kind == "dashboard"]}]


def _scaling_steps(endpoint: str, variant: str, chosen: Plan) -> list[endpoint_extras.Step]:
    """The scaling requests of `variant`: on the backlog for an asynchronous endpoint, else on invocations."""
    if not chosen.scaling:
        return []
    if chosen.asynchronous:
        return async_inference.scaling_requests(endpoint, variant, chosen.scaling, chosen.scaling.target_invocations)
    return [("application-autoscaling", op, params) for op, params in autoscaling.requests(endpoint, variant,
                                                                                          chosen.scaling)]


def wait_in_service(sm, name: str) -> None:
    """Wait until endpoint `name` is InService (boto3's waiter, a DescribeEndpoint every WAIT_POLL s).

    Raises:
        DeployError: the endpoint failed (with SageMaker's FailureReason), or is not InService after
            WAIT_ATTEMPTS polls.
    """
    try:
        sm.get_waiter("endpoint_in_service").wait(
            EndpointName=name, WaiterConfig={"Delay": WAIT_POLL, "MaxAttempts": WAIT_ATTEMPTS})
    except WaiterError as exc:
        last = exc.last_response or {}
        raise DeployError(f"endpoint {name} did not reach InService: it is {last.get('EndpointStatus', '?')}, "
                          f"failure reason: {last.get('FailureReason', last.get('Error', '(none given)'))}") from exc


def roll_back(boto_session: boto3.Session, created: list[tuple[str, str]]) -> str:
    """Delete what a failed run had `created`, newest first; returns what went and what stayed."""
    sm = boto_session.client("sagemaker")
    deleters = {
        **endpoint_extras.deleters(boto_session),
        "endpoint": lambda name: sm.delete_endpoint(EndpointName=name),
        "endpoint config": lambda name: sm.delete_endpoint_config(EndpointConfigName=name),
        "model": lambda name: sm.delete_model(ModelName=name),
    }
    removed, left = [], []
    for kind, name in reversed(created):
        try:
            deleters[kind](name)
            removed.append(f"{kind} {name}")
        except ClientError as exc:
            logger.warning("could not delete %s %s: %s", kind, name, exc)
            left.append(f"{kind} {name}")
    said = f"deleted what this run created ({', '.join(removed)})" if removed else "nothing had been created"
    return said + (f"; still there, delete by hand: {', '.join(left)}" if left else "")


def delete(args: argparse.Namespace, boto_session: boto3.Session) -> list[dict[str, Any]]:
    """Deregister the variants' scalable targets, then delete the endpoint, its config with the
    configs kept for rollback behind it (`kept_configs`), and their models, in the order AWS
    documents; returns what was deleted (the requests on a dry run)."""
    dry_run = DryRun(boto_session, DELETING) if args.dry_run else None  # before the clients are made
    sm, scaling = boto_session.client("sagemaker"), boto_session.client("application-autoscaling")
    config_name = sm.describe_endpoint(EndpointName=args.name)["EndpointConfigName"]
    variants = sm.describe_endpoint_config(EndpointConfigName=config_name)["ProductionVariants"]
    configs = kept_configs(sm, config_name)
    models = list(dict.fromkeys(  # a variant the updates did not touch shares its model across configs
        v["ModelName"] for name in configs
        for v in sm.describe_endpoint_config(EndpointConfigName=name)["ProductionVariants"]))
    targets = autoscaling.registered(scaling, args.name, [v["VariantName"] for v in variants])
    steps = endpoint_extras.deletions(boto_session.client("cloudwatch"), args.name,
                                      [v["VariantName"] for v in variants])
    watching = [name for _, _, params in steps for name in params.get("AlarmNames", params.get("DashboardNames"))]
    steps += [(scaling, "DeregisterScalableTarget", autoscaling.target_key(t)) for t in targets]
    steps += [(sm, "DeleteEndpoint", {"EndpointName": args.name})]
    steps += [(sm, "DeleteEndpointConfig", {"EndpointConfigName": name}) for name in configs]
    steps += [(sm, "DeleteModel", {"ModelName": model}) for model in models]
    for client, operation, params in steps:
        try:
            getattr(client, xform_name(operation))(**params)
        except ClientError as exc:  # a model another endpoint's cleanup took already: nothing left to do
            if operation != "DeleteModel" or exc.response.get("Error", {}).get("Code") != "ValidationException":
                raise
        if operation == "DeleteEndpoint" and args.wait and not dry_run:
            sm.get_waiter("endpoint_deleted").wait(EndpointName=args.name)
    if dry_run:
        return dry_run.params()
    return [{"EndpointName": args.name, "EndpointConfigName": config_name, "EndpointConfigNames": configs,
             "ModelNames": models, "ScalableTargets": targets, "AlarmsAndDashboards": watching}]


@exit_on({**LAUNCHER, DeployError: (FAILED, one_line)})
def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    boto_session = boto3.Session(region_name=args.region)
    result = delete(args, boto_session) if args.delete else create(args, boto_session)
    print(json.dumps(result, indent=2, default=str))
    return 0
