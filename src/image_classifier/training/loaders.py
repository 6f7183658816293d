"""The job's channels as DataLoaders: of images (`data`), or of cached backbone features (`features`)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from image_classifier import models
from image_classifier.sagemaker_env import SageMakerEnv
from image_classifier.training import data, distributed, features
from image_classifier.training.config import TrainConfig
from image_classifier.transforms import eval_transform, train_transform

logger = logging.getLogger(__name__)


def num_workers(config: TrainConfig) -> int:
    """DataLoader worker processes: `num-workers`, or with -1 (auto) as many as CPUs, at most 4."""
    return min(4, os.cpu_count() or 1) if config.num_workers < 0 else config.num_workers


def find_channels(env: SageMakerEnv) -> tuple[dict[str, Path], list[str]]:
    """The channels (train, valid, and test if present) and their class folder names.

    Raises:
        FileNotFoundError: the train or valid channel is missing.
        ValueError: channels with different classes.
    """
    channels = data.resolve_channels(env.channel_dir)
    if data.VALID not in channels:
        raise FileNotFoundError(f"no valid (or validation) channel at {env.channel_dir(data.VALID)}: "
                                f"the best weights are chosen on it")
    return channels, data.class_names_of(channels)


def make_loaders(config: TrainConfig, channels: dict[str, Path], class_names: list[str],
                 pin_memory: bool) -> dict[str, DataLoader]:
    """One DataLoader of images per channel; train gets the train transforms if `augment`.

    Batches are (images (N, 3, image_size, image_size) float32 normalised, targets (N,) int64);
    under DDP each rank reads its shard, in batches of its share of `batch-size`.

    Raises:
        ValueError: a channel without readable images.
    """
    workers = num_workers(config)
    norm = models.data_config(config.model)
    loaders = {}
    for name, path in channels.items():
        is_train = name == data.TRAIN
        transform = (train_transform(config.image_size, config.crop_scale_min, config.hflip_prob, norm.mean, norm.std)
                     if is_train and config.augment else eval_transform(config.image_size, norm.mean, norm.std))
        dataset = data.ImageFolderChannel(path, class_names, transform, seed=config.seed, channel=name)
        if len(dataset) == 0:
            raise ValueError(f"the {name} channel ({path}) has no readable images")
        loaders[name] = data.make_loader(dataset, distributed.per_rank_batch(config.batch_size), workers,  # ddp
                                         is_train, config.seed, pin_memory, **distributed.shard())
    return loaders


def make_feature_loaders(env: SageMakerEnv, config: TrainConfig, channels: dict[str, Path],
                         class_names: list[str], model: nn.Module, device: torch.device,
                         amp_dtype: torch.dtype | None) -> dict[str, DataLoader]:
    """One DataLoader of cached backbone features per channel (see `training.features`).

    Under DDP the processes of one machine share its checkpoint dir: the first computes the
    features, the others wait on the cache's lock and read them.

    Raises:
        ValueError: a channel without readable images.
    """
    if config.augment:
        logger.warning("feature-cache=on: the train channel's features are computed once with the eval "
                       "transforms, so augmentation (augment=true) is not applied")
    cached = features.load_or_compute(
        env.checkpoint_dir, channels, class_names, model, config.model, config.image_size,
        config.batch_size, num_workers(config), config.seed, device, amp_dtype, device.type == "cuda")
    return {name: data.make_loader(dataset, distributed.per_rank_batch(config.batch_size), 0, name == data.TRAIN,
                                   config.seed, pin_memory=False, collate_fn=features.as_batch, **distributed.shard())
            for name, dataset in cached.items()}
