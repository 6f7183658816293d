"""Channels as ImageFolder datasets: class order, labels, skipping unreadable files, loaders."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from torchvision.datasets.folder import find_classes

from image_classifier.images import check_pixels, open_image

logger = logging.getLogger(__name__)

TRAIN, VALID, TEST = "train", "valid", "test"
# SageMaker users name the validation channel either way.
CHANNEL_ALIASES = {VALID: ("valid", "validation")}


def _check_image(path: str) -> str | None:
    """Decode `path` cheaply (JPEG draft mode) to the end; None if fine, else why not."""
    try:
        if os.path.getsize(path) == 0:
            return "empty file"
        with Image.open(path) as img:
            check_pixels(img)  # the same limit open_image applies when the loader reads it
            img.draft("RGB", (64, 64))  # JPEG: decode at 1/8 scale, still reads every byte
            img.load()
        return None
    except Image.DecompressionBombError as exc:
        return f"too large ({exc})"
    except (OSError, SyntaxError, ValueError) as exc:  # UnidentifiedImageError is an OSError
        return f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class ScanResult:
    samples: list[tuple[str, int]]      # (path, class_id), sorted by path
    skipped: list[tuple[str, str]]      # (path, reason)


def list_files(root: Path, class_names: list[str]) -> list[tuple[str, int]]:
    """Every file under each class folder of `root`, as (path, class_id), in a fixed order."""
    paths: list[tuple[str, int]] = []
    for class_id, name in enumerate(class_names):
        for dirpath, _, files in sorted(os.walk(root / name, followlinks=True)):
            paths += [(os.path.join(dirpath, f), class_id) for f in sorted(files)]
    return paths


def scan_channel(root: Path, class_names: list[str], workers: int = 8) -> ScanResult:
    """List every file under each class folder and keep those that decode.

    Corrupt, truncated, empty and non-image files are skipped and returned with the reason;
    the caller logs them. Decoding runs on `workers` threads (Pillow releases the GIL).
    """
    paths = list_files(root, class_names)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        problems = list(pool.map(_check_image, [p for p, _ in paths]))
    samples = [s for s, why in zip(paths, problems) if why is None]
    skipped = [(p, why) for (p, _), why in zip(paths, problems) if why is not None]
    return ScanResult(samples, skipped)


class ImageFolderChannel(Dataset):
    """One channel: an ImageFolder tree (`<root>/<class folder>/<image>`) of verified images.

    Items are `(image, class_id)`: `image` is what `transform` makes of an RGB PIL image
    (a float32 tensor (3, H, W) with the project's transforms), `class_id` an int, the index
    of the class folder in sorted order (torchvision's ImageFolder convention).

    When indexed with `(epoch, index)` pairs (see `EpochSampler`), the random augmentation of
    an item depends only on (seed, epoch, index): results do not depend on the number of
    DataLoader workers, and a job resumed mid-way sees the same augmentations.
    """

    def __init__(self, root: Path, class_names: list[str], transform: Callable, seed: int = 0,
                 channel: str = ""):
        self.root = root
        self.classes = class_names
        self.transform = transform
        self.seed = seed
        scan = scan_channel(root, class_names)
        self.samples = scan.samples
        self.skipped = scan.skipped
        if self.skipped:
            logger.warning("channel %s: skipped %d unreadable file(s): %s", channel or root,
                           len(self.skipped),
                           "; ".join(f"{os.path.relpath(p, root)} ({why})" for p, why in self.skipped))
        logger.info("channel %s: %d images in %d classes", channel or root, len(self.samples),
                    len(class_names))

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        epoch, index = key if isinstance(key, tuple) else (None, key)
        path, class_id = self.samples[index]
        image = open_image(path)
        if epoch is None:
            return self.transform(image), class_id
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(hash((self.seed, epoch, index)) & 0x7FFF_FFFF_FFFF_FFFF)
            return self.transform(image), class_id

    @property
    def targets(self) -> list[int]:
        return [c for _, c in self.samples]


class EpochSampler(Sampler):
    """A seeded shuffle per epoch that yields `(epoch, index)` and can start part-way.

    The permutation of epoch `e` is `torch.randperm(n)` from a generator seeded with
    `seed + e`, so a resumed job replays the same order; `start` skips the first items.

    With `world_size` > 1 (data-parallel training, see `training.distributed`) each rank takes
    its shard of that permutation the way `torch.utils.data.DistributedSampler` does: the
    permutation is padded by repeating its head up to a multiple of `world_size` (`pad=True`,
    for training: every rank then runs the same number of steps), and rank `r` takes items
    `r, r + world_size, ...`. Without padding (`pad=False`, for evaluation) the shards are
    disjoint and cover the permutation exactly, their lengths differing by at most one.
    `start` then counts items of the rank's own shard.
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True, rank: int = 0, world_size: int = 1,
                 pad: bool = True):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.rank, self.world_size, self.pad = rank, world_size, pad
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _shard(self) -> list[int]:
        if self.shuffle:
            order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist()
        else:
            order = list(range(self.n))
        if self.world_size > 1 and self.pad and order:
            total = -(-self.n // self.world_size) * self.world_size
            order = (order * -(-total // self.n))[:total]  # DistributedSampler's padding
        return order[self.rank::self.world_size]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter([(self.epoch, i) for i in self._shard()[self.start:]])

    def __len__(self) -> int:
        if self.world_size > 1 and self.pad and self.n:
            shard = -(-self.n // self.world_size)
        else:
            shard = len(range(self.rank, self.n, self.world_size))
        return max(0, shard - self.start)


def resolve_channels(env_channel_dir: Callable[[str], Path]) -> dict[str, Path]:
    """Map `train`, `valid` and `test` to their folders; `validation` stands in for `valid`.

    Raises:
        FileNotFoundError: no train channel.
    """
    found = {}
    for name in (TRAIN, VALID, TEST):
        for alias in CHANNEL_ALIASES.get(name, (name,)):
            path = env_channel_dir(alias)
            if path.is_dir():
                found[name] = path
                break
    if TRAIN not in found:
        raise FileNotFoundError(
            f"no train channel at {env_channel_dir(TRAIN)}: this usually means the training job's "
            f"input channel was not named 'train' or its S3 prefix was empty")
    return found


def class_names_of(channels: dict[str, Path]) -> list[str]:
    """The sorted class folder names, identical in every channel.

    Raises:
        ValueError: a channel's class folders differ from train's (names the differences),
            or train has no class folders.
    """
    train_classes = _find_classes(channels[TRAIN])
    if not train_classes:
        raise ValueError(f"the train channel ({channels[TRAIN]}) has no class folders: expected "
                         f"<channel>/<class>/<image>, e.g. train/001.Affenpinscher/x.jpg")
    for name, path in channels.items():
        classes = _find_classes(path)
        if classes != train_classes:
            missing = sorted(set(train_classes) - set(classes))
            extra = sorted(set(classes) - set(train_classes))
            raise ValueError(
                f"the {name} channel's classes differ from train's: missing {missing[:10]}"
                f"{'...' if len(missing) > 10 else ''}, extra {extra[:10]}"
                f"{'...' if len(extra) > 10 else ''}; every channel needs the same class folders")
    return train_classes


def _find_classes(path: Path) -> list[str]:
    try:
        return find_classes(str(path))[0]
    except FileNotFoundError:
        return []


def make_loader(dataset: Dataset, batch_size: int, num_workers: int, train: bool, seed: int,
                pin_memory: bool, rank: int = 0, world_size: int = 1,
                collate_fn: Callable | None = None) -> DataLoader:
    """A DataLoader over `dataset` driven by an `EpochSampler` (shuffled for training).

    Training drops the last partial batch when there is more than one batch (BatchNorm
    cannot train on a batch of one). `rank`/`world_size`: this process's shard (padded for
    training, exact for evaluation; see `EpochSampler`); `batch_size` is then per process.
    Worker processes stay alive between epochs; batches go to pinned memory when
    `pin_memory` (a GPU job), so that copies to the GPU can overlap.
    """
    sampler = EpochSampler(len(dataset), seed, shuffle=train, rank=rank, world_size=world_size, pad=train)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      pin_memory=pin_memory, persistent_workers=num_workers > 0,
                      drop_last=train and len(sampler) > batch_size, collate_fn=collate_fn)
