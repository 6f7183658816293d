"""Prepare ImageFolder datasets shaped like the dog-breed set: `<root>/{train,valid,test}/NNN.<label>/*`.

Sources: scikit-learn's digits sample, the Udacity dog-breed zip and Fashion-MNIST (Debian's
`dataset-fashion-mnist` package or the official download).
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import shutil
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import requests
from PIL import Image
from tqdm import tqdm

logger = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")
DOGIMAGES_URL = "https://s3-us-west-1.amazonaws.com/udacity-aind/dog-project/dogImages.zip"
DOGIMAGES_CLASSES = 133  # breeds in every split of the Udacity set (6,680 / 835 / 836 images)
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_CHUNK = 1 << 20  # bytes per read while downloading

FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"  # torchvision's mirror
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist package
FASHION_MNIST_CLASSES = ("T-shirt_top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot")  # labels 0..9
FASHION_MNIST_TRAIN = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")
FASHION_MNIST_TEST = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
# Size in bytes and SHA-256 of each DECOMPRESSED IDX file: the same for Debian's package and the
# official download (Debian recompressed the .gz files, so the digests of the .gz files differ).
FASHION_MNIST_FILES: dict[str, tuple[int, str]] = {
    "train-images-idx3-ubyte.gz": (47_040_016, "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
    "train-labels-idx1-ubyte.gz": (60_008, "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
    "t10k-images-idx3-ubyte.gz": (7_840_016, "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
    "t10k-labels-idx1-ubyte.gz": (10_008, "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
}
# MD5 of the official .gz files (torchvision's FashionMNIST.resources); only logged, as Debian's differ.
FASHION_MNIST_GZ_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
_IDX_IMAGES, _IDX_LABELS = 2051, 2049  # IDX magic numbers: uint8 3-d array, uint8 1-d array
_SIDE = 28  # Fashion-MNIST images are 28x28 pixels


def write_sample(output: Path, seed: int = 0, fractions: tuple[float, float] = (0.7, 0.15)) -> dict[str, int]:
    """Write scikit-learn's bundled handwritten digits (1,797 real 8x8 scans) as an image tree.

    Each digit becomes an 8x8 8-bit grayscale PNG (the 0–16 ink levels scaled to 0–255) in
    `<output>/<split>/<NNN>.<name>/`, e.g. `train/001.zero/0007.png`; the split is stratified
    by class: `fractions` of each class go to train and valid, the rest to test.

    Returns:
        images written per split.
    """
    from sklearn.datasets import load_digits  # the train extra; not needed to serve

    digits = load_digits()
    rng = np.random.default_rng(seed)
    counts = dict.fromkeys(SPLITS, 0)
    for digit, name in enumerate(DIGIT_NAMES):
        indices = rng.permutation(np.flatnonzero(digits.target == digit))
        n_train = round(len(indices) * fractions[0])
        n_valid = round(len(indices) * fractions[1])
        parts = dict(zip(SPLITS, np.split(indices, [n_train, n_train + n_valid])))
        for split, part in parts.items():
            folder = output / split / f"{digit + 1:03d}.{name}"
            folder.mkdir(parents=True, exist_ok=True)
            for index in part:
                pixels = (digits.images[index] * (255 / 16)).round().astype(np.uint8)
                Image.fromarray(pixels, mode="L").save(folder / f"{index:04d}.png")
            counts[split] += len(part)
    return counts


def has_dataset(root: Path) -> bool:
    """True when `root/train` holds at least one class folder."""
    train = root / "train"
    return train.is_dir() and any(p.is_dir() for p in train.iterdir())


def download(url: str, destination: Path, sha256: str | None = None, timeout: float = 60.0) -> Path:
    """Download `url` to `destination` with a progress bar, resuming a partial `.part` file.

    A partial download is continued with an HTTP Range request; a server that ignores Range
    (200 instead of 206) restarts it. When `sha256` is given, the file must match it.

    Raises:
        requests.HTTPError: the server answered with an error status.
        ValueError: the size or SHA-256 of the download is not the expected one (the partial
            file is deleted so the next try starts clean).
    """
    partial = destination.with_name(destination.name + ".part")
    destination.parent.mkdir(parents=True, exist_ok=True)
    done = partial.stat().st_size if partial.exists() else 0
    headers = {"Range": f"bytes={done}-"} if done else {}
    with requests.get(url, stream=True, headers=headers, timeout=timeout) as response:
        if response.status_code == 416:  # asked past the end: the part file is already whole
            response.close()
        else:
            response.raise_for_status()
            if response.status_code != 206:
                done = 0
            length = response.headers.get("Content-Length")
            total = done + int(length) if length else None
            with open(partial, "ab" if done else "wb") as f, tqdm(
                    total=total, initial=done, unit="B", unit_scale=True, desc=destination.name) as bar:
                for chunk in response.iter_content(_CHUNK):
                    f.write(chunk)
                    bar.update(len(chunk))
            if total is not None and partial.stat().st_size != total:
                raise ValueError(f"download of {url} stopped at {partial.stat().st_size} of {total} bytes; "
                                 f"run again to resume")
    digest = _sha256(partial)
    if sha256 and digest != sha256.lower():
        partial.unlink()
        raise ValueError(f"SHA-256 of {url} is {digest}, expected {sha256}: the file was deleted")
    logger.info("downloaded %s (sha256 %s)", destination, digest)
    partial.replace(destination)
    return destination


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def extract_dogimages(archive: Path, output: Path) -> None:
    """Unpack `dogImages/{train,valid,test}` from the zip into `output/{train,valid,test}`.

    Raises:
        zipfile.BadZipFile: the archive is corrupt (a member's CRC does not match).
        ValueError: a member would land outside `output`, or a split is missing.
    """
    staging = output / ".extracting"
    shutil.rmtree(staging, ignore_errors=True)
    with zipfile.ZipFile(archive) as zf:
        try:
            bad = zf.testzip()
        except (zlib.error, EOFError) as exc:  # a damaged deflate stream fails before the CRC check
            raise zipfile.BadZipFile(f"{archive} is corrupt ({exc}): delete it and download again") from exc
        if bad is not None:
            raise zipfile.BadZipFile(f"{archive} is corrupt at {bad}: delete it and download again")
        for member in zf.namelist():
            target = (staging / member).resolve()
            if not target.is_relative_to(staging.resolve()):
                raise ValueError(f"{archive} holds a path outside the folder: {member}")
        zf.extractall(staging)
    root = next((p.parent for p in staging.rglob("train") if p.is_dir() and (p.parent / "valid").is_dir()), None)
    if root is None:
        raise ValueError(f"{archive} has no folder holding train/ and valid/")
    for split in SPLITS:
        source = root / split
        if not source.is_dir():
            raise ValueError(f"{archive} has no {split}/ folder")
        classes = [p for p in source.iterdir() if p.is_dir()]
        if len(classes) != DOGIMAGES_CLASSES:
            logger.warning("%s/%s has %d classes, the dog-breed set has %d", archive.name, split,
                           len(classes), DOGIMAGES_CLASSES)
        shutil.rmtree(output / split, ignore_errors=True)
        source.rename(output / split)
    shutil.rmtree(staging)


def prepare_dogimages(output: Path, url: str = DOGIMAGES_URL, sha256: str | None = None,
                      keep_archive: bool = False) -> None:
    """Download (resumable) and unpack the Udacity dog-breed set into `output`."""
    archive = download(url, output / "dogImages.zip", sha256)
    extract_dogimages(archive, output)
    if not keep_archive:
        archive.unlink()


def read_idx(path: Path, size: int, sha256: str, fix: str = "replace the file") -> np.ndarray:
    """Decompress one gzipped Fashion-MNIST IDX file and check it before use.

    The checks run in order: the decompressed size, its SHA-256, then the IDX header (magic
    number 2051 and 28x28 for images, 2049 for labels, and a count that fills the file).

    Args:
        path: a `*-images-idx3-ubyte.gz` or `*-labels-idx1-ubyte.gz` file; which of the two
            it is goes by the name.
        size: expected size of the decompressed content, in bytes.
        sha256: expected SHA-256 (hex) of the decompressed content.
        fix: what to do about a mismatch, ending each error message.

    Returns:
        images as uint8 (N, 28, 28), gray levels 0–255 with 0 the background; or labels as
        uint8 (N,).

    Raises:
        ValueError: the file is not gzip, or its decompressed size, SHA-256 or header is not
            the expected one.
    """
    try:
        data = gzip.decompress(path.read_bytes())
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        raise ValueError(f"{path} is not a whole gzip file ({exc}): {fix}") from exc
    if len(data) != size:
        raise ValueError(f"{path} decompresses to {len(data):,} bytes, expected {size:,}: {fix}")
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256.lower():
        raise ValueError(f"SHA-256 of {path} decompressed is {digest}, expected {sha256}: {fix}")
    images = "-images-" in path.name
    magic, shape = (_IDX_IMAGES, [_SIDE, _SIDE]) if images else (_IDX_LABELS, [])
    header = 8 + 4 * len(shape)  # magic, count, then one int32 per dimension
    fields = np.frombuffer(data[:min(header, len(data) // 4 * 4)], ">i4").tolist()
    count = fields[1] if len(fields) > 1 else -1
    if (fields[:1] + fields[2:] != [magic, *shape]
            or count < 0 or len(data) != header + count * _SIDE ** (2 if images else 0)):
        raise ValueError(f"{path} has the IDX header {fields} and {len(data) - header:,} bytes after it, expected "
                         f"[{magic}, N{f', {_SIDE}, {_SIDE}' if images else ''}] followed by N "
                         f"{f'{_SIDE}x{_SIDE} images' if images else 'labels'}: {fix}")
    return np.frombuffer(data, np.uint8, offset=header).reshape(count, *shape)


def load_fashion_mnist(source_dir: Path, downloads: Path, url: str = FASHION_MNIST_URL,
                       expected: Mapping[str, tuple[int, str]] = FASHION_MNIST_FILES,
                       ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read Fashion-MNIST's four IDX files, downloading those `source_dir` lacks, each checked.

    Each file is taken from `source_dir`, else from `downloads` (a download kept by an earlier
    run), else downloaded (resumable) from `url` into `downloads`; then checked by `read_idx`.
    A file in `downloads` that fails the check is deleted, so the next run fetches it again.

    Args:
        source_dir: folder holding the `.gz` files, e.g. Debian's `FASHION_MNIST_DIR`.
        downloads: folder for downloaded `.gz` files.
        url: base URL the file names are appended to.
        expected: file name -> (decompressed size in bytes, SHA-256 of the decompressed content).

    Returns:
        "train" and "test" -> (images uint8 (N, 28, 28), labels uint8 (N,)).

    Raises:
        ValueError: a file fails its checks, images and labels differ in count, or a label
            is not 0..9.
        requests.HTTPError: a download was answered with an error status.
    """
    arrays = {}
    for name in (*FASHION_MNIST_TRAIN, *FASHION_MNIST_TEST):
        path = source_dir / name
        if path.is_file():
            fix = (f"replace it with the official file (reinstall the dataset-fashion-mnist package if it is "
                   f"Debian's), or remove it from {source_dir} so that it is downloaded")
        else:
            path = downloads / name
            if not path.is_file():
                logger.info("%s is not in %s: downloading it from %s", name, source_dir, url)
                download(f"{url.rstrip('/')}/{name}", path)
                _log_gz_md5(path)
            fix = "the file was deleted: run again to download it again"
        size, sha256 = expected[name]
        try:
            arrays[name] = read_idx(path, size, sha256, fix)
        except ValueError:
            if path.parent == downloads:
                path.unlink()
            raise
        logger.info("%s verified (%d items, sha256 %s of the decompressed content)", path, len(arrays[name]), sha256)
    splits = {}
    for split, (images, labels) in (("train", FASHION_MNIST_TRAIN), ("test", FASHION_MNIST_TEST)):
        splits[split] = arrays[images], arrays[labels]
        if len(arrays[images]) != len(arrays[labels]):
            raise ValueError(f"{images} holds {len(arrays[images])} images but {labels} "
                             f"{len(arrays[labels])} labels: use files of the same release")
        if len(arrays[labels]) and arrays[labels].max() >= len(FASHION_MNIST_CLASSES):
            raise ValueError(f"{labels} holds label {arrays[labels].max()}, expected 0..9: it is not Fashion-MNIST")
    return splits


def _log_gz_md5(path: Path) -> None:
    digest = hashlib.md5(path.read_bytes(), usedforsecurity=False).hexdigest()
    known = FASHION_MNIST_GZ_MD5.get(path.name)
    if digest == known:
        logger.info("%s has torchvision's MD5 %s", path, digest)
    else:
        logger.info("%s has MD5 %s, not torchvision's %s (recompressed?): its content is checked next",
                    path, digest, known)


def check_per_class(per_class: int | None, valid_per_class: int, test_per_class: int | None,
                    train_available: int = 6000, test_available: int = 1000) -> None:
    """Refuse split sizes Fashion-MNIST cannot give.

    Args:
        per_class: train images per class; None: all left after valid.
        valid_per_class: valid images per class, taken from the training images too.
        test_per_class: test images per class; None: all.
        train_available: training images of the smallest class (6,000 in Fashion-MNIST).
        test_available: test images of the smallest class (1,000 in Fashion-MNIST).

    Raises:
        ValueError: a value is below 1, train + valid need more than `train_available`
            images per class, or test more than `test_available`.
    """
    for name, value in (("per_class", per_class), ("valid_per_class", valid_per_class),
                        ("test_per_class", test_per_class)):
        if value is not None and value < 1:
            raise ValueError(f"{name} is {value}: give 1 or more images per class")
    if per_class is None and valid_per_class >= train_available:
        raise ValueError(f"valid_per_class is {valid_per_class}, but the training set has {train_available} images "
                         f"per class: leave some for train, ask for fewer")
    if per_class is not None and per_class + valid_per_class > train_available:
        raise ValueError(f"per_class + valid_per_class is {per_class + valid_per_class} images per class, but the "
                         f"training set has {train_available}: ask for fewer (per_class None takes all valid leaves)")
    if test_per_class is not None and test_per_class > test_available:
        raise ValueError(f"test_per_class is {test_per_class}, but the test set has {test_available} "
                         f"images per class: ask for fewer, or None for all")


def split_fashion_mnist(train_labels: np.ndarray, test_labels: np.ndarray, per_class: int | None = None,
                        valid_per_class: int = 100, test_per_class: int | None = None,
                        seed: int = 0) -> dict[str, np.ndarray]:
    """Choose the indices of each split, stratified by class, with a seeded permutation.

    train and valid are disjoint and both come from the training images: per class, the first
    `valid_per_class` of a permutation go to valid and the next `per_class` (None: the rest)
    to train. test takes `test_per_class` (None: all) of each class of the test images.

    Args:
        train_labels: uint8 (N,) labels 0..9 of the training images.
        test_labels: uint8 (M,) labels 0..9 of the test images.

    Returns:
        split -> ascending int indices into the training (train, valid) or test (test) images.

    Raises:
        ValueError: see `check_per_class`; the smallest class sets what is available.
    """
    classes = range(len(FASHION_MNIST_CLASSES))
    check_per_class(per_class, valid_per_class, test_per_class,
                    min(int(np.sum(train_labels == c)) for c in classes),
                    min(int(np.sum(test_labels == c)) for c in classes))
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {split: [] for split in SPLITS}
    for c in classes:
        indices = rng.permutation(np.flatnonzero(train_labels == c))
        parts["valid"].append(indices[:valid_per_class])
        parts["train"].append(indices[valid_per_class:None if per_class is None else valid_per_class + per_class])
        parts["test"].append(rng.permutation(np.flatnonzero(test_labels == c))[:test_per_class])
    return {split: np.sort(np.concatenate(chosen)) for split, chosen in parts.items()}


def _write_pngs(folder: Path, images: np.ndarray, labels: np.ndarray, indices: np.ndarray) -> None:
    """Write images[indices] as 28x28 RGB PNGs to `folder/<NNN>.<class>/<index:05d>.png`."""
    classes = [folder / f"{c + 1:03d}.{name}" for c, name in enumerate(FASHION_MNIST_CLASSES)]
    for class_folder in classes:
        class_folder.mkdir(parents=True)
    rgb = np.empty((_SIDE, _SIDE, 3), np.uint8)
    for index in indices.tolist():
        rgb[...] = images[index][:, :, None]  # the gray level in all three channels
        Image.fromarray(rgb).save(classes[labels[index]] / f"{index:05d}.png", compress_level=1)


def prepare_fashion_mnist(output: Path, source_dir: Path = FASHION_MNIST_DIR, per_class: int | None = None,
                          valid_per_class: int = 100, test_per_class: int | None = None, seed: int = 0,
                          url: str = FASHION_MNIST_URL, expected: Mapping[str, tuple[int, str]] = FASHION_MNIST_FILES,
                          keep_downloads: bool = False) -> dict[str, int]:
    """Write Fashion-MNIST (Zalando's 28x28 article photos, 10 classes) as an ImageFolder tree.

    Each image becomes a 28x28 RGB PNG (the gray level in all three channels) at
    `<output>/<split>/<NNN>.<class>/<index>.png`, e.g. `test/010.Ankle_boot/00000.png`, where
    index (5 digits) is the image's position in its IDX file. train and valid are disjoint,
    stratified draws from the 60,000 training images (see `split_fashion_mnist`); test comes
    from the 10,000 test images. The files come from `source_dir`, else are downloaded into
    `<output>/.downloads/` (deleted after success unless `keep_downloads`); see
    `load_fashion_mnist`. The splits are written under `<output>/.writing/` and renamed into
    place at the end, replacing existing split folders, train last: a run that stops part-way
    leaves no `train/` that looks complete.

    Args:
        per_class: train images per class; None: all the training images valid leaves (5,900
            with the default valid).
        valid_per_class: valid images per class.
        test_per_class: test images per class; None: all (1,000, the full 10,000-image set).
        seed: seed of the permutation choosing the images of each split.
        expected: file name -> (decompressed size in bytes, SHA-256 of the decompressed content).

    Returns:
        images written per split.

    Raises:
        ValueError: a split size is impossible (checked before anything is read), or a file
            fails its checks (nothing is written).
        requests.HTTPError: a download was answered with an error status.
    """
    check_per_class(per_class, valid_per_class, test_per_class)
    downloads = output / ".downloads"
    data = load_fashion_mnist(source_dir, downloads, url, expected)
    parts = split_fashion_mnist(data["train"][1], data["test"][1], per_class, valid_per_class, test_per_class, seed)
    staging = output / ".writing"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        for split in SPLITS:
            logger.info("writing %d %s images", len(parts[split]), split)
            _write_pngs(staging / split, *data["test" if split == "test" else "train"], parts[split])
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(output / "train", ignore_errors=True)  # first: an old train/ beside new splits would look whole
    for split in ("valid", "test", "train"):
        shutil.rmtree(output / split, ignore_errors=True)
        (staging / split).rename(output / split)
    staging.rmdir()
    if not keep_downloads:
        shutil.rmtree(downloads, ignore_errors=True)
    return {split: len(parts[split]) for split in SPLITS}
