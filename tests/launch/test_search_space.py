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


@pytest.mark.parametrize("r, kind, log", [
    (ss.ContinuousRange("lr", 0.001, 0.1, "Logarithmic"), "FloatDistribution", True),
    (ss.ContinuousRange("lr", 0.001, 0.1, "Linear"), "FloatDistribution", False),
    (ss.ContinuousRange("lr", 0.001, 0.1, "Auto"), "FloatDistribution", False),
    (ss.IntegerRange("epochs", 2, 5, "Linear"), "IntDistribution", False),
    (ss.IntegerRange("epochs", 2, 5, "Auto"), "IntDistribution", False),
    (ss.IntegerRange("epochs", 1, 64, "Logarithmic"), "IntDistribution", True),
])
def test_numeric_ranges_map_onto_optuna(r, kind, log):
    distribution = ss.to_optuna([r])[r.name]
    assert type(distribution).__name__ == kind
    assert (distribution.low, distribution.high, distribution.log) == (r.min, r.max, log)


def test_categorical_range_maps_onto_optuna_with_its_strings():
    distribution = ss.to_optuna([ss.CategoricalRange("batch-size", ("32", "64"))])["batch-size"]
    assert type(distribution).__name__ == "CategoricalDistribution" and distribution.choices == ("32", "64")


@pytest.mark.parametrize("r, words", [
    (ss.ContinuousRange("lr", 0.001, 0.1, "ReverseLogarithmic"), "no Optuna distribution"),
    (ss.IntegerRange("epochs", 2, 5, "ReverseLogarithmic"), "no Optuna distribution"),
    (ss.IntegerRange("epochs", 0, 5, "Logarithmic"), "min >= 1"),
])
def test_ranges_optuna_cannot_sample_are_refused(r, words):
    with pytest.raises(ValueError, match=words):
        ss.to_optuna([r])


def test_suggest_samples_every_range_with_its_distribution():
    import optuna

    distributions = ss.to_optuna(ss.search_space(include_model=True))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    values = [ss.suggest(trial := study.ask(), distributions) for _ in range(20)]
    assert study.trials[-1].distributions == distributions == trial.distributions
    for sampled in values:
        assert set(sampled) == set(distributions) and all(isinstance(v, str) for v in sampled.values())
        assert 0.001 <= float(sampled["lr"]) <= 0.1 and sampled["epochs"] in {"2", "3", "4", "5"}
        assert sampled["batch-size"] in {"32", "64", "128"} and sampled["model"] in MODEL_NAMES
    assert len({v["lr"] for v in values}) == len(values)  # sampled, not fixed
