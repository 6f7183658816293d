"""deploy.py --data-capture and --dashboard against moto_server: the endpoint config's DataCaptureConfig,
the dashboard's graphs, the alarms, --delete removing them, dry runs, refusals."""

import json

import boto3
import pytest

from tests.launch.test_deploy import BASE, MODEL_DATA, exit_code, operations, run, sm

TOPIC = "arn:aws:sns:us-east-1:123456789012:ic-alarms"


def cloudwatch():
    return boto3.client("cloudwatch", region_name="us-east-1")


def test_data_capture_of_requests_and_responses(aws, received, capsys):
    code, result = run(capsys, "--name", "ic-capture", *BASE, "--model-data", MODEL_DATA,
                       "--data-capture", "s3://ic-capture/endpoint", "--capture-percent", "35")
    assert code == 0
    sent = received("CreateEndpointConfig")[0]["body"]["DataCaptureConfig"]
    assert sent == {"EnableCapture": True, "InitialSamplingPercentage": 35,
                    "DestinationS3Uri": "s3://ic-capture/endpoint",
                    "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
                    "CaptureContentTypeHeader": {"JsonContentTypes": ["application/json"]}}
    stored = sm().describe_endpoint_config(EndpointConfigName=result[0]["EndpointConfigName"])
    assert stored["DataCaptureConfig"]["DestinationS3Uri"] == "s3://ic-capture/endpoint"


def test_data_capture_default_percent(aws, received, capsys):
    code, requests = run(capsys, "--name", "ic-capture-dry", *BASE, "--model-data", MODEL_DATA,
                         "--data-capture", "s3://ic-capture/endpoint", "--dry-run")
    assert code == 0 and received() == []
    assert requests[1]["DataCaptureConfig"]["InitialSamplingPercentage"] == 20  # the SageMaker SDK's default


def dashboard_metrics(body: dict) -> dict[str, set]:
    """Graph title → the (namespace, metric, endpoint, variant, statistic) of its lines."""
    graphs = {}
    for widget in body["widgets"]:
        if widget["type"] == "text":  # the note that deploy.py made it (monitoring.MARKER)
            continue
        properties = widget["properties"]
        graphs[properties["title"]] = {
            (m[0], m[1], m[3], m[5], m[6].get("stat", properties["stat"])) for m in properties["metrics"]}
    return graphs


def test_dashboard_and_alarms_then_delete(aws, received, capsys):
    code, result = run(capsys, "--name", "ic-watch", *BASE, "--variant", f"a={MODEL_DATA}",
                       "--variant", f"b={MODEL_DATA}", "--dashboard", "--alarm-topic", TOPIC,
                       "--alarm-p99-ms", "250")
    assert code == 0 and result[0]["Dashboards"] == ["ic-watch"]
    body = json.loads(cloudwatch().get_dashboard(DashboardName="ic-watch")["DashboardBody"])
    graphs = dashboard_metrics(body)
    sm_ns, instances = "AWS/SageMaker", "/aws/sagemaker/Endpoints"
    for variant in ("a", "b"):
        assert (sm_ns, "Invocations", "ic-watch", variant, "Sum") in graphs["Invocations"]
        assert {(sm_ns, "ModelLatency", "ic-watch", variant, p) for p in ("p50", "p99")} <= \
            graphs["Model latency (microseconds)"]
        assert (sm_ns, "Invocation4XXErrors", "ic-watch", variant, "Sum") in graphs["4xx errors"]
        assert (sm_ns, "Invocation5XXErrors", "ic-watch", variant, "Sum") in graphs["5xx errors"]
        assert (instances, "CPUUtilization", "ic-watch", variant, "Average") in \
            graphs["CPU utilization per instance (%, summed over cores)"]
        assert (instances, "MemoryUtilization", "ic-watch", variant, "Average") in \
            graphs["Memory utilization per instance (%)"]
    assert all(w["properties"]["region"] == "us-east-1" for w in body["widgets"] if w["type"] == "metric")

    alarms = {a["AlarmName"]: a for a in cloudwatch().describe_alarms(AlarmNames=result[0]["Alarms"])["MetricAlarms"]}
    assert sorted(alarms) == sorted(result[0]["Alarms"]) == [
        "ic-watch-a-5xx-rate", "ic-watch-a-model-latency-p99", "ic-watch-b-5xx-rate", "ic-watch-b-model-latency-p99"]
    errors, latency = alarms["ic-watch-b-5xx-rate"], alarms["ic-watch-b-model-latency-p99"]
    assert (errors["MetricName"], errors["Statistic"], errors["Threshold"]) == ("Invocation5XXErrors", "Average", 0.05)
    assert (latency["MetricName"], latency["ExtendedStatistic"], latency["Threshold"]) == (
        "ModelLatency", "p99", 250_000.0)  # microseconds
    for alarm in alarms.values():
        assert alarm["AlarmActions"] == [TOPIC] and alarm["Namespace"] == "AWS/SageMaker"
        assert {(d["Name"], d["Value"]) for d in alarm["Dimensions"]} == {
            ("EndpointName", "ic-watch"), ("VariantName", alarm["AlarmName"].split("-")[2])}

    before = len(operations(received))
    code, deleted = run(capsys, "--name", "ic-watch", "--delete", "--no-wait")
    assert code == 0 and sorted(deleted[0]["AlarmsAndDashboards"]) == sorted([*result[0]["Alarms"], "ic-watch"])
    ops = operations(received)[before:]
    assert ops.index("DeleteAlarms") < ops.index("DeleteEndpoint") and "DeleteDashboards" in ops
    assert cloudwatch().describe_alarms(AlarmNames=result[0]["Alarms"])["MetricAlarms"] == []
    assert "ic-watch" not in [d["DashboardName"] for d in cloudwatch().list_dashboards()["DashboardEntries"]]


def test_dashboard_dry_run_sends_nothing(aws, received, capsys):
    code, requests = run(capsys, "--name", "ic-watch-dry", *BASE, "--model-data", MODEL_DATA, "--dashboard",
                         "--dry-run")
    assert code == 0 and received() == []
    dashboard, errors, latency = requests[3:]
    assert dashboard["DashboardName"] == "ic-watch-dry" and "widgets" in json.loads(dashboard["DashboardBody"])
    assert errors["Threshold"] == 0.05 and latency["Threshold"] == 1_000_000.0  # the defaults: 5 %, 1,000 ms
    assert "AlarmActions" not in errors  # no --alarm-topic


def test_delete_without_dashboard_or_alarms_deletes_none(aws, received, capsys):
    code, _ = run(capsys, "--name", "ic-plain", *BASE, "--model-data", MODEL_DATA)
    assert code == 0
    code, deleted = run(capsys, "--name", "ic-plain", "--delete", "--no-wait")
    assert code == 0 and deleted[0]["AlarmsAndDashboards"] == []
    assert not {"DeleteAlarms", "DeleteDashboards"} & set(operations(received))


@pytest.mark.parametrize("args, words", [
    (["--capture-percent", "0", "--data-capture", "s3://b/c"], "--capture-percent takes 1-100"),
    (["--capture-percent", "101", "--data-capture", "s3://b/c"], "--capture-percent takes 1-100"),
    (["--capture-percent", "50"], "only goes with --data-capture"),
    (["--data-capture", "b/c"], "--data-capture takes an S3 prefix"),
    (["--data-capture", "s3://b/c", "--serverless", "2048:5"], "serverless endpoint cannot capture"),
    (["--alarm-topic", TOPIC], "only go with --dashboard"),
    (["--dashboard", "--alarm-topic", "ic-alarms"], "SNS topic ARN"),
    (["--dashboard", "--alarm-error-rate", "1.5"], "0 <= R < 1"),
    (["--dashboard", "--alarm-p99-ms", "0"], "--alarm-p99-ms must be a number above 0"),
    (["--dashboard", "--alarm-p99-ms", "inf"], "--alarm-p99-ms must be a number above 0"),
    (["--data-capture", "s3:///c"], "--data-capture takes an S3 prefix"),
])
def test_monitoring_refusals_send_nothing(received, capsys, args, words):
    assert exit_code(*BASE, "--model-data", MODEL_DATA, *args) == 2
    assert words in capsys.readouterr().err
    assert received() == []


def test_a_caller_without_cloudwatch_permissions_still_deletes():
    """DescribeAlarms and ListDashboards denied: nothing of CloudWatch's is deleted, and no error."""
    from botocore.stub import Stubber

    from image_classifier.launch import endpoint_extras

    client = boto3.client("cloudwatch", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    with Stubber(client) as stub:
        stub.add_client_error("describe_alarms", "AccessDenied", "not authorized to cloudwatch:DescribeAlarms")
        stub.add_client_error("list_dashboards", "AccessDenied", "not authorized to cloudwatch:ListDashboards")
        assert endpoint_extras.deletions(client, "ic", ["AllTraffic"]) == []
    with Stubber(client) as stub:
        stub.add_client_error("describe_alarms", "Throttling", "slow down")
        with pytest.raises(client.exceptions.ClientError, match="Throttling"):
            endpoint_extras.deletions(client, "ic", ["AllTraffic"])


def test_a_rollback_deletes_the_alarms_and_dashboard_the_run_made(aws):
    from image_classifier.launch import deploy

    cw = cloudwatch()
    cw.put_dashboard(DashboardName="ic-rolled", DashboardBody=json.dumps({"widgets": []}))
    cw.put_metric_alarm(AlarmName="ic-rolled-AllTraffic-5xx-rate", MetricName="Invocation5XXErrors",
                        Namespace="AWS/SageMaker", Statistic="Average", Period=60, EvaluationPeriods=1,
                        Threshold=0.05, ComparisonOperator="GreaterThanThreshold")
    said = deploy.roll_back(boto3.Session(region_name="us-east-1"),
                            [("alarm", "ic-rolled-AllTraffic-5xx-rate"), ("dashboard", "ic-rolled")])
    assert "alarm ic-rolled-AllTraffic-5xx-rate" in said and "dashboard ic-rolled" in said
    assert cw.describe_alarms(AlarmNames=["ic-rolled-AllTraffic-5xx-rate"])["MetricAlarms"] == []
    assert "ic-rolled" not in [d["DashboardName"] for d in cw.list_dashboards()["DashboardEntries"]]


@pytest.mark.parametrize("kind", ["async", "serverless"])
def test_the_dashboard_draws_what_the_endpoints_kind_publishes(kind):
    """An asynchronous endpoint publishes no Invocations (async-inference-monitor): InvocationsProcessed and
    the queue instead; a serverless one has no instances of yours: no per-instance graphs."""
    from image_classifier.launch import monitoring

    body = monitoring.dashboard_body("ic", ["AllTraffic"], "us-east-1", asynchronous=kind == "async",
                                     serverless=kind == "serverless")
    assert monitoring.is_ours(json.dumps(body))
    body["widgets"] = [w for w in body["widgets"] if w["type"] == "metric"]
    titles = [w["properties"]["title"] for w in body["widgets"]]
    names = {m[1] for w in body["widgets"] for m in w["properties"]["metrics"]}
    instance_graphs = [t for t in titles if "per instance" in t]
    if kind == "async":
        assert "Invocations" not in names and "InvocationsProcessed" in names
        queue = [m for w in body["widgets"] for m in w["properties"]["metrics"] if m[1].endswith("Capacity")
                 or m[1] == "ApproximateBacklogSize"]
        assert queue == [["AWS/SageMaker", "ApproximateBacklogSize", "EndpointName", "ic"],
                         ["AWS/SageMaker", "HasBacklogWithoutCapacity", "EndpointName", "ic"]]
        assert len(instance_graphs) == 2
    else:
        assert "Invocations" in names and "InvocationsProcessed" not in names and instance_graphs == []
    plain = monitoring.dashboard_body("ic", ["AllTraffic"], "us-east-1")
    assert {m[1] for w in plain["widgets"][1:] for m in w["properties"]["metrics"]} >= {"Invocations", "CPUUtilization"}


def test_a_dashboard_deploy_py_did_not_make_is_neither_replaced_nor_deleted(aws, received, capsys):
    """PutDashboard replaces a dashboard wholesale: one of the endpoint's name without deploy.py's note
    stops --dashboard before anything is created, and --delete leaves it."""
    from image_classifier.launch import monitoring

    theirs = json.dumps({"widgets": [{"type": "text", "x": 0, "y": 0, "width": 6, "height": 2,
                                      "properties": {"markdown": "the team's own"}}]})
    cloudwatch().put_dashboard(DashboardName="ic-taken", DashboardBody=theirs)
    before = len(operations(received))
    code = exit_code("--name", "ic-taken", *BASE, "--model-data", MODEL_DATA, "--dashboard")
    assert code == 2 and "exists that deploy.py did not make" in capsys.readouterr().err
    assert not {"CreateModel", "PutDashboard"} & set(operations(received)[before:])
    code, _ = run(capsys, "--name", "ic-taken", *BASE, "--model-data", MODEL_DATA)  # no --dashboard: allowed
    assert code == 0
    code, deleted = run(capsys, "--name", "ic-taken", "--delete", "--no-wait")
    assert code == 0 and deleted[0]["AlarmsAndDashboards"] == []
    assert cloudwatch().get_dashboard(DashboardName="ic-taken")["DashboardBody"] == theirs
    # one deploy.py made (left by an endpoint deleted without this project) is replaced by a new deploy
    ours = monitoring.dashboard_body("ic-again", ["AllTraffic"], "us-east-1")
    cloudwatch().put_dashboard(DashboardName="ic-again", DashboardBody=json.dumps(ours))
    assert run(capsys, "--name", "ic-again", *BASE, "--model-data", MODEL_DATA, "--dashboard")[0] == 0
