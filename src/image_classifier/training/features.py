"""Cached backbone features: a frozen backbone's outputs, computed once per channel and reused.

With `freeze=backbone` every epoch pushes every image through the same frozen network to
train the head. Its features never change, so the job computes them once per channel
(with the eval transforms: Resize, CenterCrop, Normalize; no augmentation) and trains the
head on them. A feature is what the head receives: the input of `models.head_module`, taken
with a forward pre-hook on the whole model in eval mode (for ResNet50 a float32 vector of
2,048 values per image), so the head trained on cached features is exactly the head of the
whole network, which is what the job saves and the server loads.

The cache lives in `<checkpoint dir>/feature-cache/`, one file per channel, named by a key
over everything the features depend on: the model name, a digest of the backbone's weights
(pretrained or seeded random), the image size and normalisation, the class folders and a
digest of every file's path and content. A restarted (spot) job, whose checkpoint dir
SageMaker restores, and every trial on the same instance find it; a changed dataset or
backbone gets a new key and never reads a stale file. Jobs running side by side take turns
through a lock file, so the features are computed once.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from image_classifier import artifacts, models
from image_classifier.training import data
from image_classifier.training.loop import autocast
from image_classifier.transforms import eval_transform, resize_size

logger = logging.getLogger(__name__)

CACHE_DIR = "feature-cache"       # under the checkpoint dir
LOCK_FILE = ".lock"
FORMAT_VERSION = 1                # bump when what a cache file holds, or how it is computed, changes
_READ_CHUNK = 1 << 20             # bytes per read while hashing files


class FeatureChannel(Dataset):
    """A channel's cached features: items `(features (D,) float32, class_id)`.

    DataLoader fetches whole batches through `__getitems__` (one tensor gather, not N
    Python calls); keys are plain indices or `EpochSampler`'s `(epoch, index)` pairs.
    """

    def __init__(self, features: torch.Tensor, targets: torch.Tensor):
        if features.shape[0] != targets.shape[0]:
            raise ValueError(f"{features.shape[0]} features for {targets.shape[0]} targets")
        self.features, self.targets = features, targets

    def __len__(self) -> int:
        return self.features.shape[0]

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = key[1] if isinstance(key, tuple) else key
        return self.features[index], self.targets[index]

    def __getitems__(self, keys: list) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch: features (N, D) float32 and targets (N,) int64."""
        indices = torch.tensor([k[1] if isinstance(k, tuple) else k for k in keys], dtype=torch.long)
        return self.features[indices], self.targets[indices]


def as_batch(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """DataLoader's collate_fn for `FeatureChannel`: `__getitems__` already made the batch."""
    return batch


def backbone_digest(model: nn.Module, name: str) -> str:
    """SHA-256 over the backbone's state (every parameter and buffer but the head's), hex."""
    head_prefix = models.head_path(name) + "."
    return artifacts.state_digest({k: v for k, v in model.state_dict().items() if not k.startswith(head_prefix)})


def _file_digest(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_READ_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def channel_digest(root: Path, class_names: list[str], workers: int = 8) -> str:
    """SHA-256 over every file of the channel: its path (relative to `root`), class and content.

    Content, not modification times: SageMaker downloads the channels afresh on a restarted
    job, so times change while the data does not.
    """
    files = data.list_files(root, class_names)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        contents = list(pool.map(_file_digest, [p for p, _ in files]))
    digest = hashlib.sha256()
    for (path, class_id), content in zip(files, contents):
        digest.update(f"{os.path.relpath(path, root)}\0{class_id}\0{content}\n".encode())
    return digest.hexdigest()


def cache_key(channel: str, channel_files: str, backbone: str, model_name: str, image_size: int,
              class_names: list[str]) -> str:
    """The name of a channel's cache file: a digest of everything its features depend on."""
    norm = models.data_config(model_name)
    identity = {"format": FORMAT_VERSION, "channel": channel, "files": channel_files, "backbone": backbone,
                "model": model_name, "image_size": image_size, "resize": resize_size(image_size),
                "mean": norm.mean, "std": norm.std, "classes": class_names}
    return f"{channel}-{hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]}.pt"


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on the cache dir (flock: the kernel frees it if the job dies)."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / LOCK_FILE, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@torch.inference_mode()
def compute_features(model: nn.Module, name: str, loader: DataLoader, device: torch.device,
                     amp_dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The head's inputs for every batch of `loader` (images (N, 3, H, W) float32, targets (N,)).

    Returns:
        features (N, D) float32 and targets (N,) int64, on the CPU, in the loader's order.
    """
    captured: list[torch.Tensor] = []
    handle = models.head_module(model, name).register_forward_pre_hook(
        lambda module, args: captured.append(args[0].detach().float().cpu()))
    model.train(False)  # eval mode
    targets = []
    try:
        for images, batch_targets in loader:
            with autocast(device, amp_dtype):
                model(images.to(device, non_blocking=True))
            targets.append(batch_targets)
    finally:
        handle.remove()
    return torch.cat(captured), torch.cat(targets).long()


def load_or_compute(checkpoint_dir: Path, channels: dict[str, Path], class_names: list[str],
                    model: nn.Module, model_name: str, image_size: int, batch_size: int, num_workers: int,
                    seed: int, device: torch.device, amp_dtype: torch.dtype | None,
                    pin_memory: bool) -> dict[str, FeatureChannel]:
    """Each channel's features: read from the cache, or computed with `model` and cached.

    Args:
        checkpoint_dir: the job's checkpoint dir; the cache is its `feature-cache/` folder.
        channels: channel name → ImageFolder root (`data.resolve_channels`).
        model: the whole network (backbone with its head), on `device`.

    Raises:
        ValueError: a channel without readable images.
    """
    directory = checkpoint_dir / CACHE_DIR
    backbone = backbone_digest(model, model_name)
    keys = {name: cache_key(name, channel_digest(path, class_names), backbone, model_name, image_size,
                            class_names) for name, path in channels.items()}
    found: dict[str, FeatureChannel] = {}
    missing = {name for name in channels if not (directory / keys[name]).is_file()}
    computed = set()
    if missing:
        with _locked(directory):  # another job may be computing the same features: wait for it
            for name in sorted(missing):
                path = directory / keys[name]
                if not path.is_file():
                    norm = models.data_config(model_name)
                    dataset = data.ImageFolderChannel(channels[name], class_names,
                                                      eval_transform(image_size, norm.mean, norm.std),
                                                      seed=seed, channel=name)
                    if len(dataset) == 0:
                        raise ValueError(f"the {name} channel ({channels[name]}) has no readable images")
                    loader = data.make_loader(dataset, batch_size, num_workers, False, seed, pin_memory)
                    features, targets = compute_features(model, model_name, loader, device, amp_dtype)
                    artifacts.atomic_torch_save({"features": features, "targets": targets}, path)
                    computed.add(name)
                    logger.info("channel %s: computed %d features of %d values, cached in %s (%.1f MB)",
                                name, *features.shape, path, path.stat().st_size / 1e6)
    for name in channels:
        path = directory / keys[name]
        saved = torch.load(path, map_location="cpu", weights_only=True)
        found[name] = FeatureChannel(saved["features"], saved["targets"])
        if name not in computed:
            logger.info("channel %s: %d features from the cache (%s)", name, len(found[name]), path)
    return found
