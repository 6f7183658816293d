"""`predict.py --async`: send a body to an asynchronous endpoint through S3 and wait for its answer.

The body is uploaded under the input prefix (boto3's managed transfer: multipart for a large
one), InvokeEndpointAsync queues it (sagemaker-runtime; the call answers at once with the
OutputLocation where the answer will be, and the FailureLocation where an error would be, when
the endpoint config has a failure path), then S3 is polled until one of them exists, with a
progress bar of the seconds waited. A body may be up to 1 GB and a request may run up to an hour
(https://docs.aws.amazon.com/sagemaker/latest/dg/async-inference.html).
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError
from tqdm import tqdm

from image_classifier.launch.async_inference import INVOCATION_TIMEOUT_SECONDS, MAX_PAYLOAD_BYTES
from image_classifier.launch.upload import parse_s3_uri

POLL_SECONDS = 5  # a HeadObject on each location every 5 s
REQUEST_TTL_SECONDS = 21600  # how long a request may wait in the queue: RequestTTLSeconds's maximum, 6 h (botocore)


class AsyncFailed(RuntimeError):
    """The endpoint wrote the request's failure object (its text is the message), or no answer came in time."""


def split_s3(uri: str) -> tuple[str, str]:
    """`s3://bucket/key/prefix` → ("bucket", "key/prefix") (upload.parse_s3_uri). Raises: ValueError: not an
    s3:// URI, in --async's words."""
    try:
        return parse_s3_uri(uri)
    except ValueError:
        raise ValueError(f"--async takes an S3 prefix for the request bodies (s3://bucket/prefix), "
                         f"got {uri!r}") from None


def check_payload(image: Path) -> None:
    """Raises: ValueError: `image` is over Asynchronous Inference's 1 GB. OSError: it cannot be read."""
    size = image.stat().st_size
    if size > MAX_PAYLOAD_BYTES:
        raise ValueError(f"{image} is {size:,} bytes, over Asynchronous Inference's limit of 1 GB "
                         f"({MAX_PAYLOAD_BYTES:,} bytes): send fewer images per request")


def input_location(input_prefix: str, image: Path) -> str:
    """Where the body goes: a key of its own under `input_prefix` (a random id, then the file name)."""
    bucket, prefix = split_s3(input_prefix)
    return f"s3://{bucket}/{prefix + '/' if prefix else ''}{uuid.uuid4().hex}/{image.name}"


def request(headers: dict[str, str], location: str, timeout: int) -> dict[str, Any]:
    """InvokeEndpointAsync's parameters: `headers` (the real-time call's, but TargetVariant, which
    an asynchronous endpoint does not take), the body's S3 location and the time it may run."""
    params = {key: value for key, value in headers.items() if key != "TargetVariant"}
    return {**params, "InputLocation": location, "InvocationTimeoutSeconds": timeout,
            "RequestTTLSeconds": REQUEST_TTL_SECONDS}


def invoke(session, headers: dict[str, str], image: Path, input_prefix: str,
           timeout: int = INVOCATION_TIMEOUT_SECONDS, wait: float | None = None) -> list:
    """Upload `image`, queue it at the endpoint, wait for the answer; returns its predictions.

    Args:
        session: the boto3 session (its S3 and sagemaker-runtime clients).
        headers: InvokeEndpoint's parameters but the body (`invoke.headers_for`).
        timeout: seconds the container may take (InvocationTimeoutSeconds, 1-3600).
        wait: seconds to wait for the answer (default: the request's time in the queue and in the container).

    Raises:
        AsyncFailed: the failure object's text, no answer within `wait`, or an answer that is not
            the server's `{"predictions": ...}`.
        ClientError: S3 or InvokeEndpointAsync refused.
    """
    s3 = session.client("s3")
    location = input_location(input_prefix, image)
    bucket, key = split_s3(location)
    s3.upload_file(str(image), bucket, key, ExtraArgs={"ContentType": headers["ContentType"]})
    answer = session.client("sagemaker-runtime").invoke_endpoint_async(**request(headers, location, timeout))
    body = wait_for(s3, answer["OutputLocation"], answer.get("FailureLocation"),
                    REQUEST_TTL_SECONDS + timeout if wait is None else wait)
    try:
        return json.loads(body)["predictions"]
    except (ValueError, KeyError, TypeError):
        raise AsyncFailed(f"the output object at {answer['OutputLocation']} is not the model server's JSON "
                          f"answer ({{\"predictions\": ...}}): {body[:200].decode(errors='replace')}") from None


def _exists(s3, uri: str) -> bool:
    bucket, key = split_s3(uri)
    try:
        s3.head_object(Bucket=bucket, Key=key)
        return True
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return False
        raise


def wait_for(s3, output: str, failure: str | None, wait: float, poll: float = POLL_SECONDS) -> bytes:
    """The output object's bytes once it exists, polling every `poll` s with a progress bar (seconds).

    Raises:
        AsyncFailed: the failure object appeared first (its text), or neither within `wait` s.
    """
    started = time.monotonic()
    with tqdm(total=int(wait), desc="waiting for the answer", leave=False,
              bar_format="{desc}: {bar} {n}/{total} s") as bar:
        while True:
            for uri, failed in ((output, False), (failure, True)):
                if uri and _exists(s3, uri):
                    bucket, key = split_s3(uri)
                    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
                    if failed:  # the failure object's first 500 bytes (a traceback can be long)
                        text = body[:500].decode(errors="replace") + ("..." if len(body) > 500 else "")
                        raise AsyncFailed(f"the endpoint failed the request ({uri}): {text}")
                    return body
            waited = time.monotonic() - started
            if waited >= wait:
                raise AsyncFailed(f"no answer at {output} after {waited:.0f} s: the request may still be queued")
            bar.update(int(waited) - bar.n)
            time.sleep(min(poll, wait - waited))
