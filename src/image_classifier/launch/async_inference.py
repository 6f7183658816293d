"""Asynchronous endpoints: the endpoint config's AsyncInferenceConfig, the container environment that
lets the model server take what Asynchronous Inference sends, and scaling to zero on the backlog.

Asynchronous Inference queues each request (its body in S3), sends it to the container when an
instance is free and writes the answer to S3: a request may carry up to 1 GB and run up to an
hour, against a real-time endpoint's 6 MB and 60 s
(https://docs.aws.amazon.com/sagemaker/latest/dg/async-inference.html). The model server's own
limits follow its environment (sagemaker_env.ServerSettings: the payload limit, which nginx's
`client_max_body_size` follows, and gunicorn's worker timeout), so `--async-output` writes the
environment that raises them to those figures (`ENVIRONMENT`).

Scaling (https://docs.aws.amazon.com/sagemaker/latest/dg/async-inference-autoscale.html): each
variant is a scalable target that may reach 0 instances, with a target-tracking policy on
`ApproximateBacklogSizePerInstance` (requests queued per instance) and, because a target-tracking
policy cannot scale out from 0 instances until the backlog passes its target, a step scaling
policy that adds one instance when the CloudWatch alarm on `HasBacklogWithoutCapacity` fires
(requests are queued and no instance runs).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

from image_classifier.launch import autoscaling
from image_classifier.launch.common import positive_int
from image_classifier.launch.monitoring import TOPIC_ARN
from image_classifier.launch.upload import parse_s3_uri
from image_classifier.sagemaker_env import MAX_PAYLOAD_ENV, MODEL_SERVER_TIMEOUT_ENV

# Asynchronous Inference's limits (async-inference.html): 1 GB a request, in the server's unit
# (MB = 10**6 bytes), and an hour a request: InvokeEndpointAsync's InvocationTimeoutSeconds
# maximum, 3600 (botocore's service model, API_runtime_InvokeEndpointAsync).
MAX_PAYLOAD_MB = 1000
MAX_PAYLOAD_BYTES = MAX_PAYLOAD_MB * 1_000_000
INVOCATION_TIMEOUT_SECONDS = 3600
ENVIRONMENT = {MAX_PAYLOAD_ENV: str(MAX_PAYLOAD_MB), MODEL_SERVER_TIMEOUT_ENV: str(INVOCATION_TIMEOUT_SECONDS)}
MAX_CONCURRENT_RANGE = (1, 1000)  # MaxConcurrentInvocationsPerInstance (botocore's service model)

CLOUDWATCH_NAMESPACE = "AWS/SageMaker"
BACKLOG_METRIC = "ApproximateBacklogSizePerInstance"
NO_CAPACITY_METRIC = "HasBacklogWithoutCapacity"
TARGET_BACKLOG = 5.0  # queued requests per instance: the value of AWS's example (async-inference-autoscale.html)
BACKLOG_POLICY = "backlog-per-instance"
SCALE_OUT_POLICY = "has-backlog-without-capacity"
# the alarm's actions name the step policy by its ARN, known only once PutScalingPolicy answers:
# launch/endpoint_extras.send puts it in place of this
STEP_POLICY_ARN = "<PolicyARN of the step scaling policy>"


@dataclass(frozen=True)
class AsyncOutput:
    """Where an asynchronous endpoint writes its answers (S3 URIs), whom it tells (SNS topic ARNs),
    and how many requests an instance takes at once (None: SageMaker chooses)."""

    output: str
    failure: str | None = None
    success_topic: str | None = None
    error_topic: str | None = None
    max_concurrent: int | None = None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """deploy.py's options of an asynchronous endpoint."""
    group = parser.add_argument_group(
        "asynchronous inference (requests queued in S3: up to 1 GB and an hour each, scaling to 0 instances)")
    group.add_argument("--async-output", metavar="S3_URI",
                       help="make the endpoint asynchronous, writing its answers under this S3 prefix; the container "
                            f"then takes bodies up to {MAX_PAYLOAD_MB} MB and {INVOCATION_TIMEOUT_SECONDS} s "
                            f"({', '.join(f'{k}={v}' for k, v in ENVIRONMENT.items())}, unless --env sets them)")
    group.add_argument("--async-failure", metavar="S3_URI", help="S3 prefix for the failed requests' errors")
    group.add_argument("--async-success-topic", metavar="ARN", help="SNS topic told of each answer")
    group.add_argument("--async-error-topic", metavar="ARN", help="SNS topic told of each failure")
    group.add_argument("--async-max-concurrent", type=positive_int, metavar="N",
                       help="requests one instance takes at once (MaxConcurrentInvocationsPerInstance, 1-1000; "
                            "default: SageMaker's choice)")
    group.add_argument("--target-backlog", type=float, metavar="N",
                       help=f"with --autoscale MIN:MAX (MIN may be 0): queued requests per instance to keep each "
                            f"variant at (CloudWatch's {BACKLOG_METRIC}; default {TARGET_BACKLOG:g}, AWS's example)")


def check(args: argparse.Namespace) -> AsyncOutput | None:
    """The asynchronous options as an AsyncOutput, or None without --async-output.

    Raises:
        ValueError: an option without --async-output, a prefix that is not s3://, a topic that is not
            an SNS topic ARN, a concurrency outside 1-1000, --serverless (Serverless Inference is not
            asynchronous).
    """
    options = {"--async-failure": args.async_failure, "--async-success-topic": args.async_success_topic,
               "--async-error-topic": args.async_error_topic, "--async-max-concurrent": args.async_max_concurrent,
               "--target-backlog": args.target_backlog}
    if not args.async_output:
        given = [flag for flag, value in options.items() if value is not None]
        if given:
            raise ValueError(f"{', '.join(given)} only go with --async-output s3://...")
        return None
    if args.serverless:
        raise ValueError("--async-output makes an asynchronous endpoint, on instances: leave out --serverless")
    for flag, uri in (("--async-output", args.async_output), ("--async-failure", args.async_failure)):
        if uri is not None:
            try:
                parse_s3_uri(uri)
            except ValueError:
                raise ValueError(f"{flag} takes an S3 prefix (s3://bucket/prefix), got {uri!r}") from None
    for flag, topic in (("--async-success-topic", args.async_success_topic),
                        ("--async-error-topic", args.async_error_topic)):
        if topic is not None and not TOPIC_ARN.match(topic):
            raise ValueError(f"{flag} takes an SNS topic ARN (arn:aws:sns:REGION:ACCOUNT:NAME), got {topic!r}")
    low, high = MAX_CONCURRENT_RANGE
    if args.async_max_concurrent is not None and not low <= args.async_max_concurrent <= high:
        raise ValueError(f"--async-max-concurrent must be {low}-{high}, got {args.async_max_concurrent}")
    if args.target_backlog is not None and not args.target_backlog > 0:
        raise ValueError(f"--target-backlog must be a number above 0, got {args.target_backlog}")
    return AsyncOutput(args.async_output, args.async_failure, args.async_success_topic, args.async_error_topic,
                       args.async_max_concurrent)


def config(output: AsyncOutput | None) -> dict[str, Any]:
    """CreateEndpointConfig's `{"AsyncInferenceConfig": ...}` for `output` (`{}` for None)."""
    if output is None:
        return {}
    out: dict[str, Any] = {"S3OutputPath": output.output}
    if output.failure:
        out["S3FailurePath"] = output.failure
    topics = {key: value for key, value in (("SuccessTopic", output.success_topic),
                                            ("ErrorTopic", output.error_topic)) if value}
    if topics:
        out["NotificationConfig"] = topics
    request: dict[str, Any] = {"OutputConfig": out}
    if output.max_concurrent:
        request["ClientConfig"] = {"MaxConcurrentInvocationsPerInstance": output.max_concurrent}
    return {"AsyncInferenceConfig": request}


def alarm_name(endpoint: str, variant: str) -> str:
    """The name of the alarm that scales `variant` out from 0 instances."""
    return f"{endpoint}-{variant}-{SCALE_OUT_POLICY}"


def scaling_requests(endpoint: str, variant: str, scaling: autoscaling.Scaling,
                     target_backlog: float = TARGET_BACKLOG) -> list[tuple[str, str, dict[str, Any]]]:
    """The requests that scale `variant` of an asynchronous endpoint between `scaling`'s MIN (0 allowed)
    and MAX instances, as (service, operation, parameters), in order: the scalable target, the
    target-tracking policy on the backlog per instance, the step policy that adds one instance, and
    the alarm on HasBacklogWithoutCapacity that runs it (its AlarmActions hold STEP_POLICY_ARN).

    The shapes and figures are AWS's (async-inference-autoscale.html): the alarm fires when the
    metric's 1-minute average is >= 1 for 2 minutes running; the step policy adds 1 instance at
    most every `scaling.scale_out_cooldown` seconds.
    """
    target = autoscaling.target_key(autoscaling.resource_id(endpoint, variant))
    dimensions = [{"Name": "EndpointName", "Value": endpoint}]
    return [
        ("application-autoscaling", "RegisterScalableTarget",
         {**target, "MinCapacity": scaling.min_capacity, "MaxCapacity": scaling.max_capacity}),
        ("application-autoscaling", "PutScalingPolicy", {
            **target, "PolicyName": BACKLOG_POLICY, "PolicyType": "TargetTrackingScaling",
            "TargetTrackingScalingPolicyConfiguration": {
                "TargetValue": float(target_backlog),
                "CustomizedMetricSpecification": {"MetricName": BACKLOG_METRIC, "Namespace": CLOUDWATCH_NAMESPACE,
                                                  "Dimensions": dimensions, "Statistic": "Average"},
                "ScaleInCooldown": scaling.scale_in_cooldown, "ScaleOutCooldown": scaling.scale_out_cooldown}}),
        ("application-autoscaling", "PutScalingPolicy", {
            **target, "PolicyName": SCALE_OUT_POLICY, "PolicyType": "StepScaling",
            "StepScalingPolicyConfiguration": {
                "AdjustmentType": "ChangeInCapacity", "MetricAggregationType": "Average",
                "Cooldown": scaling.scale_out_cooldown,
                "StepAdjustments": [{"MetricIntervalLowerBound": 0.0, "ScalingAdjustment": 1}]}}),
        ("cloudwatch", "PutMetricAlarm", {
            "AlarmName": alarm_name(endpoint, variant),
            "AlarmDescription": f"requests queued for endpoint {endpoint} and no instance: scale {variant} out",
            "MetricName": NO_CAPACITY_METRIC, "Namespace": CLOUDWATCH_NAMESPACE, "Dimensions": dimensions,
            "Statistic": "Average", "Period": 60, "EvaluationPeriods": 2, "DatapointsToAlarm": 2,
            "Threshold": 1.0, "ComparisonOperator": "GreaterThanOrEqualToThreshold", "TreatMissingData": "missing",
            "AlarmActions": [STEP_POLICY_ARN]}),
    ]
