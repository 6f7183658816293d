"""Tests for channels as datasets: labels, unreadable files, class order, sampling, deterministic augmentation."""

from __future__ import annotations

import io
import logging
import random
from pathlib import Path

import pytest
import sklearn
import torch
from PIL import Image

from image_classifier.artifacts import label_of
from image_classifier.training import data
from image_classifier.training.data import (
    EpochSampler,
    ImageFolderChannel,
    class_names_of,
    make_loader,
    resolve_channels,
    scan_channel,
)
from image_classifier.transforms import eval_transform, train_transform
from tests.conftest import write_digit_tree

CHINA_JPG = Path(sklearn.__file__).parent / "datasets" / "images" / "china.jpg"


@pytest.mark.parametrize("class_name, label", [
    ("001.Affenpinscher", "Affenpinscher"),
    ("133.Yorkshire_terrier", "Yorkshire_terrier"),
    ("010.nine", "nine"),
    ("1-cat", "cat"),
    ("2_dog", "dog"),
    ("001.002.twice", "002.twice"),
    ("Affenpinscher", "Affenpinscher"),
    ("German_shepherd_dog", "German_shepherd_dog"),
    ("abc.001", "abc.001"),
    ("001", "001"),
    ("001.", "001."),
])
def test_label_of(class_name, label):
    assert label_of(class_name) == label


# --- unreadable files -------------------------------------------------------------------------

def _digit_jpeg() -> bytes:
    """A real JPEG of a handwritten digit (scikit-learn's), 64 px."""
    from sklearn.datasets import load_digits

    pixels = (load_digits().images[0] * (255 / 16)).astype("uint8")
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").resize((64, 64)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _half(blob: bytes) -> bytes:
    return blob[:len(blob) // 2]


BAD_FILES = [
    pytest.param("corrupt.jpg", lambda: random.Random(0).randbytes(4096), "UnidentifiedImageError",
                 id="random bytes"),
    pytest.param("truncated.jpg", lambda: _half(_digit_jpeg()), "truncated", id="truncated jpeg"),
    pytest.param("china.jpg", lambda: _half(CHINA_JPG.read_bytes()), "truncated", id="truncated china.jpg"),
    pytest.param("empty.png", lambda: b"", "empty file", id="empty"),
    pytest.param("notes.txt", lambda: b"class notes: these are zeros\n", "UnidentifiedImageError",
                 id="text file"),
]


@pytest.fixture
def small_tree(tmp_path) -> Path:
    """2 classes, 5 train / 2 valid / 2 test digits each, 16 px."""
    return write_digit_tree(tmp_path / "tree", num_classes=2, per_split={"train": 5, "valid": 2, "test": 2},
                            size=16)


@pytest.mark.parametrize("file_name, content, reason", BAD_FILES)
def test_scan_channel_skips_and_reports_unreadable_files(small_tree, file_name, content, reason):
    bad = small_tree / "train" / "002.one" / file_name
    bad.write_bytes(content())
    scan = scan_channel(small_tree / "train", ["001.zero", "002.one"])
    assert len(scan.samples) == 10
    assert str(bad) not in {p for p, _ in scan.samples}
    assert len(scan.skipped) == 1
    path, why = scan.skipped[0]
    assert path == str(bad)
    assert reason in why


def test_channel_skips_every_bad_file_and_logs_them(small_tree, caplog):
    folder = small_tree / "train" / "001.zero"
    bad = {}
    for param in BAD_FILES:
        file_name, content, reason = param.values
        (folder / file_name).write_bytes(content())
        bad[str(folder / file_name)] = reason
    caplog.set_level(logging.INFO, logger=data.__name__)
    channel = ImageFolderChannel(small_tree / "train", ["001.zero", "002.one"], eval_transform(32),
                                 channel="train")
    assert len(channel) == 10
    assert dict(channel.skipped).keys() == bad.keys()
    for path, why in channel.skipped:
        assert bad[path] in why
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "train" in warnings[0] and "skipped 5" in warnings[0]
    for path in bad:  # each named (at least relative to the channel) with its reason
        assert f"{Path(path).parent.name}/{Path(path).name} (" in warnings[0]
    for reason in set(bad.values()):
        assert reason in warnings[0]
    for index in range(len(channel)):  # every kept sample loads
        image, class_id = channel[index]
        assert image.shape == (3, 32, 32) and class_id in (0, 1)


def test_clean_channel_logs_no_warning(small_tree, caplog):
    caplog.set_level(logging.INFO, logger=data.__name__)
    channel = ImageFolderChannel(small_tree / "valid", ["001.zero", "002.one"], eval_transform(32))
    assert channel.skipped == [] and len(channel) == 4
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# --- class order ------------------------------------------------------------------------------

def _touch_image(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8), 128).save(path)


def test_class_id_is_the_index_of_the_sorted_folder_name(tmp_path):
    names = ["b_cat", "010.ten", "C_upper", "002.two", "a_dog"]
    for name in names:
        for i in range(2):
            _touch_image(tmp_path / "train" / name / f"{i}.png")
    _touch_image(tmp_path / "train" / "a_dog" / "nested" / "deeper.png")  # sub-folders count too
    classes = class_names_of({"train": tmp_path / "train"})
    assert classes == sorted(names) == ["002.two", "010.ten", "C_upper", "a_dog", "b_cat"]
    channel = ImageFolderChannel(tmp_path / "train", classes, eval_transform(32))
    assert len(channel) == 11
    for path, class_id in channel.samples:
        folder = Path(path).relative_to(tmp_path / "train").parts[0]
        assert class_id == classes.index(folder)
    assert [p for p, _ in channel.samples] == sorted(p for p, _ in channel.samples)
    assert channel.targets == [c for _, c in channel.samples]


def test_class_names_of_identical_channels(digit_tree):
    channels = {split: digit_tree / split for split in ("train", "valid", "test")}
    assert class_names_of(channels) == ["001.zero", "002.one", "003.two"]


@pytest.mark.parametrize("split, change, words", [
    ("valid", "remove", ["valid", "missing", "002.one"]),
    ("test", "add", ["test", "extra", "004.three"]),
])
def test_class_names_of_rejects_channels_with_other_classes(tmp_path, split, change, words):
    for s in ("train", "valid", "test"):
        for name in ("001.zero", "002.one"):
            _touch_image(tmp_path / s / name / "x.png")
    if change == "remove":
        (tmp_path / split / "002.one" / "x.png").unlink()
        (tmp_path / split / "002.one").rmdir()
    else:
        _touch_image(tmp_path / split / "004.three" / "x.png")
    channels = {s: tmp_path / s for s in ("train", "valid", "test")}
    with pytest.raises(ValueError) as info:
        class_names_of(channels)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("content", ["nothing", "files only"])
def test_class_names_of_train_without_class_folders(tmp_path, content):
    train = tmp_path / "train"
    train.mkdir()
    if content == "files only":
        _touch_image(train / "loose.png")
    with pytest.raises(ValueError, match="no class folders"):
        class_names_of({"train": train})


# --- channel resolution -----------------------------------------------------------------------

@pytest.mark.parametrize("folders, expected", [
    (["train"], {"train": "train"}),
    (["train", "valid", "test"], {"train": "train", "valid": "valid", "test": "test"}),
    (["train", "validation"], {"train": "train", "valid": "validation"}),
    (["train", "valid", "validation"], {"train": "train", "valid": "valid"}),
    (["train", "test", "pretrained", "extra"], {"train": "train", "test": "test"}),
])
def test_resolve_channels(tmp_path, folders, expected):
    for name in folders:
        (tmp_path / name).mkdir()
    found = resolve_channels(lambda name: tmp_path / name)
    assert found == {k: tmp_path / v for k, v in expected.items()}


@pytest.mark.parametrize("folders, train_file", [([], False), (["valid", "test"], False),
                                                 (["training", "validation"], False), ([], True)])
def test_resolve_channels_without_train(tmp_path, folders, train_file):
    for name in folders:
        (tmp_path / name).mkdir()
    if train_file:
        (tmp_path / "train").touch()  # a file named train is no channel
    with pytest.raises(FileNotFoundError, match="train"):
        resolve_channels(lambda name: tmp_path / name)


# --- sampling ---------------------------------------------------------------------------------

def _order(sampler: EpochSampler, epoch: int, start: int = 0) -> list[tuple[int, int]]:
    sampler.set_epoch(epoch, start)
    return list(sampler)


def test_epoch_sampler_is_a_seeded_permutation_per_epoch():
    torch.manual_seed(0)
    first = _order(EpochSampler(50, seed=7), 3)
    torch.manual_seed(1)
    torch.rand(5)
    again = _order(EpochSampler(50, seed=7), 3)
    assert first == again
    assert {e for e, _ in first} == {3}
    assert sorted(i for _, i in first) == list(range(50))
    assert [i for _, i in first] != list(range(50))
    assert [i for _, i in _order(EpochSampler(50, seed=7), 4)] != [i for _, i in first]
    assert [i for _, i in _order(EpochSampler(50, seed=8), 3)] != [i for _, i in first]


@pytest.mark.parametrize("start", [0, 1, 17, 49, 50])
@pytest.mark.parametrize("shuffle", [True, False])
def test_set_epoch_with_start_yields_the_tail(start, shuffle):
    sampler = EpochSampler(50, seed=11, shuffle=shuffle)
    full = _order(sampler, 2)
    tail = _order(sampler, 2, start)
    assert tail == full[start:]
    assert len(sampler) == 50 - start
    if not shuffle:
        assert full == [(2, i) for i in range(50)]


# --- deterministic augmentation ---------------------------------------------------------------

@pytest.fixture
def augmented(tmp_path) -> ImageFolderChannel:
    root = write_digit_tree(tmp_path / "aug", num_classes=2, per_split={"train": 2}, size=32)
    return ImageFolderChannel(root / "train", ["001.zero", "002.one"],
                              train_transform(24, crop_scale_min=0.3, hflip_prob=0.5), seed=5)


def test_augmentation_depends_only_on_seed_epoch_and_index(augmented):
    torch.manual_seed(0)
    first = [augmented[(1, i)][0] for i in range(len(augmented))]
    torch.manual_seed(12345)
    torch.rand(17)
    state = torch.get_rng_state()
    again = [augmented[(1, i)][0] for i in range(len(augmented))]
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is left as it was
    for a, b in zip(first, again):
        assert a.shape == (3, 24, 24) and a.dtype == torch.float32
        assert torch.equal(a, b)
    next_epoch = [augmented[(2, i)][0] for i in range(len(augmented))]
    for a, b in zip(first, next_epoch):
        assert not torch.equal(a, b)


def test_augmentation_depends_on_channel_seed(augmented):
    other = ImageFolderChannel(augmented.root, augmented.classes, augmented.transform, seed=6)
    assert not torch.equal(augmented[(1, 0)][0], other[(1, 0)][0])


def test_plain_index_gives_image_and_class(augmented):
    image, class_id = augmented[3]
    assert image.shape == (3, 24, 24)
    assert class_id == 1


# --- loaders ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fourteen(tmp_path_factory) -> ImageFolderChannel:
    root = write_digit_tree(tmp_path_factory.mktemp("loader"), num_classes=2, per_split={"train": 7}, size=8)
    return ImageFolderChannel(root / "train", ["001.zero", "002.one"], eval_transform(16))


@pytest.mark.parametrize("train, batch_size, sizes", [
    (True, 4, [4, 4, 4]),        # the partial batch of 2 is dropped
    (False, 4, [4, 4, 4, 2]),    # evaluation sees every image
    (True, 7, [7, 7]),
    (False, 5, [5, 5, 4]),
    (True, 20, [14]),            # a single batch is kept (nothing else to train on)
])
def test_make_loader_drops_the_last_partial_batch_for_training_only(fourteen, train, batch_size, sizes):
    loader = make_loader(fourteen, batch_size, num_workers=0, train=train, seed=1, pin_memory=False)
    batches = list(loader)
    assert [len(labels) for _, labels in batches] == sizes
    assert len(loader) == len(sizes)
    assert batches[0][0].shape[1:] == (3, 16, 16)
    labels = torch.cat([labels for _, labels in batches]).tolist()
    if not train:
        assert labels == fourteen.targets  # in order, unshuffled
    again = torch.cat([labels for _, labels in loader]).tolist()
    assert again == labels


def test_loader_batches_do_not_depend_on_the_number_of_workers(augmented):
    def batches(num_workers: int) -> list[torch.Tensor]:
        loader = make_loader(augmented, 2, num_workers=num_workers, train=True, seed=4, pin_memory=False)
        loader.sampler.set_epoch(3)
        return [images for images, _ in loader]

    torch.manual_seed(0)
    in_process = batches(0)
    torch.manual_seed(1)
    with_workers = batches(2)
    assert len(in_process) == len(with_workers) == 2
    for a, b in zip(in_process, with_workers):
        assert torch.equal(a, b)
