"""launch/variants.py: `--variant` specs, serverless sizes and resource names within SageMaker's limits."""

import argparse
import re

import pytest

from image_classifier.launch import variants
from image_classifier.launch.variants import Variant

MODEL_DATA = "s3://ic-out/jobs/t-1/output/model.tar.gz"


@pytest.mark.parametrize("text, expected", [
    (f"a={MODEL_DATA}", Variant("a", MODEL_DATA, 1.0)),
    (f"a={MODEL_DATA}:0.25", Variant("a", MODEL_DATA, 0.25)),  # the URI's own colon stays
    (f"a={MODEL_DATA}:0", Variant("a", MODEL_DATA, 0.0)),
    ("new-model=t-42:3", Variant("new-model", "t-42", 3.0)),
    ("B2=t-42", Variant("B2", "t-42", 1.0)),
    ("a=s3://bucket/dir:with:colons/model.tar.gz:2", Variant("a", "s3://bucket/dir:with:colons/model.tar.gz", 2.0)),
])
def test_parse_variant(text, expected):
    assert variants.parse_variant(text) == expected


@pytest.mark.parametrize("text, words", [
    ("a", "NAME=SOURCE[:WEIGHT]"),
    (f"={MODEL_DATA}", "variant name ''"),
    (f"-a={MODEL_DATA}", "variant name '-a'"),
    (f"a={MODEL_DATA}:-0.5", "weight must be a number >= 0"),
    (f"a={MODEL_DATA}:nan", "weight must be a number >= 0"),
    ("a=t-42:inf", "weight must be a number >= 0"),
    (f"a={MODEL_DATA}:O.5", "weight must be a number >= 0, got 'O.5'"),  # a typo is no part of the key
    ("a=t-42:", "weight must be a number >= 0, got ''"),
    ("a=t_42", "neither an s3://"),
    ("a=s3://bucket-only", "neither an s3://"),
])
def test_parse_variant_refuses(text, words):
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(words)):
        variants.parse_variant(text)


@pytest.mark.parametrize("chosen, words", [
    ([Variant(f"v{i}", MODEL_DATA) for i in range(11)], "at most 10"),
    ([Variant("a", MODEL_DATA), Variant("b", MODEL_DATA), Variant("a", MODEL_DATA)], "a given more than once"),
    ([Variant("a", MODEL_DATA, 0), Variant("b", MODEL_DATA, 0)], "weight above 0"),
])
def test_check_variants_refuses(chosen, words):
    with pytest.raises(ValueError, match=words):
        variants.check_variants(chosen)


@pytest.mark.parametrize("text, expected", [("1024:1", (1024, 1)), ("6144:200", (6144, 200)), ("3072:20", (3072, 20))])
def test_parse_serverless(text, expected):
    serverless = variants.parse_serverless(text)
    assert serverless.config() == {"MemorySizeInMB": expected[0], "MaxConcurrency": expected[1]}


@pytest.mark.parametrize("text", ["2048", "2048:x", "512:5", "7168:5", "1536:5", "2048:0", "2048:201"])
def test_parse_serverless_refuses(text):
    with pytest.raises(argparse.ArgumentTypeError):
        variants.parse_serverless(text)


def test_resource_names_fit_and_stay_apart():
    suffix = "20250101-120000"
    assert variants.resource_name("ic-AllTraffic", suffix) == f"ic-AllTraffic-{suffix}"
    long_a = variants.resource_name(f"{'e' * 63}-{'v' * 62}a", suffix)
    long_b = variants.resource_name(f"{'e' * 63}-{'v' * 62}b", suffix)
    assert len(long_a) == len(long_b) == 63 and long_a != long_b
    assert long_a.endswith(suffix) and variants.NAME_PATTERN.fullmatch(long_a)
