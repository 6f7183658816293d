"""The search space: defaults, opt-in model range, JSON overrides, validation, the API shape."""

import json

import pytest

from image_classifier.launch import search_space as ss
from image_classifier.models import MODEL_NAMES


def test_defaults_are_the_issues_ranges():
    ranges = {r.name: r for r in ss.search_space()}
    assert ranges["lr"] == ss.ContinuousRange("lr", 0.001, 0.1, "Logarithmic")
    assert ranges["batch-size"] == ss.CategoricalRange("batch-size", ("32", "64", "128"))
    assert ranges["epochs"] == ss.IntegerRange("epochs", 2, 5, "Linear")
    assert "model" not in ranges


def test_model_range_is_opt_in_and_covers_the_registry():
    ranges = {r.name: r for r in ss.search_space(include_model=True)}
    assert ranges["model"].values == MODEL_NAMES


def test_overrides_replace_and_add_ranges():
    overrides = json.dumps({"lr": {"type": "continuous", "min": 0.0001, "max": 0.01, "scaling": "Logarithmic"},
                            "optimizer": {"type": "categorical", "values": ["adam", "sgd"]},
                            "epochs": {"type": "integer", "min": 3, "max": 8}})
    ranges = {r.name: r for r in ss.search_space(overrides=overrides)}
    assert ranges["lr"].min == 0.0001 and ranges["optimizer"].values == ("adam", "sgd")
    assert ranges["epochs"] == ss.IntegerRange("epochs", 3, 8, "Auto")
    assert ranges["batch-size"].values == ("32", "64", "128")


@pytest.mark.parametrize("overrides, words", [
    ("{not json", "not JSON"),
    ("[1]", "JSON object"),
    ('{"learning_rate": {"type": "continuous", "min": 0.1, "max": 1}}', "unknown hyperparameter"),
    ('{"lr": {"type": "continuous", "min": 0.1, "max": 0.01}}', "below max"),
    ('{"lr": {"type": "continuous", "min": 0, "max": 0.1, "scaling": "Logarithmic"}}', "min > 0"),
    ('{"lr": {"type": "continuous", "min": 0.1, "max": 1, "scaling": "Exponential"}}', "scaling"),
    ('{"lr": {"type": "uniform", "min": 0.1, "max": 1}}', "type must be"),
    ('{"lr": {"type": "continuous", "min": 0.1}}', "missing 'max'"),
    ('{"optimizer": {"type": "categorical", "values": []}}', "no values"),
    ('{"optimizer": {"type": "categorical", "values": ["adam", "rmsprop"]}}', "optimizer"),
    ('{"epochs": {"type": "integer", "min": 0, "max": 3}}', "epochs"),
])
def test_bad_overrides(overrides, words):
    with pytest.raises(ValueError, match=words):
        ss.search_space(overrides=overrides)


def test_api_shape():
    api = ss.to_sagemaker(ss.search_space())
    assert api["ContinuousParameterRanges"] == [
        {"Name": "lr", "MinValue": "0.001", "MaxValue": "0.1", "ScalingType": "Logarithmic"}]
    assert api["IntegerParameterRanges"] == [
        {"Name": "epochs", "MinValue": "2", "MaxValue": "5", "ScalingType": "Linear"}]
    assert api["CategoricalParameterRanges"] == [{"Name": "batch-size", "Values": ["32", "64", "128"]}]
