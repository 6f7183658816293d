"""Application Auto Scaling for an endpoint's instance variants: a target-tracking policy on invocations per instance.

Each variant is a scalable target (`endpoint/<endpoint>/variant/<variant>`, dimension
`sagemaker:variant:DesiredInstanceCount`) with one target-tracking policy on the predefined
metric `SageMakerVariantInvocationsPerInstance`: the average number of times per minute each of
the variant's instances is invoked, as CloudWatch counts it. The policy adds instances when that
average stays above the target and removes them when it stays below
(https://docs.aws.amazon.com/sagemaker/latest/dg/endpoint-auto-scaling-add-code-define.html).

Choosing the target (https://docs.aws.amazon.com/sagemaker/latest/dg/endpoint-scaling-loadtest.html):
load-test one instance of the variant with more and more parallel requests of the size clients
send, and take the requests per second it serves before latency rises or errors appear
(MAX_RPS); then target = MAX_RPS * SAFETY_FACTOR * 60, the 60 turning seconds into CloudWatch's
minutes. AWS suggests starting with SAFETY_FACTOR = 0.5 (e.g. 8 requests/s at peak → 240), then
checking with traffic that rises and falls that the variant scales as wanted.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

logger = logging.getLogger(__name__)

NAMESPACE = "sagemaker"
DIMENSION = "sagemaker:variant:DesiredInstanceCount"
METRIC = "SageMakerVariantInvocationsPerInstance"
POLICY_NAME = "invocations-per-instance"
# Cooldowns, in seconds. Without them Application Auto Scaling waits 300 s both ways
# (https://docs.aws.amazon.com/sagemaker/latest/dg/endpoint-auto-scaling-prerequisites.html);
# AWS's example policy scales in more slowly than out, 600 s against 300 s
# (endpoint-auto-scaling-add-code-define.html), so that a dip in traffic does not remove
# instances a returning peak needs again: the defaults here follow that example.
SCALE_IN_COOLDOWN = 600
SCALE_OUT_COOLDOWN = 300


@dataclass(frozen=True)
class Scaling:
    """How one variant scales: between `min_capacity` and `max_capacity` instances (at least 1 for a
    real-time variant; 0 for an asynchronous one), keeping `target_invocations` invocations per
    instance per minute (real-time) or `async_inference.TARGET_BACKLOG`-style queued requests per
    instance (asynchronous: deploy.py passes that target apart)."""

    min_capacity: int
    max_capacity: int
    target_invocations: float
    scale_in_cooldown: int = SCALE_IN_COOLDOWN
    scale_out_cooldown: int = SCALE_OUT_COOLDOWN


def parse_capacity(text: str) -> tuple[int, int]:
    """argparse type: `MIN:MAX` instances, 0 <= MIN <= MAX (MIN 0 for an asynchronous endpoint only:
    deploy.py checks that).

    Raises:
        argparse.ArgumentTypeError: not two whole numbers, MIN < 0, MAX < 1 or MIN > MAX.
    """
    low, _, high = text.partition(":")
    try:
        low_n, high_n = int(low), int(high)
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes MIN:MAX instances, e.g. 1:4, got {text!r}") from None
    if low_n < 0:
        raise argparse.ArgumentTypeError(f"MIN must be at least 0, got {low_n}")
    if high_n < 1:
        raise argparse.ArgumentTypeError(f"MAX must be at least 1 (an endpoint that may never run an instance "
                                         f"answers nothing), got {high_n}")
    if low_n > high_n:
        raise argparse.ArgumentTypeError(f"MIN must not exceed MAX, got {low_n}:{high_n}")
    return low_n, high_n


def resource_id(endpoint: str, variant: str) -> str:
    """The scalable target's ResourceId for `variant` of `endpoint`."""
    return f"endpoint/{endpoint}/variant/{variant}"


def target_key(target_id: str) -> dict[str, str]:
    """The fields naming a scalable target in Application Auto Scaling's requests: the whole of a
    DeregisterScalableTarget, which deletes the target's policies too."""
    return {"ServiceNamespace": NAMESPACE, "ResourceId": target_id, "ScalableDimension": DIMENSION}


def requests(endpoint: str, variant: str, scaling: Scaling) -> list[tuple[str, dict[str, Any]]]:
    """The RegisterScalableTarget and PutScalingPolicy requests for one variant, in that order."""
    target = target_key(resource_id(endpoint, variant))
    return [
        ("RegisterScalableTarget", {**target, "MinCapacity": scaling.min_capacity,
                                    "MaxCapacity": scaling.max_capacity}),
        ("PutScalingPolicy", {**target, "PolicyName": POLICY_NAME, "PolicyType": "TargetTrackingScaling",
                              "TargetTrackingScalingPolicyConfiguration": {
                                  "TargetValue": float(scaling.target_invocations),
                                  "PredefinedMetricSpecification": {"PredefinedMetricType": METRIC},
                                  "ScaleInCooldown": scaling.scale_in_cooldown,
                                  "ScaleOutCooldown": scaling.scale_out_cooldown}}),
    ]


def registered(client, endpoint: str, variants: list[str]) -> list[str]:
    """The ResourceIds of those `variants` that are scalable targets; none is no error.

    A caller denied DescribeScalableTargets gets a warning and an empty list: deleting the
    endpoint then deregisters its targets where that caller may
    (https://docs.aws.amazon.com/sagemaker/latest/dg/endpoint-delete-with-scaling.html).
    """
    try:
        targets = client.describe_scalable_targets(
            ServiceNamespace=NAMESPACE, ResourceIds=[resource_id(endpoint, v) for v in variants],
            ScalableDimension=DIMENSION)["ScalableTargets"]
    except ClientError as exc:
        if "AccessDenied" not in exc.response.get("Error", {}).get("Code", ""):
            raise
        logger.warning("cannot list the endpoint's scalable targets (%s): left to DeleteEndpoint", exc)
        return []
    return [t["ResourceId"] for t in targets]
