"""Model artifacts: round trip, the config's schema, atomic writes and permissions."""

import json
import os
import stat

import pytest
import torch

from image_classifier import artifacts


def spec(**changes) -> artifacts.ModelSpec:
    values = {"arch": "resnet18", "num_classes": 2, "class_names": ["001.a", "002.b"], "labels": ["a", "b"],
                  "image_size": 32, "resize_size": 37, "mean": [0.5] * 3, "std": [0.25] * 3, "dropout": 0.1}
    return artifacts.ModelSpec(**{**values, **changes})


def test_round_trip(tmp_path):
    state_dict = {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2)}
    artifacts.save_model(tmp_path, state_dict, spec())
    loaded, loaded_spec = artifacts.load_model(tmp_path)
    assert loaded_spec == spec()
    assert loaded.keys() == state_dict.keys() and all(torch.equal(loaded[k], state_dict[k]) for k in loaded)
    assert sorted(p.name for p in tmp_path.iterdir()) == [artifacts.WEIGHTS_FILE, artifacts.CONFIG_FILE]


def test_config_without_required_keys_is_refused():
    data = json.loads(spec().to_json())
    del data["labels"], data["image_size"]
    with pytest.raises(ValueError, match="image_size, labels"):
        artifacts.ModelSpec.from_json(json.dumps(data))


def test_config_from_before_dropout_existed_loads():
    data = json.loads(spec().to_json())
    del data["dropout"]
    assert artifacts.ModelSpec.from_json(json.dumps(data)).dropout == 0.0


def test_artifacts_are_readable_by_other_users(tmp_path):
    """The serving image's `model-server` user reads what a root training job wrote."""
    old = os.umask(0o022)
    try:
        artifacts.save_model(tmp_path, {"w": torch.zeros(1)}, spec())
    finally:
        os.umask(old)
    for name in (artifacts.WEIGHTS_FILE, artifacts.CONFIG_FILE):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    artifacts.atomic_write_bytes(target, b"old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        artifacts.atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]
