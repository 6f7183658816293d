"""Update a live SageMaker endpoint without downtime: shift traffic, deploy a new model blue/green, or roll back.

Three modes, one a run:

- shift traffic (`--weight NAME=W`, `--instance-count NAME=N`): UpdateEndpointWeightsAndCapacities
  on the endpoint's variants, checked against DescribeEndpoint first;
- blue/green (`--model-data` or `--training-job`): a new Model (the variant's current image, role
  and environment unless overridden), a new EndpointConfig copying the current one with that
  variant's model replaced, then UpdateEndpoint with a DeploymentConfig (traffic routing, rollback
  alarms). The new config names the one it replaces in the tag PREVIOUS_CONFIG_TAG (launch/history.py);
- rollback (`--rollback`): UpdateEndpoint back to the config that tag names, one step a run.

Nothing starts unless the endpoint is InService, and everything is checked before anything is
created. What a run created is deleted again when a later step fails before SageMaker accepted the
update, or when SageMaker rolled the update back (the endpoint ends InService on its old config
with a FailureReason). Once SageMaker accepted an update, stopping this script does not stop it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import secrets
import sys
import time
from collections.abc import Callable
from typing import Any

import boto3
from botocore.exceptions import ClientError

from image_classifier.launch.common import parse_static
from image_classifier.launch.deploy import model_data_of
from image_classifier.launch.deployment_config import (
    add_deployment_arguments,
    check_deployment,
    deployment_config,
    planned_seconds,
)
from image_classifier.launch.dry_run import DryRun
from image_classifier.launch.exit_codes import CLIENT_ERROR, FAILED, INTERRUPTED, LAUNCHER, exit_on
from image_classifier.launch.history import PREVIOUS_CONFIG_TAG, previous_config, previous_tag

logger = logging.getLogger(__name__)

# what a dry run records instead of sending (the deletes: what a failure would undo)
CHANGING = {"sagemaker": ("CreateModel", "CreateEndpointConfig", "UpdateEndpoint", "UpdateEndpointWeightsAndCapacities",
                          "DeleteModel", "DeleteEndpointConfig")}
# EndpointStatus values that change on their own (API_DescribeEndpoint); the others are where an update ends
SETTLING = ("Creating", "Updating", "SystemUpdating", "RollingBack", "Deleting")


def _named(convert: Callable[[str], Any], what: str) -> Callable[[str], tuple[str, Any]]:
    """An argparse type for `NAME=VALUE`, VALUE read by `convert` (ValueError when it is not `what`)."""
    def parse(text: str) -> tuple[str, Any]:
        name, sep, value = text.partition("=")
        try:
            if not (sep and name):
                raise ValueError
            return name, convert(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"write VARIANT={what}, got {text!r}") from None
    return parse


def _weight(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value >= 0):  # DesiredWeight: minimum 0
        raise ValueError
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="update_endpoint.py", description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="image-classifier", help="endpoint name (default: %(default)s)")
    parser.add_argument("--region", default=None, help="AWS region (default: the AWS configuration's)")
    shift = parser.add_argument_group("shift traffic (UpdateEndpointWeightsAndCapacities)")
    shift.add_argument("--weight", action="append", default=[], type=_named(_weight, "WEIGHT>=0"),
                       metavar="VARIANT=WEIGHT", help="a variant's new weight (repeatable)")
    shift.add_argument("--instance-count", action="append", default=[], type=_named(_count, "COUNT>=1"),
                       metavar="VARIANT=COUNT", help="a variant's new instance count (one variant a run)")
    blue_green = parser.add_argument_group("blue/green to a new model (UpdateEndpoint)")
    source = blue_green.add_mutually_exclusive_group()
    source.add_argument("--model-data", help="S3 URI of the new model.tar.gz")
    source.add_argument("--training-job", help="take the model artifacts of this training job")
    blue_green.add_argument("--variant", help="the variant that gets the new model (needed with several variants)")
    blue_green.add_argument("--image", help="serving image URI (default: the variant's current one)")
    blue_green.add_argument("--role", help="IAM role ARN the new model runs as (default: the current model's)")
    blue_green.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                            help="container environment over the current model's (repeatable)")
    rollback = parser.add_argument_group("rollback (UpdateEndpoint)")
    rollback.add_argument("--rollback", action="store_true",
                          help=f"go back to the endpoint config named by the current one's tag {PREVIOUS_CONFIG_TAG}; "
                               "the live instance counts and weights stay")
    rollback.add_argument("--cleanup", action="store_true",
                          help="with --rollback: then delete the config rolled back from and the models only it used")
    add_deployment_arguments(parser)
    waiting = parser.add_argument_group("waiting")
    waiting.add_argument("--wait", action=argparse.BooleanOptionalAction, default=True,
                         help="wait until the endpoint settles (default) and check the outcome")
    waiting.add_argument("--timeout", type=int, default=None, metavar="SECONDS",
                         help="stop waiting after this long (default: 30 minutes plus the deployment's waits)")
    waiting.add_argument("--poll", type=float, default=30.0, metavar="SECONDS",
                         help="seconds between DescribeEndpoint calls (default: %(default)s)")
    parser.add_argument("--dry-run", action="store_true", help="print the requests, send nothing")
    return parser


def mode_of(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str:
    """"shift", "blue-green" or "rollback"; exits through `parser.error` unless exactly one is asked for."""
    asked = [mode for mode, on in (("shift", args.weight or args.instance_count),
                                   ("blue-green", args.model_data or args.training_job),
                                   ("rollback", args.rollback)) if on]
    if len(asked) != 1:
        parser.error("give one of --weight/--instance-count, --model-data/--training-job or --rollback")
    if asked[0] != "blue-green" and (args.variant or args.image or args.role or args.env):
        parser.error("--variant, --image, --role and --env go with --model-data or --training-job")
    if args.cleanup and not args.rollback:
        parser.error("--cleanup goes with --rollback")
    return asked[0]


# what this module deletes → (the client method, its name parameter); the AWS CLI spells them the same
DELETE = {"endpoint-config": ("delete_endpoint_config", "EndpointConfigName"), "model": ("delete_model", "ModelName")}


def delete(sm, kind: str, name: str) -> None:
    """Delete the `kind` (a DELETE key) called `name`; when that fails, log it and leave it."""
    method, parameter = DELETE[kind]
    try:
        getattr(sm, method)(**{parameter: name})
        logger.info("deleted %s %s", kind, name)
    except ClientError as exc:
        logger.warning("could not delete %s %s: %s", kind, name, exc)


class Requests:
    """Sends the requests that change something and remembers what they created.

    On a dry run (a DryRun registered on the client's session) the requests are only recorded,
    and nothing is remembered as created.
    """

    def __init__(self, sm, dry_run: DryRun | None = None):
        self.sm, self.dry_run, self._created = sm, dry_run, []

    def send(self, method: str, params: dict[str, Any], creates: tuple[str, str] | None = None):
        """`sm.<method>(**params)`, which `creates` the (DELETE kind, name) given."""
        answer = getattr(self.sm, method)(**params)
        if creates and not self.dry_run:
            self._created.append(creates)
        return answer

    @property
    def recorded(self) -> list[dict[str, Any]]:
        """What a dry run recorded: `{"operation", "request"}` per request, oldest first."""
        if self.dry_run is None:
            return []
        return [{"operation": r.operation, "request": r.params} for r in self.dry_run.requests]

    def delete_created(self) -> None:
        """Delete what `send` created, newest first."""
        while self._created:
            delete(self.sm, *self._created.pop())


def in_service(sm, name: str) -> dict[str, Any]:
    """DescribeEndpoint of `name`. Raises: ValueError: the endpoint is not InService (nothing may start)."""
    endpoint = sm.describe_endpoint(EndpointName=name)
    if endpoint["EndpointStatus"] != "InService":
        raise ValueError(f"endpoint {name} is {endpoint['EndpointStatus']}, not InService: wait until it settles "
                         f"(aws sagemaker describe-endpoint --endpoint-name {name})")
    return endpoint


def new_name(endpoint_name: str) -> str:
    """`<endpoint>-YYYYmmdd-HHMMSS-xxxx`, at most 63 characters (model and endpoint config names)."""
    return f"{endpoint_name[:41]}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def accepted(sm, operation: str, described: dict[str, Any]) -> dict[str, Any]:
    """The fields of a Describe* answer that `operation` takes as input, empty ones left out."""
    members = sm.meta.service_model.operation_model(operation).input_shape.members
    return {key: value for key, value in described.items() if key in members and value not in (None, {}, [])}


def choose_variant(config: dict[str, Any], asked: str | None) -> str:
    """The variant that gets the new model. Raises: ValueError: unknown, or several and none named."""
    names = [v["VariantName"] for v in config["ProductionVariants"]]
    if asked and asked not in names:
        raise ValueError(f"endpoint config {config['EndpointConfigName']} has no variant {asked!r}; "
                         f"its variants: {', '.join(names)}")
    if not asked and len(names) > 1:
        raise ValueError(f"the endpoint has several variants ({', '.join(names)}): say which gets the new model "
                         "with --variant")
    return asked or names[0]


def deployment(args: argparse.Namespace) -> dict[str, Any]:
    """The DeploymentConfig of --traffic, --termination-wait and --rollback-alarm."""
    return deployment_config(args.traffic, args.termination_wait, args.rollback_alarm)


def settle(sm, args: argparse.Namespace) -> dict[str, Any]:
    """Poll DescribeEndpoint until its status stops changing, one progress line a poll; the last answer.

    Raises:
        TimeoutError: still changing after --timeout (default: 30 minutes plus the planned waits).
    """
    timeout = args.timeout
    if timeout is None:
        timeout = 1800 + planned_seconds(args.traffic, args.termination_wait)
    start = time.monotonic()
    while True:
        endpoint = sm.describe_endpoint(EndpointName=args.name)
        elapsed = time.monotonic() - start
        print(f"{args.name}: {endpoint['EndpointStatus']} on {endpoint['EndpointConfigName']} "
              f"after {elapsed:.0f} s", file=sys.stderr)
        if endpoint["EndpointStatus"] not in SETTLING:
            return endpoint
        if elapsed > timeout:
            raise TimeoutError(f"endpoint {args.name} still {endpoint['EndpointStatus']} after {elapsed:.0f} s")
        time.sleep(args.poll)


def still_running(name: str, undo: str) -> str:
    """What to tell the user when this script stops waiting before SageMaker is done."""
    return (f"SageMaker goes on with the update of {name}: this script stopping does not stop it.\n"
            f"  check:   aws sagemaker describe-endpoint --endpoint-name {name} "
            "--query '[EndpointStatus,EndpointConfigName,FailureReason]'\n"
            f"  undo:    {undo}   (once it is InService)")


def shift_traffic(sm, args: argparse.Namespace, requests: Requests) -> dict[str, Any]:
    """Send UpdateEndpointWeightsAndCapacities for --weight / --instance-count, checked against DescribeEndpoint.

    Raises:
        ValueError: an unknown or repeated variant, every weight zero, instance counts for more than one
            variant or for a serverless one.
    """
    endpoint = in_service(sm, args.name)
    live = {v["VariantName"]: v for v in endpoint["ProductionVariants"]}
    for option, pairs in (("--weight", args.weight), ("--instance-count", args.instance_count)):
        names = [name for name, _ in pairs]
        if unknown := [n for n in names if n not in live]:
            raise ValueError(f"{option}: endpoint {args.name} has no variant {', '.join(unknown)}; "
                             f"its variants: {', '.join(live)}")
        if len(set(names)) < len(names):
            raise ValueError(f"{option}: a variant named twice")
    weights, counts = dict(args.weight), dict(args.instance_count)
    if not any(weights.get(name, v.get("CurrentWeight", 1.0)) for name, v in live.items()):
        raise ValueError("every variant's weight would be 0: the endpoint would send traffic nowhere")
    if len(counts) > 1:
        raise ValueError("UpdateEndpointWeightsAndCapacities changes the capacity of one variant at a time")
    if serverless := [n for n in counts if live[n].get("CurrentServerlessConfig")]:
        raise ValueError(f"--instance-count: {', '.join(serverless)} is serverless, it has no instances")
    desired = []
    for name in sorted(set(weights) | set(counts)):
        wanted = {"VariantName": name}
        if name in weights:
            wanted["DesiredWeight"] = weights[name]
        if name in counts:
            wanted["DesiredInstanceCount"] = counts[name]
        desired.append(wanted)
    requests.send("update_endpoint_weights_and_capacities",
                  {"EndpointName": args.name, "DesiredWeightsAndCapacities": desired})
    return {"EndpointName": args.name, "DesiredWeightsAndCapacities": desired}


def check_shift(endpoint: dict[str, Any], desired: list[dict[str, Any]]) -> list[str]:
    """What of `desired` the settled endpoint does not show (DesiredWeight, DesiredInstanceCount)."""
    live = {v["VariantName"]: v for v in endpoint["ProductionVariants"]}
    missed = []
    for wanted in desired:
        variant = live.get(wanted["VariantName"], {})
        for key, value in wanted.items():
            if key != "VariantName" and not math.isclose(variant.get(key) or 0, value, abs_tol=1e-6):
                missed.append(f"{wanted['VariantName']} {key} is {variant.get(key)}, not {value}")
    if endpoint["EndpointStatus"] != "InService":
        missed.append(f"the endpoint is {endpoint['EndpointStatus']}: {endpoint.get('FailureReason', '')}")
    return missed


def new_model(sm, args: argparse.Namespace, model_name: str, name: str, model_data: str) -> dict[str, Any]:
    """CreateModel's request: the current model `model_name` with the new artifacts, image, role, environment.

    Raises:
        ValueError: the current model has no single PrimaryContainer (deploy.py makes one).
    """
    model = accepted(sm, "CreateModel", sm.describe_model(ModelName=model_name))
    if "PrimaryContainer" not in model:
        raise ValueError(f"model {model_name} has no PrimaryContainer (several containers?): "
                         "update_endpoint.py replaces single-container models, as deploy.py makes them")
    container = {k: v for k, v in model["PrimaryContainer"].items() if k != "ModelDataSource"}
    container["ModelDataUrl"] = model_data
    if args.image:
        container["Image"] = args.image
    environment = {**container.get("Environment", {}), **parse_static(args.env)}
    if environment:
        container["Environment"] = environment
    model.update(ModelName=name, PrimaryContainer=container)
    if args.role:
        model["ExecutionRoleArn"] = args.role
    return model


def new_variants(config: dict[str, Any], endpoint: dict[str, Any], variant: str, model: str) -> list[dict[str, Any]]:
    """The current config's variants with the live instance counts, weights and serverless settings
    (autoscaling and UpdateEndpointWeightsAndCapacities change those, not the config), `variant` on `model`."""
    live = {v["VariantName"]: v for v in endpoint["ProductionVariants"]}
    variants = []
    for described in config["ProductionVariants"]:
        now = live.get(described["VariantName"], {})
        copy = {k: v for k, v in described.items() if v not in (None, {}, [])}
        for field, current in (("InitialInstanceCount", "CurrentInstanceCount"),
                               ("InitialVariantWeight", "CurrentWeight"),
                               ("ServerlessConfig", "CurrentServerlessConfig")):
            if now.get(current) is not None:
                copy[field] = now[current]
        if copy["VariantName"] == variant:
            copy["ModelName"] = model
        variants.append(copy)
    return variants


def blue_green(sm, args: argparse.Namespace, requests: Requests) -> dict[str, Any]:
    """Create the new Model and EndpointConfig, then UpdateEndpoint; delete both if a step fails before that.

    Raises:
        ValueError: the endpoint is not InService, or a bad variant, source or deployment.
    """
    endpoint = in_service(sm, args.name)
    old_config = sm.describe_endpoint_config(EndpointConfigName=endpoint["EndpointConfigName"])
    variant = choose_variant(old_config, args.variant)
    check_deployment(args.traffic, args.rollback_alarm, old_config["ProductionVariants"])
    model_data = model_data_of(sm, args)
    current_model = next(v["ModelName"] for v in old_config["ProductionVariants"] if v["VariantName"] == variant)
    name = new_name(args.name)
    model_request = new_model(sm, args, current_model, name, model_data)
    config_request = {**accepted(sm, "CreateEndpointConfig", old_config), "EndpointConfigName": name,
                      "ProductionVariants": new_variants(old_config, endpoint, variant, name),
                      "Tags": previous_tag(old_config["EndpointConfigName"])}
    update_request = {"EndpointName": args.name, "EndpointConfigName": name,
                      "DeploymentConfig": deployment(args)}
    try:
        requests.send("create_model", model_request, creates=("model", name))
        requests.send("create_endpoint_config", config_request, creates=("endpoint-config", name))
        requests.send("update_endpoint", update_request)
    except BaseException:
        if unchanged(sm, args.name, old_config["EndpointConfigName"]):
            requests.delete_created()
        raise
    return {"EndpointName": args.name, "EndpointConfigName": name, "ModelName": name, "Variant": variant,
            "PreviousEndpointConfigName": old_config["EndpointConfigName"]}


def unchanged(sm, name: str, config_name: str) -> bool:
    """Whether endpoint `name` is still InService on `config_name`, so that UpdateEndpoint was not accepted
    (a Ctrl-C or a broken connection can come after SageMaker accepted it: then nothing may be deleted)."""
    try:
        endpoint = sm.describe_endpoint(EndpointName=name)
    except Exception as exc:  # unknown: keep what was created
        logger.warning("cannot tell whether SageMaker accepted the update (%s): deleting nothing", exc)
        return False
    if endpoint["EndpointStatus"] == "InService" and endpoint["EndpointConfigName"] == config_name:
        return True
    logger.warning("endpoint %s is %s on %s: deleting nothing", name, endpoint["EndpointStatus"],
                   endpoint["EndpointConfigName"])
    return False


def rollback(sm, args: argparse.Namespace, requests: Requests) -> dict[str, Any]:
    """UpdateEndpoint back to the previous config that the current one's tag names.

    Raises:
        ValueError: not InService, no previous config named, or it (or one of its models) is gone,
            or its variants are not the current ones (blue/green keeps the variant names).
    """
    endpoint = in_service(sm, args.name)
    current = endpoint["EndpointConfigName"]
    previous = previous_config(sm, current)
    if previous is None:
        raise ValueError(f"endpoint config {current} names no previous config (tag {PREVIOUS_CONFIG_TAG}): "
                         "nothing to roll back to; update_endpoint.py tags the configs it makes")
    try:
        config = sm.describe_endpoint_config(EndpointConfigName=previous)
        for variant in config["ProductionVariants"]:
            sm.describe_model(ModelName=variant["ModelName"])
    except ClientError as exc:
        raise ValueError(f"cannot roll back to endpoint config {previous}: {exc}") from exc
    names = sorted(v["VariantName"] for v in config["ProductionVariants"])
    if names != sorted(v["VariantName"] for v in endpoint["ProductionVariants"]):
        raise ValueError(f"endpoint config {previous} has the variants {', '.join(names)}, the endpoint others: "
                         "a blue/green update keeps the variant names")
    check_deployment(args.traffic, args.rollback_alarm, config["ProductionVariants"])
    request = {"EndpointName": args.name, "EndpointConfigName": previous, "DeploymentConfig": deployment(args)}
    if all(v.get("CurrentInstanceCount") is not None for v in endpoint["ProductionVariants"]):
        # the previous config's instance counts are as old as it is: keep the live ones (and weights)
        request["RetainAllVariantProperties"] = True
    requests.send("update_endpoint", request)
    return {"EndpointName": args.name, "EndpointConfigName": previous, "RolledBackFrom": current}


def abandoned(sm, rolled_back_from: str, now_on: str) -> list[tuple[str, str]]:
    """The (DELETE kind, name) of the config rolled back from and of its models that `now_on` does not use."""
    def models(config_name: str) -> list[str]:
        config = sm.describe_endpoint_config(EndpointConfigName=config_name)
        return [v["ModelName"] for v in config["ProductionVariants"]]

    kept = set(models(now_on))
    return [("endpoint-config", rolled_back_from)] + [
        ("model", model) for model in dict.fromkeys(models(rolled_back_from)) if model not in kept]


def outcome(endpoint: dict[str, Any], target: str) -> str | None:
    """None when the endpoint is InService on the config `target`, else what happened."""
    status, on = endpoint["EndpointStatus"], endpoint["EndpointConfigName"]
    if status == "InService" and on == target:
        return None
    reason = endpoint.get("FailureReason") or "SageMaker gave no FailureReason"
    if status == "InService":
        return f"the update failed and SageMaker kept endpoint {endpoint['EndpointName']} on {on}: {reason}"
    return f"endpoint {endpoint['EndpointName']} is {status} on {on}: {reason}"


def undo_hint(name: str, mode: str) -> str:
    """The command that undoes a `mode` update of endpoint `name`."""
    return {"shift": f"scripts/update_endpoint.py --name {name} --weight VARIANT=OLD_WEIGHT ...",
            "blue-green": f"scripts/update_endpoint.py --name {name} --rollback",
            "rollback": f"scripts/update_endpoint.py --name {name} --rollback   (one step further back)"}[mode]


def finish(sm, args: argparse.Namespace, mode: str, started: dict[str, Any], requests: Requests) -> int:
    """Wait for the endpoint to settle and judge the outcome; the exit code."""
    try:
        endpoint = settle(sm, args)
    except (KeyboardInterrupt, TimeoutError) as exc:
        stopped = f"stopped waiting: {exc}" if str(exc) else "stopped waiting"
        print(f"{stopped}\n{still_running(args.name, undo_hint(args.name, mode))}", file=sys.stderr)
        return INTERRUPTED if isinstance(exc, KeyboardInterrupt) else FAILED
    if mode == "shift":
        missed = check_shift(endpoint, started["DesiredWeightsAndCapacities"])
        print(json.dumps(endpoint["ProductionVariants"], indent=2, default=str))
        for line in missed:
            print(f"error: {line}", file=sys.stderr)
        return 1 if missed else 0
    failure = outcome(endpoint, started["EndpointConfigName"])
    if failure:
        print(f"error: {failure}", file=sys.stderr)
        if mode == "blue-green" and endpoint["EndpointStatus"] == "InService":
            requests.delete_created()  # SageMaker rolled back: the new config and model serve nothing
        return 1
    if mode == "rollback":
        left = abandoned(sm, started["RolledBackFrom"], started["EndpointConfigName"])
        if args.cleanup:
            for kind, name in left:
                delete(sm, kind, name)
        else:  # no config names them any more: deploy.py --delete will not find them
            print("left in place (--cleanup deletes them):", file=sys.stderr)
            for kind, name in left:
                print(f"  aws sagemaker delete-{kind} --{kind}-name {name}", file=sys.stderr)
    print(json.dumps(started, indent=2))
    return 0


MODES = {"shift": shift_traffic, "blue-green": blue_green, "rollback": rollback}


@exit_on({**LAUNCHER, CLIENT_ERROR: FAILED})
def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    mode = mode_of(parser, args)
    boto_session = boto3.Session(region_name=args.region)
    dry_run = DryRun(boto_session, CHANGING) if args.dry_run else None  # before the client is made
    sm = boto_session.client("sagemaker")
    requests = Requests(sm, dry_run)
    try:
        started = MODES[mode](sm, args, requests)
    except KeyboardInterrupt:
        print(f"interrupted (had SageMaker accepted the update, it goes on: aws sagemaker describe-endpoint "
              f"--endpoint-name {args.name})", file=sys.stderr)
        return INTERRUPTED
    if args.dry_run:
        print(json.dumps(requests.recorded, indent=2, default=str))
        return 0
    if not args.wait:
        print(json.dumps(started, indent=2))
        print(still_running(args.name, undo_hint(args.name, mode)), file=sys.stderr)
        return 0
    return finish(sm, args, mode, started, requests)
