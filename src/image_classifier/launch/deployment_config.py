"""UpdateEndpoint's DeploymentConfig: blue/green traffic routing and rollback alarms, within SageMaker's limits.

The limits are the API reference's (API_TrafficRoutingConfig, API_BlueGreenUpdatePolicy,
API_AutoRollbackConfig), and the exclusions those of "Deployment guardrails: Exclusions":
blue/green with canary or linear routing works for serverless and multi-variant endpoints (only
rolling deployments, which this project does not make, exclude them); Inf1 instances and
Marketplace containers fall back to all at once, without baking.
"""

from __future__ import annotations

import argparse
import logging
import math
from typing import Any

logger = logging.getLogger(__name__)

WAIT_RANGE = (0, 3600)  # TrafficRoutingConfig.WaitIntervalInSeconds, BlueGreenUpdatePolicy.TerminationWaitInSeconds
MAX_ALARMS = 10  # AutoRollbackConfig.Alarms
# --traffic kind → (its form, TrafficRoutingConfig.Type, the CapacitySize key and the percent of the
# fleet it may be: CanarySize at most 50, LinearStepSize 10 to 50)
ROUTINGS = {"all-at-once": ("all-at-once[:WAIT_S]", "ALL_AT_ONCE", None, None),
            "canary": ("canary:PERCENT:WAIT_S", "CANARY", "CanarySize", (1, 50)),
            "linear": ("linear:PERCENT:WAIT_S", "LINEAR", "LinearStepSize", (10, 50))}


def traffic_routing(text: str) -> dict[str, Any]:
    """argparse type: `all-at-once[:WAIT_S]`, `canary:PERCENT:WAIT_S` or `linear:PERCENT:WAIT_S`.

    Returns:
        the TrafficRoutingConfig, its step sizes a percent of the fleet (CAPACITY_PERCENT).

    Raises:
        argparse.ArgumentTypeError: another form, or a number outside what SageMaker accepts.
    """
    kind, *numbers = text.split(":")
    if kind not in ROUTINGS:
        raise argparse.ArgumentTypeError(f"{text!r}: write {' or '.join(form for form, *_ in ROUTINGS.values())}")
    form, routing_type, size_key, percent_range = ROUTINGS[kind]
    if len(numbers) not in ((2,) if size_key else (0, 1)) or not all(n.isdigit() for n in numbers):
        raise argparse.ArgumentTypeError(f"{text!r}: write {form}")
    *percent, wait = [int(n) for n in numbers] or [0]
    if not WAIT_RANGE[0] <= wait <= WAIT_RANGE[1]:
        raise argparse.ArgumentTypeError(f"{text!r}: WAIT_S is {WAIT_RANGE[0]} to {WAIT_RANGE[1]} seconds")
    routing = {"Type": routing_type, "WaitIntervalInSeconds": wait}
    if size_key:
        low, high = percent_range
        if not low <= percent[0] <= high:
            raise argparse.ArgumentTypeError(f"{text!r}: a {kind} step is {low} to {high} percent of the fleet")
        routing[size_key] = {"Type": "CAPACITY_PERCENT", "Value": percent[0]}
    return routing


def seconds_to_wait(text: str) -> int:
    """argparse type for --termination-wait: whole seconds within WAIT_RANGE."""
    if not text.isdigit() or not WAIT_RANGE[0] <= int(text) <= WAIT_RANGE[1]:
        raise argparse.ArgumentTypeError(f"must be {WAIT_RANGE[0]} to {WAIT_RANGE[1]} seconds, got {text!r}")
    return int(text)


def add_deployment_arguments(parser: argparse.ArgumentParser) -> None:
    """--traffic, --termination-wait and --rollback-alarm, in a group of their own."""
    group = parser.add_argument_group("deployment (blue/green and rollback)")
    group.add_argument("--traffic", type=traffic_routing, default="all-at-once", metavar="SPEC",
                       help="all-at-once[:WAIT_S], canary:PERCENT:WAIT_S or linear:PERCENT:WAIT_S: traffic moves "
                            "to the new fleet at once, in a canary of PERCENT of the fleet then the rest, or in "
                            "steps of PERCENT; WAIT_S seconds after each step, while the --rollback-alarm alarms "
                            "watch (default: %(default)s)")
    group.add_argument("--termination-wait", type=seconds_to_wait, default=0, metavar="SECONDS",
                       help="keep the old fleet this long after the shift (default: %(default)s)")
    group.add_argument("--rollback-alarm", action="append", default=[], metavar="ALARM",
                       help=f"CloudWatch alarm that rolls the update back (repeatable, at most {MAX_ALARMS})")


def deployment_config(routing: dict[str, Any], termination_wait: int, alarms: list[str]) -> dict[str, Any]:
    """The DeploymentConfig: blue/green with `routing`, auto-rollback on `alarms` when there are any."""
    config = {"BlueGreenUpdatePolicy": {"TrafficRoutingConfiguration": routing,
                                        "TerminationWaitInSeconds": termination_wait}}
    if alarms:
        config["AutoRollbackConfiguration"] = {"Alarms": [{"AlarmName": alarm} for alarm in alarms]}
    return config


def check_deployment(routing: dict[str, Any], alarms: list[str], variants: list[dict[str, Any]]) -> None:
    """Refuse what SageMaker refuses; warn where it silently shifts all at once (Inf1 `variants`).

    Raises:
        ValueError: more than MAX_ALARMS alarms.
    """
    if len(alarms) > MAX_ALARMS:
        raise ValueError(f"SageMaker takes at most {MAX_ALARMS} --rollback-alarm, got {len(alarms)}")
    guarded = routing["Type"] != "ALL_AT_ONCE" or alarms
    if guarded and any(v.get("InstanceType", "").startswith("ml.inf1.") for v in variants):
        logger.warning("Inf1 instances: SageMaker ignores --traffic and --rollback-alarm and shifts all at once")


def planned_seconds(routing: dict[str, Any], termination_wait: int) -> int:
    """The waits the deployment itself schedules: after each traffic step, then before terminating the old fleet."""
    steps = 1
    if "LinearStepSize" in routing:
        steps = math.ceil(100 / routing["LinearStepSize"]["Value"]) - 1
    return steps * routing["WaitIntervalInSeconds"] + termination_wait
