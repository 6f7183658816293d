"""Send an image to a SageMaker endpoint (sagemaker-runtime InvokeEndpoint) and print the top-k.

A body over InvokeEndpoint's limit is refused before it is sent: 6 MB for a real-time endpoint
(the API's `Body` maximum, 6,291,456 bytes:
https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_runtime_InvokeEndpoint.html), 4 MB
for a serverless one (https://docs.aws.amazon.com/sagemaker/latest/dg/serverless-endpoints-invoke.html;
taken as 4 MiB, as the 6 MB are 6 MiB). Only a body over 4 MB costs a DescribeEndpoint, to learn
whether the endpoint is serverless.

`--async S3_PREFIX` sends to an asynchronous endpoint instead (launch/invoke_async.py): the body,
up to 1 GB, goes through S3, and the answer is read back from S3 when it is written.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import NamedTuple

import boto3
from botocore.exceptions import ClientError

from image_classifier.client import content_type_for, format_answer
from image_classifier.launch import invoke_async
from image_classifier.launch.async_inference import INVOCATION_TIMEOUT_SECONDS
from image_classifier.launch.exit_codes import BOTOCORE_ERROR, CLIENT_ERROR, FAILED, USAGE, exit_on, one_line
from image_classifier.serving import content_types

logger = logging.getLogger(__name__)

REALTIME_MAX_BYTES = 6 * 1024 * 1024  # 6,291,456
SERVERLESS_MAX_BYTES = 4 * 1024 * 1024  # 4,194,304
EXIT_PAYLOAD_REFUSED = USAGE


class Answer(NamedTuple):
    """The endpoint's predictions and the production variant that made them."""

    predictions: list
    variant: str | None


class PayloadTooLarge(ValueError):
    """The body is over the endpoint's InvokeEndpoint limit: it was not sent."""


def invoke(runtime_client, endpoint: str, image: Path, top_k: int = 5, target_variant: str | None = None) -> Answer:
    """The endpoint's top-k predictions for `image`, most probable first (a list per image for a
    batch: a `.json` file of instances or an (N, 3, H, W) `.npy`), from `target_variant` when
    given, else from the variant the endpoint's weights pick.

    Raises:
        ClientError: from InvokeEndpoint; a `ModelError` carries the container's status and message.
    """
    response = runtime_client.invoke_endpoint(
        **headers_for(endpoint, image, top_k, target_variant), Body=image.read_bytes())
    return Answer(json.loads(response["Body"].read())["predictions"], response.get("InvokedProductionVariant"))


def headers_for(endpoint: str, image: Path, top_k: int, target_variant: str | None) -> dict[str, str]:
    """InvokeEndpoint's parameters but the body: the endpoint, the body's type, top-k, the variant."""
    request = {"EndpointName": endpoint, "ContentType": content_type_for(image), "Accept": content_types.JSON,
               "CustomAttributes": f"top_k={top_k}"}
    if target_variant:
        request["TargetVariant"] = target_variant
    return request


def check_payload(image: Path, endpoint: str, sm_client=None) -> None:
    """Refuse a body the endpoint would refuse: over 6 MB, or over 4 MB when the endpoint is
    serverless (asked of `sm_client` only then; without `sm_client`, the 6 MB only).

    Raises:
        PayloadTooLarge: the limit, the file's size and what to do.
        OSError: `image` cannot be read.
    """
    size = image.stat().st_size
    if size > REALTIME_MAX_BYTES:
        limit = f"InvokeEndpoint's limit of 6 MB ({REALTIME_MAX_BYTES:,} bytes)"
    elif size > SERVERLESS_MAX_BYTES and sm_client is not None and is_serverless(sm_client, endpoint):
        limit = f"the limit of 4 MB ({SERVERLESS_MAX_BYTES:,} bytes) of serverless endpoint {endpoint}"
    else:
        return
    raise PayloadTooLarge(f"{image} is {size:,} bytes, over {limit}: resize or recompress the image "
                          "(fewer pixels, a lower JPEG quality), or send fewer images per request")


def is_serverless(sm_client, endpoint: str) -> bool:
    """Whether a variant of `endpoint` is serverless (DescribeEndpoint's CurrentServerlessConfig);
    False when the endpoint cannot be described (denied, not found): the service then answers."""
    try:
        described = sm_client.describe_endpoint(EndpointName=endpoint)
    except ClientError as exc:
        logger.info("DescribeEndpoint %s failed (%s): sending without knowing whether it is serverless", endpoint, exc)
        return False
    return any("CurrentServerlessConfig" in v for v in described.get("ProductionVariants", []))


def describe_error(exc: ClientError) -> str:
    """A readable line for an InvokeEndpoint error; for ModelError, the container's own answer."""
    error = exc.response.get("Error", {})
    if error.get("Code") == "ModelError":
        original = exc.response.get("OriginalMessage") or error.get("Message", "")
        try:
            original = json.loads(original).get("error", original)
        except (ValueError, AttributeError):
            pass
        return f"the model container answered {exc.response.get('OriginalStatusCode', '?')}: {original}"
    return f"{error.get('Code', 'error')}: {error.get('Message', exc)}"


@exit_on({PayloadTooLarge: EXIT_PAYLOAD_REFUSED, ValueError: USAGE, invoke_async.AsyncFailed: (FAILED, one_line),
          CLIENT_ERROR: (FAILED, describe_error), BOTOCORE_ERROR: (FAILED, one_line), OSError: FAILED})
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="predict.py", description=__doc__.splitlines()[0],
        epilog="A body over 6 MB, or over 4 MB for a serverless endpoint, is refused before it is sent "
               f"(exit {EXIT_PAYLOAD_REFUSED}): resize or recompress the image.")
    parser.add_argument("image", type=Path)
    parser.add_argument("--endpoint", default="image-classifier", help="endpoint name (default: %(default)s)")
    parser.add_argument("--region", default=None, help="AWS region (default: the AWS configuration's)")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--target-variant", metavar="NAME",
                        help="send to this production variant, whatever the weights (A/B tests)")
    parser.add_argument("--async", dest="async_prefix", metavar="S3_PREFIX",
                        help="an asynchronous endpoint (deploy.py --async-output): upload the body under this S3 "
                             "prefix, call InvokeEndpointAsync and wait for the answer (bodies up to 1 GB)")
    parser.add_argument("--invocation-timeout", type=int, metavar="S",
                        help="with --async: seconds the container may take, 1-3600 "
                             f"(default: {INVOCATION_TIMEOUT_SECONDS})")
    parser.add_argument("--dry-run", action="store_true", help="print the request, send nothing")
    args = parser.parse_args(argv)
    session = boto3.Session(region_name=args.region)
    if args.async_prefix:
        return _main_async(args, session)
    if args.invocation_timeout is not None:
        raise ValueError("--invocation-timeout only goes with --async S3_PREFIX "
                         "(a real-time endpoint answers within 60 s)")
    check_payload(args.image, args.endpoint, None if args.dry_run else session.client("sagemaker"))
    if args.dry_run:
        size = args.image.stat().st_size
        print(json.dumps({**headers_for(args.endpoint, args.image, args.top_k, args.target_variant),
                          "Body": f"<{size} bytes of {args.image}>"}, indent=2))
        return 0
    answer = invoke(session.client("sagemaker-runtime"), args.endpoint, args.image, args.top_k, args.target_variant)
    if answer.variant:
        print(f"answered by variant {answer.variant}", file=sys.stderr)
    print(format_answer(answer.predictions))
    return 0


def _main_async(args: argparse.Namespace, session: boto3.Session) -> int:
    """predict.py --async: the same table as the real-time call, from the output object.

    Raises:
        ValueError: --target-variant (an asynchronous endpoint has one), a bad prefix or timeout, a body over 1 GB.
        invoke_async.AsyncFailed: the endpoint wrote a failure, or no answer came.
    """
    if args.target_variant:
        raise ValueError("--target-variant: InvokeEndpointAsync sends to the endpoint's variant, leave it out")
    if args.invocation_timeout is None:
        args.invocation_timeout = INVOCATION_TIMEOUT_SECONDS
    if not 1 <= args.invocation_timeout <= INVOCATION_TIMEOUT_SECONDS:
        raise ValueError(f"--invocation-timeout takes 1-{INVOCATION_TIMEOUT_SECONDS} s, got {args.invocation_timeout}")
    invoke_async.split_s3(args.async_prefix)
    invoke_async.check_payload(args.image)
    headers = headers_for(args.endpoint, args.image, args.top_k, None)
    if args.dry_run:
        location = invoke_async.input_location(args.async_prefix, args.image)
        print(json.dumps({"PutObject": {"Location": location, "Body": f"<{args.image.stat().st_size} bytes of "
                                                                      f"{args.image}>"},
                          "InvokeEndpointAsync": invoke_async.request(headers, location, args.invocation_timeout)},
                         indent=2))
        return 0
    predictions = invoke_async.invoke(session, headers, args.image, args.async_prefix, args.invocation_timeout)
    print(format_answer(predictions))
    return 0
