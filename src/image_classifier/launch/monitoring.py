"""Watching an endpoint: data capture in its endpoint config, a CloudWatch dashboard and alarms.

Data capture (https://docs.aws.amazon.com/sagemaker/latest/dg/model-monitor-data-capture.html):
SageMaker writes a sample of the requests and responses, as JSON Lines, under an S3 prefix. A body
whose content type is listed in CaptureContentTypeHeader is captured as text; any other is
captured base64: the response (JSON) is listed, so the images go base64, the predictions as text.

The dashboard (named after the endpoint) and the alarms use the metrics SageMaker publishes
(https://docs.aws.amazon.com/sagemaker/latest/dg/monitoring-cloudwatch.html): in `AWS/SageMaker`,
per variant (dimensions EndpointName, VariantName), Invocations, Invocation4XXErrors,
Invocation5XXErrors (per request: 1 or 0, so their Average is a rate) and ModelLatency
(microseconds); in `/aws/sagemaker/Endpoints`, the instances' CPUUtilization and
MemoryUtilization (percent; CPU is summed over cores, up to 100 % a core), averaged over the
variant's instances. An asynchronous endpoint publishes no Invocations
(https://docs.aws.amazon.com/sagemaker/latest/dg/async-inference-monitor.html: "Any metric not
listed below is not published"): its dashboard counts InvocationsProcessed instead and adds the
queue, ApproximateBacklogSize and HasBacklogWithoutCapacity (dimension EndpointName only). A
serverless endpoint runs on no instances of yours: its dashboard has no per-instance graphs.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from typing import Any

from image_classifier.launch.upload import parse_s3_uri
from image_classifier.serving import content_types

INVOCATIONS_NAMESPACE = "AWS/SageMaker"
INSTANCES_NAMESPACE = "/aws/sagemaker/Endpoints"
CAPTURE_PERCENT = 20  # the SageMaker Python SDK's default sampling_percentage (DataCaptureConfig)
# Alarm thresholds. The 5xx rate and the evaluation (5 one-minute periods, all 5 breaching) are
# CloudWatch's recommended alarm for Invocation5XXErrors (Best_Practice_Recommended_Alarms_AWS_Services,
# SageMaker: Average > 0.05). CloudWatch leaves ModelLatency's threshold to the model; 1,000 ms
# is far above what one request costs this project's models on a CPU (docs/benchmarks), so it
# flags a stalled or overloaded server, not a slow day: set it from a load test of yours.
ERROR_RATE = 0.05
P99_LATENCY_MS = 1000.0
PERIOD, EVALUATION_PERIODS = 60, 5
# the first widget of every dashboard deploy.py makes: --delete removes a dashboard that has it, and
# deploy.py refuses to replace one of the endpoint's name that lacks it (PutDashboard replaces wholesale)
MARKER = "Made by sagemaker-image-classifier's deploy.py"
TOPIC_ARN = re.compile(r"^arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256}(\.fifo)?$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """deploy.py's options of data capture, the dashboard and the alarms."""
    capture = parser.add_argument_group("data capture (requests and responses, sampled, to S3)")
    capture.add_argument("--data-capture", metavar="S3_URI",
                         help="capture requests (images base64) and responses (JSON) under this S3 prefix")
    capture.add_argument("--capture-percent", type=int, metavar="N",
                         help=f"percent of the requests captured, 1-100 (default: {CAPTURE_PERCENT}, the SageMaker "
                              "SDK's)")
    watch = parser.add_argument_group("watching (a CloudWatch dashboard named after the endpoint, and alarms)")
    watch.add_argument("--dashboard", action="store_true",
                       help="make the dashboard (invocations, model latency p50/p99, 4xx, 5xx, CPU and memory per "
                            "instance) and alarms on the 5xx rate and the p99 model latency of each variant")
    watch.add_argument("--alarm-topic", metavar="ARN", help="SNS topic the alarms notify")
    watch.add_argument("--alarm-error-rate", type=float, metavar="R",
                       help=f"5xx answers per request that raise the alarm (default: {ERROR_RATE}, CloudWatch's "
                            "recommended alarm)")
    watch.add_argument("--alarm-p99-ms", type=float, metavar="MS",
                       help=f"p99 model latency in ms that raises the alarm (default: {P99_LATENCY_MS:g})")


def data_capture(args: argparse.Namespace) -> dict[str, Any]:
    """CreateEndpointConfig's `{"DataCaptureConfig": ...}` (`{}` without --data-capture).

    Raises:
        ValueError: --capture-percent outside 1-100 or without --data-capture; not an s3:// prefix;
            --serverless.
    """
    percent = args.capture_percent
    if percent is not None and not 1 <= percent <= 100:
        raise ValueError(f"--capture-percent takes 1-100 (percent of the requests), got {percent}")
    if not args.data_capture:
        if percent is not None:
            raise ValueError("--capture-percent only goes with --data-capture s3://...")
        return {}
    if args.serverless:
        raise ValueError("--data-capture: a serverless endpoint cannot capture data (among Serverless Inference's "
                         "feature exclusions): deploy on instances to capture")
    try:
        parse_s3_uri(args.data_capture)
    except ValueError:
        raise ValueError(f"--data-capture takes an S3 prefix (s3://bucket/prefix), got {args.data_capture!r}") from None
    return {"DataCaptureConfig": {
        "EnableCapture": True, "InitialSamplingPercentage": CAPTURE_PERCENT if percent is None else percent,
        "DestinationS3Uri": args.data_capture,
        "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
        "CaptureContentTypeHeader": {"JsonContentTypes": [content_types.JSON]}}}


def check_watching(args: argparse.Namespace) -> None:
    """Raises: ValueError: alarm options without --dashboard, or thresholds that cannot be."""
    given = [flag for flag, value in (("--alarm-topic", args.alarm_topic),
                                      ("--alarm-error-rate", args.alarm_error_rate),
                                      ("--alarm-p99-ms", args.alarm_p99_ms)) if value is not None]
    if given and not args.dashboard:
        raise ValueError(f"{', '.join(given)} only go with --dashboard")
    if args.alarm_error_rate is not None and not 0 <= args.alarm_error_rate < 1:
        raise ValueError(f"--alarm-error-rate is a share of the requests, 0 <= R < 1, got {args.alarm_error_rate}")
    if args.alarm_p99_ms is not None and not (math.isfinite(args.alarm_p99_ms) and args.alarm_p99_ms > 0):
        raise ValueError(f"--alarm-p99-ms must be a number above 0, got {args.alarm_p99_ms}")
    if args.alarm_topic is not None and not TOPIC_ARN.match(args.alarm_topic):
        raise ValueError(f"--alarm-topic takes an SNS topic ARN (arn:aws:sns:REGION:ACCOUNT:NAME), "
                         f"got {args.alarm_topic!r}")


def _metric(namespace: str, name: str, endpoint: str, variant: str, **options) -> list:
    return [namespace, name, "EndpointName", endpoint, "VariantName", variant, options]


def _widget(title: str, metrics: list, region: str, stat: str, y: int, x: int) -> dict[str, Any]:
    return {"type": "metric", "x": x, "y": y, "width": 12, "height": 6,
            "properties": {"title": title, "metrics": metrics, "region": region, "stat": stat, "period": PERIOD,
                           "view": "timeSeries"}}


def dashboard_body(endpoint: str, variants: list[str], region: str, asynchronous: bool = False,
                   serverless: bool = False) -> dict[str, Any]:
    """PutDashboard's DashboardBody (as a dict): a graph a metric, a line per variant (ModelLatency: two).

    `asynchronous`: InvocationsProcessed instead of Invocations, and the queue's two graphs;
    `serverless`: no per-instance CPU and memory graphs (see the module's docstring).
    """
    def lines(namespace: str, name: str, **options) -> list:
        return [_metric(namespace, name, endpoint, v, label=f"{v} {name}", **options) for v in variants]

    latency = [_metric(INVOCATIONS_NAMESPACE, "ModelLatency", endpoint, v, stat=stat, label=f"{v} {stat}")
               for v in variants for stat in ("p50", "p99")]
    invocations = "InvocationsProcessed" if asynchronous else "Invocations"
    graphs = [
        (invocations, lines(INVOCATIONS_NAMESPACE, invocations), "Sum"),
        ("Model latency (microseconds)", latency, "p50"),
        ("4xx errors", lines(INVOCATIONS_NAMESPACE, "Invocation4XXErrors"), "Sum"),
        ("5xx errors", lines(INVOCATIONS_NAMESPACE, "Invocation5XXErrors"), "Sum"),
    ]
    if asynchronous:
        graphs += [(f"Queue: {name}", [[INVOCATIONS_NAMESPACE, name, "EndpointName", endpoint]], stat)
                   for name, stat in (("ApproximateBacklogSize", "Average"),
                                      ("HasBacklogWithoutCapacity", "Maximum"))]
    if not serverless:
        graphs += [
            ("CPU utilization per instance (%, summed over cores)", lines(INSTANCES_NAMESPACE, "CPUUtilization"),
             "Average"),
            ("Memory utilization per instance (%)", lines(INSTANCES_NAMESPACE, "MemoryUtilization"), "Average"),
        ]
    note = {"type": "text", "x": 0, "y": 0, "width": 24, "height": 1,
            "properties": {"markdown": f"{MARKER} for endpoint `{endpoint}`: `deploy.py --name {endpoint} --delete` "
                                       "removes it"}}
    return {"widgets": [note, *(_widget(title, metrics, region, stat, 1 + 6 * (i // 2), 12 * (i % 2))
                                for i, (title, metrics, stat) in enumerate(graphs))]}


def is_ours(body: str) -> bool:
    """Whether a DashboardBody (GetDashboard's JSON text) is one deploy.py made (its MARKER widget)."""
    try:
        widgets = json.loads(body).get("widgets", [])
    except (ValueError, AttributeError):
        return False
    return any(isinstance(w, dict) and str(w.get("properties", {}).get("markdown", "")).startswith(MARKER)
               for w in widgets)


def alarm_names(endpoint: str, variant: str) -> list[str]:
    """The names of the alarms --dashboard makes for `variant`: the 5xx rate, the p99 latency."""
    return [f"{endpoint}-{variant}-5xx-rate", f"{endpoint}-{variant}-model-latency-p99"]


def requests(args: argparse.Namespace, variants: list[str], region: str) -> list[tuple[str, str, dict[str, Any]]]:
    """The PutDashboard and PutMetricAlarm requests of --dashboard, as (service, operation, parameters)."""
    steps = [("cloudwatch", "PutDashboard", {"DashboardName": args.name,
                                             "DashboardBody": json.dumps(dashboard_body(
                                                 args.name, variants, region, asynchronous=bool(args.async_output),
                                                 serverless=bool(args.serverless)))})]
    actions = {"AlarmActions": [args.alarm_topic], "OKActions": [args.alarm_topic]} if args.alarm_topic else {}
    rate = ERROR_RATE if args.alarm_error_rate is None else args.alarm_error_rate
    p99_ms = P99_LATENCY_MS if args.alarm_p99_ms is None else args.alarm_p99_ms
    for variant in variants:
        errors, latency = alarm_names(args.name, variant)
        common = {"Namespace": INVOCATIONS_NAMESPACE, "Period": PERIOD, "EvaluationPeriods": EVALUATION_PERIODS,
                  "DatapointsToAlarm": EVALUATION_PERIODS, "ComparisonOperator": "GreaterThanThreshold",
                  "TreatMissingData": "notBreaching", **actions,
                  "Dimensions": [{"Name": "EndpointName", "Value": args.name},
                                 {"Name": "VariantName", "Value": variant}]}
        steps.append(("cloudwatch", "PutMetricAlarm", {
            "AlarmName": errors, "AlarmDescription": f"over {rate:.1%} of {variant}'s requests answered 5xx",
            "MetricName": "Invocation5XXErrors", "Statistic": "Average", "Threshold": float(rate), **common}))
        steps.append(("cloudwatch", "PutMetricAlarm", {
            "AlarmName": latency, "AlarmDescription": f"{variant}'s p99 model latency over {p99_ms:g} ms",
            "MetricName": "ModelLatency", "ExtendedStatistic": "p99", "Threshold": p99_ms * 1000.0, **common}))
    return steps
