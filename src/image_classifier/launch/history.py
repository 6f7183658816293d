"""The history of an endpoint's configs: each config update_endpoint.py makes names the one it replaced.

The name sits in the new EndpointConfig's tag PREVIOUS_CONFIG_TAG. `--rollback` follows it one
step back; `deploy.py --delete` follows it to the end, to delete the configs kept for rollback.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

PREVIOUS_CONFIG_TAG = "image-classifier:previous-endpoint-config"


def previous_tag(config_name: str) -> list[dict[str, str]]:
    """The Tags of a new EndpointConfig that replaces `config_name`."""
    return [{"Key": PREVIOUS_CONFIG_TAG, "Value": config_name}]


def previous_config(sm, config_name: str) -> str | None:
    """The endpoint config that `config_name` replaced, from its tag PREVIOUS_CONFIG_TAG; None without that tag.

    Raises:
        ClientError: `config_name` does not exist (ValidationException), or AWS refused.
    """
    arn = sm.describe_endpoint_config(EndpointConfigName=config_name)["EndpointConfigArn"]
    for page in sm.get_paginator("list_tags").paginate(ResourceArn=arn):
        for tag in page["Tags"]:
            if tag["Key"] == PREVIOUS_CONFIG_TAG:
                return tag["Value"]
    return None


def kept_configs(sm, config_name: str) -> list[str]:
    """`config_name`, then the configs kept for rollback behind it, newest first.

    Follows the tag PREVIOUS_CONFIG_TAG from config to config; stops at a config without it, at
    one already deleted, or at a loop.

    Raises:
        ClientError: AWS refused a request other than with "not found".
    """
    chain = [config_name]
    while True:
        try:
            previous = previous_config(sm, chain[-1])
        except ClientError as exc:
            if not _not_found(exc):
                raise
            return chain[:-1]
        if previous is None or previous in chain:
            return chain
        chain.append(previous)


def _not_found(exc: ClientError) -> bool:
    """Whether `exc` is SageMaker's answer for a resource that does not exist (a ValidationException)."""
    error: dict[str, Any] = exc.response.get("Error", {})
    return error.get("Code") == "ValidationException"
