"""Tests for the /opt/ml layout snapshot: relocation, JSON config files, channels and server settings."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from image_classifier import sagemaker_env as sm
from image_classifier.sagemaker_env import SageMakerEnv


@pytest.fixture
def base(tmp_path) -> Path:
    return tmp_path / "opt_ml"


@pytest.fixture
def env(base) -> SageMakerEnv:
    return SageMakerEnv.from_environ({sm.BASE_DIR_ENV: str(base)})


def write_config(base: Path, name: str, content) -> Path:
    """Write input/config/<name>: `content` JSON-encoded, or as is when it is a str."""
    path = base / "input" / "config" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


@pytest.mark.parametrize("attribute, relative", [
    ("input_dir", "input"),
    ("config_dir", "input/config"),
    ("data_dir", "input/data"),
    ("hyperparameters_path", "input/config/hyperparameters.json"),
    ("input_data_config_path", "input/config/inputdataconfig.json"),
    ("resource_config_path", "input/config/resourceconfig.json"),
    ("checkpoint_config_path", "input/config/checkpointconfig.json"),
    ("model_dir", "model"),
    ("output_dir", "output"),
    ("output_data_dir", "output/data"),
    ("failure_path", "output/failure"),
    ("checkpoint_dir", "checkpoints"),
])
def test_every_path_relocates_under_base_dir(env, base, attribute, relative):
    assert getattr(env, attribute) == base / relative


@pytest.mark.parametrize("channel", ["train", "valid", "validation", "test", "pretrained"])
def test_channel_dir_relocates(env, base, channel):
    assert env.channel_dir(channel) == base / "input" / "data" / channel


@pytest.mark.parametrize("attribute, path", [
    ("hyperparameters_path", "/opt/ml/input/config/hyperparameters.json"),
    ("model_dir", "/opt/ml/model"),
    ("output_data_dir", "/opt/ml/output/data"),
    ("failure_path", "/opt/ml/output/failure"),
])
def test_default_base_dir_is_opt_ml(attribute, path):
    assert getattr(SageMakerEnv.from_environ({}), attribute) == Path(path)


def test_from_environ_reads_os_environ_once(monkeypatch, base):
    monkeypatch.setenv(sm.BASE_DIR_ENV, str(base))
    monkeypatch.setenv(sm.BIND_TO_PORT_ENV, "9000")
    env = SageMakerEnv.from_environ()
    monkeypatch.setenv(sm.BIND_TO_PORT_ENV, "9001")
    monkeypatch.setenv(sm.BASE_DIR_ENV, "/elsewhere")
    assert env.base_dir == base
    assert env.server.port == 9000
    with pytest.raises(dataclasses.FrozenInstanceError):
        env.base_dir = Path("/x")  # type: ignore[misc]


@pytest.mark.parametrize("config, expected", [
    (None, "{base}/checkpoints"),                                   # no checkpointconfig.json
    ({}, "{base}/checkpoints"),
    ({"LocalPath": ""}, "{base}/checkpoints"),
    ({"LocalPath": "/opt/ml/checkpoints"}, "{base}/checkpoints"),   # SageMaker's default, relocated
    ({"LocalPath": "/opt/ml/checkpoints/"}, "{base}/checkpoints"),
    ({"LocalPath": "/opt/ml/checkpoints", "S3Uri": "s3://bucket/ckpt"}, "{base}/checkpoints"),
    ({"LocalPath": "{tmp}/custom/ckpt", "S3Uri": "s3://bucket/ckpt"}, "{tmp}/custom/ckpt"),
    ({"LocalPath": "/opt/ml/other_checkpoints"}, "/opt/ml/other_checkpoints"),
])
def test_checkpoint_dir_honours_checkpointconfig(tmp_path, base, env, config, expected):
    if config is not None:
        config = {k: v.format(tmp=tmp_path) for k, v in config.items()}
        write_config(base, sm.CHECKPOINT_CONFIG_FILE, config)
    assert env.checkpoint_dir == Path(expected.format(base=base, tmp=tmp_path))


def test_hyperparameters_as_strings_even_when_json_values_are_not(env, base):
    write_config(base, sm.HYPERPARAMETERS_FILE, {
        "model": "resnet18", "sdk-v2": '"resnet18"', "epochs": 3, "lr": 0.01, "pretrained": True,
        "amp": False, "nothing": None, "sizes": [1, 2], "nested": {"a": 1}})
    assert env.hyperparameters() == {
        "model": "resnet18", "sdk-v2": '"resnet18"', "epochs": "3", "lr": "0.01", "pretrained": "true",
        "amp": "false", "nothing": "null", "sizes": "[1, 2]", "nested": '{"a": 1}'}


def test_non_string_hyperparameters_parse_into_a_train_config(env, base):
    from image_classifier.training.config import TrainConfig

    write_config(base, sm.HYPERPARAMETERS_FILE,
                 {"model": "resnet18", "epochs": 3, "lr": 0.01, "pretrained": False, "batch-size": 8.0})
    config = TrainConfig.from_hyperparameters(env.hyperparameters())
    assert (config.model, config.epochs, config.lr, config.pretrained, config.batch_size) == \
        ("resnet18", 3, 0.01, False, 8)


@pytest.mark.parametrize("method", ["hyperparameters", "input_data_config", "resource_config", "channels"])
def test_missing_config_files_are_empty(env, method):
    assert getattr(env, method)() in ({}, [])


@pytest.mark.parametrize("file_name, read", [
    (sm.HYPERPARAMETERS_FILE, lambda env: env.hyperparameters()),
    (sm.INPUT_DATA_CONFIG_FILE, lambda env: env.input_data_config()),
    (sm.INPUT_DATA_CONFIG_FILE, lambda env: env.channels()),
    (sm.RESOURCE_CONFIG_FILE, lambda env: env.resource_config()),
    (sm.CHECKPOINT_CONFIG_FILE, lambda env: env.checkpoint_dir),
])
@pytest.mark.parametrize("content", ["{not json", "", '{"epochs": 3', "[1, 2]", '"text"', "3"])
def test_invalid_json_file_raises_value_error_naming_it(env, base, file_name, read, content):
    write_config(base, file_name, content)
    with pytest.raises(ValueError, match=file_name.replace(".", r"\.")):
        read(env)


def test_resource_config(env, base):
    config = {"current_host": "algo-1", "hosts": ["algo-1", "algo-2"], "network_interface_name": "eth0"}
    write_config(base, sm.RESOURCE_CONFIG_FILE, config)
    assert env.resource_config() == config


def test_channels_from_inputdataconfig_win_over_folders(env, base):
    write_config(base, sm.INPUT_DATA_CONFIG_FILE, {
        "train": {"TrainingInputMode": "File", "ContentType": "application/x-image"},
        "validation": {"TrainingInputMode": "File"},
        "pretrained": {"TrainingInputMode": "File"}})
    (base / "input" / "data" / "leftover").mkdir(parents=True)
    assert env.channels() == ["train", "validation", "pretrained"]
    assert env.input_data_config()["train"]["ContentType"] == "application/x-image"


def test_channels_from_folders_when_no_inputdataconfig(env, base):
    data = base / "input" / "data"
    for name in ("valid", "train", "test"):
        (data / name).mkdir(parents=True)
    (data / "manifest.json").write_text("{}")  # a file, not a channel
    assert env.channels() == ["test", "train", "valid"]


@pytest.mark.parametrize("attribute, environ, expected", [
    ("port", {}, 8080),
    ("port", {sm.BIND_TO_PORT_ENV: "9090"}, 9090),
    ("model_server_workers", {sm.MODEL_SERVER_WORKERS_ENV: "3"}, 3),
    ("model_server_timeout", {}, 60),
    ("model_server_timeout", {sm.MODEL_SERVER_TIMEOUT_ENV: "300"}, 300),
    ("max_payload_bytes", {}, 6_000_000),
    ("max_payload_bytes", {sm.MAX_PAYLOAD_ENV: "2"}, 2_000_000),
    ("max_payload_bytes", {sm.MAX_PAYLOAD_ENV: "0.5"}, 500_000),
    ("max_payload_bytes", {sm.MAX_PAYLOAD_ENV: "1.5"}, 1_500_000),
    ("max_payload_bytes", {sm.MAX_PAYLOAD_ENV: "100"}, 100_000_000),
    ("max_image_pixels", {}, None),
    ("max_image_pixels", {sm.MAX_IMAGE_PIXELS_ENV: ""}, None),
    ("max_image_pixels", {sm.MAX_IMAGE_PIXELS_ENV: "1000000"}, 1_000_000),
])
def test_serving_settings_from_environment(attribute, environ, expected):
    assert getattr(SageMakerEnv.from_environ(environ).server, attribute) == expected


@pytest.mark.parametrize("cpu_count", [5, None])
def test_model_server_defaults_do_not_depend_on_the_cores(monkeypatch, cpu_count):
    monkeypatch.setattr(os, "cpu_count", lambda: cpu_count)
    env = SageMakerEnv.from_environ({})
    assert (env.server.model_server_workers, env.server.model_server_threads, env.server.max_batch) == (1, 8, 16)


@pytest.mark.parametrize("file, env, expected", [
    ({"epochs": "3"}, '{"epochs": 5, "lr": 0.1}', {"epochs": "5", "lr": "0.1"}),
    ({"epochs": "3"}, "", {"epochs": "3"}),
    (None, '{"model": "resnet18"}', {"model": "resnet18"}),
])
def test_sm_hps_adds_to_and_overrides_the_file(tmp_path, file, env, expected):
    if file is not None:
        (tmp_path / "input" / "config").mkdir(parents=True)
        (tmp_path / "input" / "config" / "hyperparameters.json").write_text(json.dumps(file))
    sm = SageMakerEnv.from_environ({"SAGEMAKER_BASE_DIR": str(tmp_path), "SM_HPS": env})
    assert sm.hyperparameters() == expected


@pytest.mark.parametrize("env", ["{not json", "[1, 2]"])
def test_sm_hps_must_be_a_json_object(tmp_path, env):
    with pytest.raises(ValueError, match="SM_HPS"):
        SageMakerEnv.from_environ({"SAGEMAKER_BASE_DIR": str(tmp_path), "SM_HPS": env}).hyperparameters()


@pytest.mark.parametrize("name, value, accepts", [
    (sm.MODEL_SERVER_WORKERS_ENV, "two", "a whole number >= 1"),
    (sm.MODEL_SERVER_WORKERS_ENV, "0", "a whole number >= 1"),
    (sm.THREADS_ENV, "1.5", "a whole number >= 1"),
    (sm.MODEL_SERVER_TIMEOUT_ENV, "-1", "a whole number >= 0"),
    (sm.MAX_PAYLOAD_ENV, "0", "a number > 0"),
    (sm.MAX_PAYLOAD_ENV, "inf", "a number > 0"),
    (sm.BIND_TO_PORT_ENV, "70000", "a whole number in [1, 65535]"),
    (sm.MAX_BATCH_ENV, "0", "a whole number >= 1"),
    (sm.PRECISION_ENV, "fp16", "one of fp32, bf16, int8"),
    (sm.MAX_IMAGE_PIXELS_ENV, "lots", "a whole number >= 1"),
])
def test_invalid_server_setting_names_the_variable_the_value_and_what_it_accepts(name, value, accepts):
    env = SageMakerEnv.from_environ({name: value})  # the layout does not need the server's settings
    with pytest.raises(ValueError) as info:
        _ = env.server
    assert f"environment variable {name}={value!r} is invalid: must be {accepts}" in str(info.value)


@pytest.mark.parametrize("environ, expected", [
    ({sm.MODEL_SERVER_WORKERS_ENV: " 2 "}, 2),
    ({sm.MODEL_SERVER_WORKERS_ENV: "2.0"}, 2),
    ({sm.MODEL_SERVER_WORKERS_ENV: ""}, 1),    # empty keeps the default
    ({"UNRELATED": "x"}, 1),
])
def test_server_settings_spellings(environ, expected):
    assert SageMakerEnv.from_environ(environ).server.model_server_workers == expected


def test_server_settings_are_built_once_and_frozen():
    env = SageMakerEnv.from_environ({sm.THREADS_ENV: "4"})
    assert env.server is env.server and env.server.model_server_threads == 4
    with pytest.raises(ValueError):
        env.server.model_server_threads = 2  # type: ignore[misc]


def test_defaults_come_from_the_schema():
    settings = sm.ServerSettings()
    assert (settings.port, settings.model_server_workers, settings.model_server_threads, settings.max_batch) == \
        (sm.DEFAULT_PORT, sm.DEFAULT_WORKERS, sm.DEFAULT_THREADS, sm.DEFAULT_MAX_BATCH)
    assert settings.max_payload_bytes == sm.DEFAULT_MAX_PAYLOAD_MB * 1_000_000
