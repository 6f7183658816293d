"""An endpoint's production variants as deploy.py takes them: `--variant` specs, serverless sizes, resource names.

Limits are SageMaker's own, checked here so that a bad argument is refused before anything is
created:

- names (endpoint, variant, endpoint config): `[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}`, so 63
  characters at most; model names: 63 characters
  (https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_ProductionVariant.html,
  API_CreateModel.html, API_CreateEndpointConfig.html);
- at most 10 production variants in an endpoint config, each weight >= 0 (`InitialVariantWeight`);
- serverless memory 1024, 2048, ..., 6144 MB and concurrency 1-200
  (https://docs.aws.amazon.com/sagemaker/latest/APIReference/API_ProductionVariantServerlessConfig.html).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import re
from dataclasses import dataclass

NAME_PATTERN = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}")  # endpoint, variant, config, training job
NAME_MAX = 63  # characters in a model, endpoint config, endpoint or variant name
MAX_VARIANTS = 10  # ProductionVariants in one CreateEndpointConfig
SERVERLESS_MEMORY_MB = (1024, 2048, 3072, 4096, 5120, 6144)
SERVERLESS_MAX_CONCURRENCY = 200


@dataclass(frozen=True)
class Variant:
    """One production variant: its name, its model's source and its share of the traffic.

    `source` is an `s3://.../model.tar.gz` URI or the name of a training job whose
    ModelArtifacts are deployed; traffic goes to a variant in proportion of its `weight` to the
    sum of all the variants' weights.
    """

    name: str
    source: str
    weight: float = 1.0


@dataclass(frozen=True)
class Serverless:
    """A serverless variant's size: memory (vCPUs come in proportion) and concurrent invocations."""

    memory_mb: int
    max_concurrency: int

    def config(self) -> dict[str, int]:
        """The ProductionVariant's `ServerlessConfig`."""
        return {"MemorySizeInMB": self.memory_mb, "MaxConcurrency": self.max_concurrency}


def is_name(text: str) -> bool:
    """Whether `text` is a valid SageMaker endpoint, variant, endpoint config or training job name."""
    return NAME_PATTERN.fullmatch(text) is not None


def parse_variant(text: str) -> Variant:
    """argparse type: `NAME=SOURCE[:WEIGHT]`, the weight split off at the last colon unless a `/`
    follows it (an S3 URI keeps its own colons: `a=s3://bucket/model.tar.gz:0.5`).

    Raises:
        argparse.ArgumentTypeError: no `=`, a bad name or source, a weight < 0 or not a number.
    """
    name, sep, rest = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"takes NAME=SOURCE[:WEIGHT], got {text!r}")
    head, colon, tail = rest.rpartition(":")
    source, weight = (head, _weight(name, tail)) if colon and "/" not in tail else (rest, 1.0)
    if not is_name(name):
        raise argparse.ArgumentTypeError(f"variant name {name!r} must be 1-63 letters, digits and hyphens, "
                                         "starting and ending with a letter or digit")
    if not (re.fullmatch(r"s3://[^/]+/.+", source) or is_name(source)):
        raise argparse.ArgumentTypeError(
            f"variant {name}: {source!r} is neither an s3://bucket/.../model.tar.gz URI nor a training job name")
    return Variant(name, source, weight)


def _weight(name: str, text: str) -> float:
    """A variant's weight. Raises: argparse.ArgumentTypeError: not a finite number >= 0."""
    try:
        weight = float(text)
    except ValueError:
        weight = math.nan
    if not math.isfinite(weight) or weight < 0:
        raise argparse.ArgumentTypeError(f"variant {name}: the weight must be a number >= 0, got {text!r}")
    return weight


def check_variants(variants: list[Variant]) -> None:
    """Raises: ValueError: more than 10 variants, a name given twice, or no weight above 0."""
    if len(variants) > MAX_VARIANTS:
        raise ValueError(f"an endpoint holds at most {MAX_VARIANTS} production variants, got {len(variants)}")
    names = [v.name for v in variants]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"variant names must be unique: {', '.join(twice)} given more than once")
    if not any(v.weight > 0 for v in variants):
        raise ValueError("at least one variant needs a weight above 0, or no traffic goes anywhere")


def parse_serverless(text: str) -> Serverless:
    """argparse type: `MEMORY_MB:MAX_CONCURRENCY`, e.g. `2048:10`.

    Raises:
        argparse.ArgumentTypeError: not two whole numbers, or outside SageMaker's limits.
    """
    memory, _sep, concurrency = text.partition(":")
    try:
        serverless = Serverless(int(memory), int(concurrency))
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes MEMORY_MB:MAX_CONCURRENCY, e.g. 2048:10, got {text!r}") from None
    if serverless.memory_mb not in SERVERLESS_MEMORY_MB:
        raise argparse.ArgumentTypeError(
            f"memory must be one of {', '.join(map(str, SERVERLESS_MEMORY_MB))} MB, got {memory}")
    if not 1 <= serverless.max_concurrency <= SERVERLESS_MAX_CONCURRENCY:
        raise argparse.ArgumentTypeError(
            f"max concurrency must be 1-{SERVERLESS_MAX_CONCURRENCY}, got {concurrency}")
    return serverless


def resource_name(base: str, suffix: str) -> str:
    """`base-suffix` within SageMaker's 63 characters.

    A base too long is cut, and 8 hex digits of its hash go in, so that two bases cut to the
    same text (an endpoint's variants with long names) still give two names.
    """
    name = f"{base}-{suffix}"
    if len(name) <= NAME_MAX:
        return name
    digest = hashlib.sha256(base.encode()).hexdigest()[:8]
    keep = NAME_MAX - len(suffix) - len(digest) - 2
    return f"{base[:keep].rstrip('-')}-{digest}-{suffix}"
