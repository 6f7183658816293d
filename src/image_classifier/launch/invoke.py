"""Send an image to a SageMaker endpoint (sagemaker-runtime InvokeEndpoint) and print the top-k."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import boto3
from botocore.exceptions import ClientError

from image_classifier.cli import content_type_for, format_answer
from image_classifier.serving import content_types


def invoke(runtime_client, endpoint: str, image: Path, top_k: int = 5) -> list:
    """The endpoint's top-k predictions for `image`, most probable first (a list per image for a
    batch: a `.json` file of instances or an (N, 3, H, W) `.npy`).

    Raises:
        ClientError: from InvokeEndpoint; a `ModelError` carries the container's status and message.
    """
    response = runtime_client.invoke_endpoint(
        EndpointName=endpoint, Body=image.read_bytes(), ContentType=content_type_for(image),
        Accept=content_types.JSON, CustomAttributes=f"top_k={top_k}")
    return json.loads(response["Body"].read())["predictions"]


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="predict.py", description=__doc__)
    parser.add_argument("image", type=Path)
    parser.add_argument("--endpoint", default="image-classifier", help="endpoint name (default: %(default)s)")
    parser.add_argument("--region", default=None, help="AWS region (default: the AWS configuration's)")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--dry-run", action="store_true", help="print the request, send nothing")
    args = parser.parse_args(argv)
    if args.dry_run:
        size = args.image.stat().st_size if args.image.is_file() else None
        print(json.dumps({"EndpointName": args.endpoint, "ContentType": content_type_for(args.image),
                          "Accept": content_types.JSON, "CustomAttributes": f"top_k={args.top_k}",
                          "Body": f"<{size} bytes of {args.image}>"}, indent=2))
        return 0
    runtime = boto3.Session(region_name=args.region).client("sagemaker-runtime")
    try:
        predictions = invoke(runtime, args.endpoint, args.image, args.top_k)
    except ClientError as exc:
        print(f"error: {describe_error(exc)}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(format_answer(predictions))
    return 0
