"""The feature cache: keys that follow the data and the backbone, and jobs that train on it."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import time

import pytest
import torch

from image_classifier import artifacts, local, models
from image_classifier.sagemaker_env import SageMakerEnv
from image_classifier.training import data, features
from image_classifier.training.config import TrainConfig
from image_classifier.training.job import run
from image_classifier.training.metrics import read_epochs
from tests.conftest import TINY_JOB, sdk_hyperparameters, write_digit_tree

CLASSES = ["001.zero", "002.one", "003.two"]
# a frozen random backbone (no ImageNet weights offline): the head learns on its features
FROZEN = {"freeze": "backbone", "augment": False, "epochs": 3, "lr": 0.01, "batch_size": 8}


def test_feature_channel_batches_by_epoch_sampler_keys():
    features_ = torch.arange(12, dtype=torch.float32).reshape(6, 2)
    channel = features.FeatureChannel(features_, torch.tensor([0, 1, 2, 0, 1, 2]))
    batch, targets = channel.__getitems__([(1, 4), (1, 0), (1, 5)])
    assert batch.tolist() == [[8.0, 9.0], [0.0, 1.0], [10.0, 11.0]]
    assert targets.tolist() == [1, 0, 2]
    loader = data.make_loader(channel, 4, 0, True, 0, False, collate_fn=features.as_batch)
    loader.sampler.set_epoch(1)
    seen = torch.cat([t for _, t in loader])
    assert len(seen) == 4  # training drops the last partial batch, as with images
    with pytest.raises(ValueError):
        features.FeatureChannel(features_, torch.zeros(5, dtype=torch.long))


def test_channel_digest_follows_content_not_times(tmp_path):
    tree = write_digit_tree(tmp_path / "d", num_classes=3, per_split={"train": 3})
    root = tree / "train"
    before = features.channel_digest(root, CLASSES)
    image = sorted((root / "002.one").glob("*.png"))[0]
    os.utime(image, (time.time() + 1000, time.time() + 1000))  # a new download: same bytes
    assert features.channel_digest(root, CLASSES) == before
    pixels = bytearray(image.read_bytes())
    shutil.copy(image, tmp_path / "original.png")
    (root / "002.one" / "extra.png").write_bytes(pixels)  # one more file
    assert features.channel_digest(root, CLASSES) != before
    (root / "002.one" / "extra.png").unlink()
    shutil.copy(sorted((root / "001.zero").glob("*.png"))[0], image)  # same name, other content
    assert features.channel_digest(root, CLASSES) != before
    shutil.copy(tmp_path / "original.png", image)
    assert features.channel_digest(root, CLASSES) == before


def test_backbone_digest_ignores_the_head_only():
    torch.manual_seed(0)
    model = models.create_model("resnet18", 3)
    digest = features.backbone_digest(model, "resnet18")
    with torch.no_grad():
        model.fc[1].weight.add_(1.0)
    assert features.backbone_digest(model, "resnet18") == digest
    with torch.no_grad():
        model.layer1[0].bn1.running_mean.add_(1.0)  # a buffer changes the features too
    assert features.backbone_digest(model, "resnet18") != digest


def test_cache_key_changes_with_each_input():
    base = {"channel": "train", "channel_files": "f", "backbone": "b", "model_name": "resnet18", "image_size": 32,
                "class_names": CLASSES}
    key = features.cache_key(**base)
    assert key.startswith("train-") and key.endswith(".pt")
    for name, other in [("channel", "valid"), ("channel_files", "g"), ("backbone", "c"),
                        ("model_name", "resnet34"), ("image_size", 64), ("class_names", CLASSES[:2])]:
        assert features.cache_key(**{**base, name: other}) != key, name


@pytest.mark.parametrize("hyperparameters, expected", [
    ({"freeze": "backbone", "augment": "false"}, True),
    ({"freeze": "backbone"}, False),                      # augmentation on by default
    ({"freeze": "none", "augment": "false"}, False),
    ({"freeze": "backbone", "feature-cache": "on"}, True),
    ({"freeze": "backbone", "augment": "false", "feature-cache": "off"}, False),
])
def test_auto_uses_the_cache_for_a_frozen_backbone_without_augmentation(hyperparameters, expected):
    assert TrainConfig.from_hyperparameters(hyperparameters).uses_feature_cache is expected


def test_cache_on_refuses_a_backbone_that_trains():
    with pytest.raises(ValueError, match="feature-cache"):
        TrainConfig.from_hyperparameters({"freeze": "none", "feature-cache": "on"})
    with pytest.raises(ValueError, match="feature-cache"):
        TrainConfig.from_hyperparameters({"feature-cache": "sometimes"})


def _run(env: SageMakerEnv, **hyperparameters) -> dict:
    config = TrainConfig.from_hyperparameters({**TINY_JOB, **FROZEN, **hyperparameters})
    return run(env, config)


def _cache_files(env: SageMakerEnv) -> dict[str, float]:
    directory = env.checkpoint_dir / features.CACHE_DIR
    return {p.name: p.stat().st_mtime_ns for p in directory.glob("*.pt")}


@pytest.mark.slow
def test_cached_training_equals_training_on_images(opt_ml, tmp_path):
    """Same seed, no augmentation: the head sees the same features in the same order either way."""
    cached_env, plain_env = opt_ml(), SageMakerEnv(base_dir=tmp_path / "plain")
    shutil.copytree(cached_env.base_dir, plain_env.base_dir, symlinks=True)
    cached = _run(cached_env, feature_cache="on")
    plain = _run(plain_env, feature_cache="off")

    assert sorted(n.split("-")[0] for n in _cache_files(cached_env)) == ["test", "train", "valid"]
    assert not (plain_env.checkpoint_dir / features.CACHE_DIR).exists()
    for a, b in zip(read_epochs(cached_env.output_data_dir), read_epochs(plain_env.output_data_dir), strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["valid_accuracy"] == b["valid_accuracy"]
    assert cached["test_accuracy"] == plain["test_accuracy"]
    # the model artifacts are the whole network, the same weights either way
    weights = [torch.load(e.model_dir / artifacts.WEIGHTS_FILE, weights_only=True) for e in (cached_env, plain_env)]
    assert weights[0].keys() == weights[1].keys() and "conv1.weight" in weights[0]
    for key in weights[0]:
        torch.testing.assert_close(weights[0][key], weights[1][key], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_cache_is_reused_and_a_changed_channel_is_computed_again(opt_ml, digit_tree, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="image_classifier")
    tree = shutil.copytree(digit_tree, tmp_path / "data")
    env = opt_ml(tree)
    _run(env)
    first = _cache_files(env)
    assert len(first) == 3

    # a restarted job or another trial: the same files, nothing computed
    shutil.rmtree(env.model_dir)
    env.model_dir.mkdir()
    (env.checkpoint_dir / "checkpoint.pt").unlink()
    caplog.clear()
    _run(env, lr=0.02)
    assert _cache_files(env) == first
    assert "computed" not in caplog.text and caplog.text.count("features from the cache") == 3
    assert (env.model_dir / artifacts.WEIGHTS_FILE).is_file()

    # one valid image replaced: valid gets a new cache file, train and test are read
    image = sorted((tree / "valid" / "002.one").glob("*.png"))[0]
    shutil.copy(sorted((tree / "valid" / "001.zero").glob("*.png"))[0], image)
    caplog.clear()
    _run(env, lr=0.03)
    now = _cache_files(env)
    assert len(now) == 4 and set(first) < set(now)
    assert caplog.text.count("features from the cache") == 2 and "channel valid: computed" in caplog.text

    # another backbone (another seed's random init) never reads those features
    caplog.clear()
    _run(env, seed=4)
    assert len(_cache_files(env)) == 7


@pytest.mark.slow
def test_jobs_side_by_side_compute_the_features_once(opt_ml, tmp_path):
    """Two training jobs (as two tuning trials) on one cache folder: one computes, one waits and reads."""
    first = opt_ml()
    second = SageMakerEnv(base_dir=tmp_path / "second")
    shutil.copytree(first.base_dir, second.base_dir, symlinks=True)
    shared = tmp_path / "shared-cache"
    for env in (first, second):
        local.link_feature_cache(env, shared)
        env.hyperparameters_path.write_text(json.dumps(sdk_hyperparameters(**{**TINY_JOB, **FROZEN})))
    jobs = [local.start_job(e.base_dir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for e in (first, second)]
    logs = [job.communicate(timeout=300)[0] for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0], logs
    assert sum(log.count(": computed") for log in logs) == 3
    assert sum(log.count("features from the cache") for log in logs) == 3
    assert len(list(shared.glob("*.pt"))) == 3


@pytest.mark.slow
def test_compiled_head_on_cached_features_saves_the_plain_model(opt_ml):
    """compile=true wraps what trains; checkpoints and artifacts keep the model's own keys."""
    env = opt_ml()
    result = _run(env, compile=True, epochs=1, lr_scheduler="none")  # one epoch at the full rate
    weights = torch.load(env.model_dir / artifacts.WEIGHTS_FILE, weights_only=True)
    assert "fc.1.weight" in weights and not any("_orig_mod" in k for k in weights)
    assert result["valid_accuracy"] > 1 / 3  # it learned from the features: better than chance on 3 classes
