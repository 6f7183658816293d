"""Tests for TrainConfig.from_hyperparameters: SDK v2 and plain values, aliases, validation, round trip."""

from __future__ import annotations

import json

import pytest

from image_classifier.training.config import TrainConfig

EXPECTED = TrainConfig(model="resnet18", lr=0.01, pretrained=False, batch_size=16, epochs=3,
                       optimizer="sgd", freeze="none", dropout=0.2, amp=False, image_size=64)
PLAIN = {"model": "resnet18", "lr": "0.01", "pretrained": "false", "batch-size": "16", "epochs": "3",
         "optimizer": "sgd", "freeze": "none", "dropout": "0.2", "amp": "false", "image-size": "64"}


def sdk_v2(**values) -> dict[str, str]:
    """Hyperparameters as the SageMaker Python SDK v2 writes them: each value JSON-encoded."""
    return {k: json.dumps(v) for k, v in values.items()}


@pytest.mark.parametrize("hyperparameters", [
    pytest.param(PLAIN, id="plain (SDK v3, console)"),
    pytest.param({"model": '"resnet18"', "lr": "0.01", "pretrained": "false", "batch-size": "16",
                  "epochs": "3", "optimizer": '"sgd"', "freeze": '"none"', "dropout": "0.2",
                  "amp": "false", "image-size": "64"}, id="SDK v2 JSON-encoded"),
    pytest.param(sdk_v2(model="resnet18", lr=0.01, pretrained=False, **{"batch-size": 16}, epochs=3,
                        optimizer="sgd", freeze="none", dropout=0.2, amp=False, **{"image-size": 64}),
                 id="json.dumps of native values"),
    pytest.param({"model": "ResNet18", "lr": "1e-2", "pretrained": "False", "batch_size": "16.0",
                  "epochs": "3", "optimizer": "SGD", "freeze": "None", "dropout": ".2", "amp": "off",
                  "image_size": "64"}, id="other spellings"),
    pytest.param({"model": "resnet18", "lr": 0.01, "pretrained": False, "batch-size": 16, "epochs": 3,
                  "optimizer": "sgd", "freeze": "none", "dropout": 0.2, "amp": False, "image-size": 64},
                 id="native values"),
])
def test_sdk_v2_and_plain_values_give_the_same_config(hyperparameters):
    assert TrainConfig.from_hyperparameters(hyperparameters) == EXPECTED


def test_no_hyperparameters_give_the_defaults():
    assert TrainConfig.from_hyperparameters({}) == TrainConfig()


@pytest.mark.parametrize("key, field, raw, expected", [
    ("batch-size", "batch_size", "8", 8),
    ("batch_size", "batch_size", "8", 8),
    ("image-size", "image_size", "96", 96),
    ("image_size", "image_size", "96", 96),
    ("early-stopping-patience", "early_stopping_patience", "2", 2),
    ("early_stopping_patience", "early_stopping_patience", "2", 2),
    ("lr-scheduler", "lr_scheduler", '"none"', "none"),
    ("label_smoothing", "label_smoothing", "0.1", 0.1),
])
def test_dashes_and_underscores_both_accepted(key, field, raw, expected):
    assert getattr(TrainConfig.from_hyperparameters({key: raw}), field) == expected


@pytest.mark.parametrize("raw, expected", [
    ("true", True), ("True", True), ("TRUE", True), ("1", True), ("yes", True), ("on", True),
    (" true ", True), ('"true"', True), ('"Yes"', True), (True, True),
    ("false", False), ("False", False), ("0", False), ("no", False), ("off", False), ("OFF", False),
    ('"false"', False), (False, False),
])
def test_boolean_spellings(raw, expected):
    config = TrainConfig.from_hyperparameters({"pretrained": raw, "amp": raw})
    assert config.pretrained is expected and config.amp is expected


@pytest.mark.parametrize("raw", ["maybe", "2", "", "truthy", '"not a bool"'])
def test_invalid_boolean_names_the_hyperparameter(raw):
    with pytest.raises(ValueError, match="hyperparameter pretrained="):
        TrainConfig.from_hyperparameters({"pretrained": raw})


@pytest.mark.parametrize("raw, expected", [
    ("32", 32), ("32.0", 32), ('"32"', 32), ('"32.0"', 32), (" 32 ", 32), ("3.2e1", 32), (32, 32), (32.0, 32),
])
def test_ints_given_as_floats(raw, expected):
    config = TrainConfig.from_hyperparameters({"batch-size": raw, "epochs": raw})
    assert config.batch_size == expected and config.epochs == expected
    assert type(config.batch_size) is int and type(config.epochs) is int


def test_sagemaker_keys_are_ignored():
    config = TrainConfig.from_hyperparameters({
        "_tuning_objective_metric": '"valid_accuracy"',
        "sagemaker_program": '"train.py"',
        "sagemaker_region": '"us-east-1"',
        "sagemaker_submit_directory": '"s3://bucket/source.tar.gz"',
        "sagemaker_container_log_level": "20",
        "sagemaker_job_name": '"job-1"',
        "sagemaker_estimator_class_name": '"Estimator"',
        "epochs": "2",
    })
    assert config == TrainConfig(epochs=2)


@pytest.mark.parametrize("key", ["learning-rate", "batchsize", "sagemaker", "_other", "Model"])
def test_unknown_key_lists_the_valid_names(key):
    with pytest.raises(ValueError) as info:
        TrainConfig.from_hyperparameters({key: "1", "epochs": "2"})
    message = str(info.value)
    assert key in message
    for name in TrainConfig.field_names():
        assert name in message
    assert "batch-size" in message and "image-size" in message


@pytest.mark.parametrize("key, raw, named", [
    ("model", "resnet9", "model"),
    ("model", '"vgg16"', "model"),
    ("lr", "0", "lr"),
    ("lr", "-0.1", "lr"),
    ("lr", "abc", "lr"),
    ("lr", "nan", "lr"),
    ("lr", "inf", "lr"),
    ("lr", "Infinity", "lr"),
    ("weight-decay", "inf", "weight-decay"),
    ("dropout", "nan", "dropout"),
    ("lr", "", "lr"),
    ("epochs", "0", "epochs"),
    ("epochs", "ten", "epochs"),
    ("optimizer", "rmsprop", "optimizer"),
    ("image-size", "8", "image-size"),
    ("image_size", "4096", "image-size"),
    ("freeze", "all", "freeze"),
    ("batch-size", "3.5", "batch-size"),
    ("batch_size", "3.5", "batch_size"),
    ("batch-size", "0", "batch-size"),
    ("lr-scheduler", "step", "lr-scheduler"),
    ("dropout", "1", "dropout"),
    ("momentum", "1.0", "momentum"),
    ("label-smoothing", "-0.1", "label-smoothing"),
    ("weight-decay", "-1", "weight-decay"),
    ("crop-scale-min", "0", "crop-scale-min"),
    ("hflip-prob", "1.5", "hflip-prob"),
    ("num-workers", "-2", "num-workers"),
    ("early-stopping-patience", "-1", "early-stopping-patience"),
])
def test_invalid_value_names_the_hyperparameter(key, raw, named):
    with pytest.raises(ValueError, match=f"hyperparameter {named}="):
        TrainConfig.from_hyperparameters({key: raw})


def test_to_dict_round_trip():
    config = TrainConfig(model="mobilenet_v2", pretrained=False, freeze="none", dropout=0.3, lr=0.0005,
                         lr_scheduler="none", batch_size=8, epochs=7, optimizer="adamw",
                         weight_decay=1e-05, momentum=0.8, label_smoothing=0.1, image_size=128,
                         crop_scale_min=0.25, hflip_prob=0.0, num_workers=0, seed=7,
                         early_stopping_patience=2, amp=False)
    as_dict = config.to_dict()
    assert list(as_dict) == TrainConfig.field_names()
    assert as_dict["batch-size"] == 8 and as_dict["pretrained"] is False
    assert json.loads(json.dumps(as_dict)) == as_dict
    assert TrainConfig.from_hyperparameters(as_dict) == config
    assert TrainConfig.from_hyperparameters(sdk_v2(**as_dict)) == config
    assert TrainConfig.from_hyperparameters({k: str(v) for k, v in as_dict.items()}) == config


def test_config_is_frozen_and_copies_with_changes():
    config = TrainConfig(model="resnet18")
    with pytest.raises(ValueError):
        config.epochs = 9  # type: ignore[misc]
    assert config.model_copy(update={"epochs": 9}).epochs == 9 and config.epochs == 5


@pytest.mark.parametrize("hyperparameters, message", [
    ({"batch-size": "3.5"}, "hyperparameter batch-size='3.5' is not a whole number: batch-size must be a whole "
                            "number >= 1"),
    ({"optimizer": "rmsprop"}, "hyperparameter optimizer='rmsprop' is invalid: must be one of adam, adamw, sgd"),
    ({"dropout": "1"}, "hyperparameter dropout=1.0 is invalid: must be a number in [0, 1)"),
    ({"freeze": "none", "head-epochs": "5"}, "hyperparameter head-epochs=5 is invalid: must be >= 0, and with "
                                             "freeze=none fewer than epochs"),
])
def test_error_message_says_what_the_hyperparameter_accepts(hyperparameters, message):
    with pytest.raises(ValueError) as info:
        TrainConfig.from_hyperparameters(hyperparameters)
    assert message in str(info.value)


def test_direct_construction_validates_too():
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(lr=-1)
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig(learning_rate=0.1)  # type: ignore[call-arg]
