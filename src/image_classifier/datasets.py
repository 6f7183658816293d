"""Prepare ImageFolder datasets shaped like the dog-breed set: `<root>/{train,valid,test}/NNN.<label>/*`."""

from __future__ import annotations

import hashlib
import logging
import shutil
import zipfile
import zlib
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
        n_train = int(round(len(indices) * fractions[0]))
        n_valid = int(round(len(indices) * fractions[1]))
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
