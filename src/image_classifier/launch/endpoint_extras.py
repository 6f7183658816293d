"""What deploy.py adds beside an endpoint (scalable targets and their policies, CloudWatch alarms, the
dashboard): sent in order and recorded for a rollback, and found again and removed by `--delete`."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from botocore import xform_name
from botocore.exceptions import ClientError

from image_classifier.launch import async_inference, autoscaling, monitoring

logger = logging.getLogger(__name__)
# the error codes of a caller without the permission (CloudWatch answers AccessDenied, services on
# the JSON protocol AccessDeniedException): deleting the endpoint goes on without the extras
DENIED = ("AccessDenied", "AccessDeniedException")

Step = tuple[str, str, dict[str, Any]]  # (service as boto3.client takes it, operation, parameters)
# what each creating operation leaves behind, as the (kind, name) a rollback deletes
_CREATES = {"RegisterScalableTarget": ("scalable target", "ResourceId"), "PutMetricAlarm": ("alarm", "AlarmName"),
            "PutDashboard": ("dashboard", "DashboardName")}


def send(boto_session, steps: list[Step], created: list[tuple[str, str]]) -> None:
    """Send `steps` in order, appending to `created` the (kind, name) of what each one made.

    An alarm whose AlarmActions hold `async_inference.STEP_POLICY_ARN` gets the PolicyARN of the
    last PutScalingPolicy instead (the step policy it runs: `async_inference.scaling_requests`).

    Raises:
        ClientError: a request was refused; what came before stays in `created`.
    """
    clients: dict[str, Any] = {}
    policy_arn = async_inference.STEP_POLICY_ARN  # stays the placeholder on a dry run (answers are {})
    for service, operation, params in steps:
        client = clients.setdefault(service, boto_session.client(service))
        if async_inference.STEP_POLICY_ARN in params.get("AlarmActions", []):
            params = {**params, "AlarmActions": [policy_arn if a == async_inference.STEP_POLICY_ARN else a
                                                 for a in params["AlarmActions"]]}
        answer = getattr(client, xform_name(operation))(**params)
        if operation == "PutScalingPolicy":
            policy_arn = answer.get("PolicyARN", policy_arn)
        if operation in _CREATES:
            kind, key = _CREATES[operation]
            created.append((kind, params[key]))


def deleters(boto_session) -> dict[str, Callable[[str], Any]]:
    """kind → how a rollback deletes one of that kind by name, for what `send` records."""
    scaling, cloudwatch = boto_session.client("application-autoscaling"), boto_session.client("cloudwatch")
    return {
        "scalable target": lambda name: scaling.deregister_scalable_target(**autoscaling.target_key(name)),
        "alarm": lambda name: cloudwatch.delete_alarms(AlarmNames=[name]),
        "dashboard": lambda name: cloudwatch.delete_dashboards(DashboardNames=[name]),
    }


def _unless_denied(read: Callable[[], Any], warning: str, *args) -> Any:
    """`read()`, or None with `warning` (formatted with the error, then `args`) when the caller lacks
    the permission (DENIED); any other error is raised."""
    try:
        return read()
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in DENIED:
            raise
        logger.warning(warning, exc, *args)
        return None


def _dashboard(cloudwatch, endpoint: str, warning: str) -> str | None:
    """The DashboardBody of the dashboard named `endpoint`, None if there is none or it cannot be listed."""
    listed = _unless_denied(lambda: cloudwatch.list_dashboards(DashboardNamePrefix=endpoint), warning, endpoint)
    if endpoint not in [d["DashboardName"] for d in (listed or {}).get("DashboardEntries", [])]:
        return None
    return cloudwatch.get_dashboard(DashboardName=endpoint).get("DashboardBody", "")


def deletions(cloudwatch, endpoint: str, variants: list[str]) -> list[tuple[Any, str, dict[str, Any]]]:
    """The requests that remove the alarms and the dashboard deploy.py made for `endpoint`, those that
    exist (none is no error), as (client, operation, parameters): alarms first, as they name the
    scaling policies that go with the scalable targets after them."""
    names = [name for v in variants for name in [*monitoring.alarm_names(endpoint, v),
                                                   async_inference.alarm_name(endpoint, v)]]
    alarms = _unless_denied(lambda: cloudwatch.describe_alarms(AlarmNames=names),
                            "cannot read the alarms (%s): %s, if any, are left", ", ".join(names))
    found = [a["AlarmName"] for a in (alarms or {}).get("MetricAlarms", []) if a["AlarmName"] in names]
    steps = [(cloudwatch, "DeleteAlarms", {"AlarmNames": found})] if found else []
    body = _dashboard(cloudwatch, endpoint, "cannot list the dashboards (%s): dashboard %s, if any, is left")
    if body is not None:
        if monitoring.is_ours(body):
            steps.append((cloudwatch, "DeleteDashboards", {"DashboardNames": [endpoint]}))
        else:
            logger.warning("dashboard %s was not made by deploy.py (no %r widget): left", endpoint, monitoring.MARKER)
    return steps


def check_dashboard_free(cloudwatch, endpoint: str) -> None:
    """Raises: ValueError: a dashboard named `endpoint` exists that deploy.py did not make (PutDashboard
    would replace it)."""
    body = _dashboard(cloudwatch, endpoint, "cannot list the dashboards (%s): a dashboard named %s, if any, "
                                            "is replaced")
    if body is not None and not monitoring.is_ours(body):
        raise ValueError(f"--dashboard: a CloudWatch dashboard named {endpoint} exists that deploy.py did not make: "
                         "give the endpoint another --name, or delete or rename that dashboard")
