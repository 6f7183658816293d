"""launch.deployment_config: --traffic specs within SageMaker's limits, and the DeploymentConfig they make."""

import argparse

import pytest

from image_classifier.launch.deployment_config import deployment_config, planned_seconds, traffic_routing


@pytest.mark.parametrize("spec, routing", [
    ("all-at-once", {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 0}),
    ("all-at-once:600", {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 600}),
    ("canary:50:3600", {"Type": "CANARY", "WaitIntervalInSeconds": 3600,
                        "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 50}}),
    ("linear:10:0", {"Type": "LINEAR", "WaitIntervalInSeconds": 0,
                     "LinearStepSize": {"Type": "CAPACITY_PERCENT", "Value": 10}}),
])
def test_traffic_routing(spec, routing):
    assert traffic_routing(spec) == routing


@pytest.mark.parametrize("spec", ["canary:51:60", "canary:0:60", "linear:9:60", "linear:60:60", "linear:20:3601",
                                  "canary:10", "canary", "all-at-once:1:2", "blue-green", "linear:x:60"])
def test_traffic_routing_refused(spec):
    with pytest.raises(argparse.ArgumentTypeError):
        traffic_routing(spec)


def test_deployment_config_adds_alarms_only_when_given():
    routing = traffic_routing("all-at-once")
    assert deployment_config(routing, 0, []) == {
        "BlueGreenUpdatePolicy": {"TrafficRoutingConfiguration": routing, "TerminationWaitInSeconds": 0}}
    assert deployment_config(routing, 60, ["a"])["AutoRollbackConfiguration"] == {"Alarms": [{"AlarmName": "a"}]}


@pytest.mark.parametrize("spec, termination_wait, seconds", [
    ("all-at-once", 0, 0), ("all-at-once:600", 120, 720), ("canary:10:300", 0, 300), ("linear:25:60", 30, 210),
])
def test_planned_seconds(spec, termination_wait, seconds):
    assert planned_seconds(traffic_routing(spec), termination_wait) == seconds
