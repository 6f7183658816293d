"""Fashion-MNIST as an ImageFolder tree: fake IDX files, checks before use, loopback downloads, the CLI."""

from __future__ import annotations

import gzip
import hashlib
import http.server
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from image_classifier import cli, datasets
from image_classifier.artifacts import label_of
from image_classifier.datasets import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DIR,
    FASHION_MNIST_FILES,
    SPLITS,
    has_dataset,
    prepare_fashion_mnist,
    read_idx,
)
from tests.local_http import serving

FOLDERS = [f"{c + 1:03d}.{name}" for c, name in enumerate(FASHION_MNIST_CLASSES)]
TRAIN_IMAGES, TRAIN_LABELS = datasets.FASHION_MNIST_TRAIN
TEST_IMAGES, TEST_LABELS = datasets.FASHION_MNIST_TEST
NAMES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)
TRAIN_PER_CLASS, TEST_PER_CLASS = 3, 2  # of the fake files


# --- fake IDX files ---------------------------------------------------------------------------

def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """The IDX encoding of a uint8 array: big-endian int32 magic, then one int32 per dimension."""
    magic = magic if magic is not None else (2051 if array.ndim == 3 else 2049)
    return struct.pack(f">{1 + array.ndim}i", magic, *array.shape) + array.astype(np.uint8).tobytes()


def fake_arrays() -> dict[str, np.ndarray]:
    """Labels in a shuffled order; each image a distinct ramp, so a PNG can be traced to its index."""
    rng = np.random.default_rng(42)
    train_labels = rng.permutation(np.repeat(np.arange(10), TRAIN_PER_CLASS)).astype(np.uint8)
    test_labels = rng.permutation(np.repeat(np.arange(10), TEST_PER_CLASS)).astype(np.uint8)
    ramp = np.arange(28 * 28).reshape(28, 28)
    train_images = np.stack([(ramp + 7 * i) % 256 for i in range(len(train_labels))]).astype(np.uint8)
    test_images = np.stack([(ramp * 3 + 11 * i + 1) % 256 for i in range(len(test_labels))]).astype(np.uint8)
    return {TRAIN_IMAGES: train_images, TRAIN_LABELS: train_labels, TEST_IMAGES: test_images, TEST_LABELS: test_labels}


ARRAYS = fake_arrays()
RAW = {name: idx_bytes(array) for name, array in ARRAYS.items()}
EXPECTED = {name: (len(raw), hashlib.sha256(raw).hexdigest()) for name, raw in RAW.items()}


def write_fake(folder: Path, raw: dict[str, bytes] = RAW) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in raw.items():
        (folder / name).write_bytes(gzip.compress(data))
    return folder


@pytest.fixture(scope="module")
def fake_dir(tmp_path_factory) -> Path:
    return write_fake(tmp_path_factory.mktemp("fake-fashion-mnist"))


def pngs(root: Path) -> dict[str, list[tuple[str, int]]]:
    """split -> sorted (class folder, IDX index) of every file."""
    return {split: sorted((p.parent.name, int(p.stem)) for p in (root / split).glob("*/*"))
            for split in SPLITS}


def prepare(output: Path, source: Path, **kwargs) -> dict[str, int]:
    return prepare_fashion_mnist(output, source_dir=source, expected=EXPECTED, **kwargs)


# --- the tree written -------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, per_class", [
    ({"valid_per_class": 1}, {"train": 2, "valid": 1, "test": 2}),
    ({"per_class": 1, "valid_per_class": 1}, {"train": 1, "valid": 1, "test": 2}),
    ({"per_class": 1, "valid_per_class": 2, "test_per_class": 1}, {"train": 1, "valid": 2, "test": 1}),
    ({"per_class": 2, "valid_per_class": 1, "test_per_class": 2}, {"train": 2, "valid": 1, "test": 2}),
])
def test_counts_per_split_and_class(fake_dir, tmp_path, kwargs, per_class):
    counts = prepare(tmp_path, fake_dir, **kwargs)
    assert counts == {split: 10 * n for split, n in per_class.items()}
    for split in SPLITS:
        folders = sorted(p.name for p in (tmp_path / split).iterdir())
        assert folders == FOLDERS
        for folder in folders:
            assert len(list((tmp_path / split / folder).glob("*.png"))) == per_class[split]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test", "train", "valid"]  # no staging, no downloads
    assert has_dataset(tmp_path)


def test_train_and_valid_are_disjoint_and_test_is_the_test_file(fake_dir, tmp_path):
    prepare(tmp_path, fake_dir, valid_per_class=1)
    chosen = pngs(tmp_path)
    train = {index for _, index in chosen["train"]}
    valid = {index for _, index in chosen["valid"]}
    assert not train & valid
    assert train | valid == set(range(10 * TRAIN_PER_CLASS))  # per_class None: every training image used
    assert {index for _, index in chosen["test"]} == set(range(10 * TEST_PER_CLASS))


def test_a_seed_fixes_the_split(fake_dir, tmp_path):
    kwargs = {"per_class": 1, "valid_per_class": 1, "test_per_class": 1}
    prepare(tmp_path / "a", fake_dir, seed=0, **kwargs)
    prepare(tmp_path / "b", fake_dir, seed=0, **kwargs)
    prepare(tmp_path / "c", fake_dir, seed=1, **kwargs)
    assert pngs(tmp_path / "a") == pngs(tmp_path / "b")
    assert pngs(tmp_path / "a") != pngs(tmp_path / "c")


def test_images_are_rgb_copies_of_the_idx_pixels_in_their_class_folder(fake_dir, tmp_path):
    prepare(tmp_path, fake_dir, valid_per_class=1)
    files = sorted(tmp_path.glob("*/*/*.png"))
    assert len(files) == 10 * (TRAIN_PER_CLASS + TEST_PER_CLASS)
    for path in files:
        images, labels = ((ARRAYS[TEST_IMAGES], ARRAYS[TEST_LABELS]) if path.parts[-3] == "test"
                          else (ARRAYS[TRAIN_IMAGES], ARRAYS[TRAIN_LABELS]))
        assert re.fullmatch(r"\d{5}\.png", path.name)
        index = int(path.stem)
        assert path.parent.name == FOLDERS[labels[index]]
        assert label_of(path.parent.name) == FASHION_MNIST_CLASSES[labels[index]]
        with Image.open(path) as image:
            assert image.mode == "RGB" and image.size == (28, 28)
            pixels = np.asarray(image)
        assert np.array_equal(pixels, np.repeat(images[index][:, :, None], 3, axis=2))


@pytest.mark.parametrize("index, folder", [(0, "001.T-shirt_top"), (5, "006.Sandal"), (9, "010.Ankle_boot")])
def test_label_order_names_the_folders(tmp_path, index, folder):
    labels = np.repeat(np.arange(10, dtype=np.uint8), 2)
    images = np.zeros((20, 28, 28), np.uint8)
    raw = {TRAIN_IMAGES: idx_bytes(images), TRAIN_LABELS: idx_bytes(labels),
           TEST_IMAGES: idx_bytes(images), TEST_LABELS: idx_bytes(labels)}
    expected = {name: (len(data), hashlib.sha256(data).hexdigest()) for name, data in raw.items()}
    prepare_fashion_mnist(tmp_path / "out", write_fake(tmp_path / "src", raw), valid_per_class=1, expected=expected)
    assert sorted(p.name for p in (tmp_path / "out" / "test" / folder).iterdir()) == \
        [f"{2 * index:05d}.png", f"{2 * index + 1:05d}.png"]


def test_existing_splits_are_replaced(fake_dir, tmp_path):
    for split in SPLITS:
        (tmp_path / split / "999.stale").mkdir(parents=True)
        (tmp_path / split / "999.stale" / "old.png").write_bytes(b"old")
    prepare(tmp_path, fake_dir, valid_per_class=1)
    for split in SPLITS:
        assert sorted(p.name for p in (tmp_path / split).iterdir()) == FOLDERS


def test_a_failure_while_writing_leaves_the_old_dataset(fake_dir, tmp_path, monkeypatch):
    write = datasets._write_pngs

    def write_then_fail(folder, *args):
        write(folder, *args)
        if folder.name == "test":  # the last split: train and valid are written by now
            raise OSError("disk full")

    prepare(tmp_path, fake_dir, valid_per_class=1, seed=1)
    before = pngs(tmp_path)
    monkeypatch.setattr(datasets, "_write_pngs", write_then_fail)
    with pytest.raises(OSError, match="disk full"):
        prepare(tmp_path, fake_dir, valid_per_class=1, seed=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test", "train", "valid"]  # staging removed
    assert pngs(tmp_path) == before


# --- checks before use ------------------------------------------------------------------------

def _bad_magic(name: str) -> dict[str, bytes]:
    return {**RAW, name: idx_bytes(ARRAYS[name], magic=2050)}


def _bad_shape() -> dict[str, bytes]:  # 28x28 images declared as 14x56: same bytes, wrong header
    array = ARRAYS[TRAIN_IMAGES]
    return {**RAW, TRAIN_IMAGES: struct.pack(">4i", 2051, len(array), 14, 56) + array.tobytes()}


def _bad_count() -> dict[str, bytes]:  # the header claims one label more than the file holds
    array = ARRAYS[TEST_LABELS]
    return {**RAW, TEST_LABELS: struct.pack(">2i", 2049, len(array) + 1) + array.tobytes()}


@pytest.mark.parametrize("raw, expected, file, message", [
    pytest.param(RAW, {**EXPECTED, TRAIN_LABELS: (EXPECTED[TRAIN_LABELS][0] + 1, EXPECTED[TRAIN_LABELS][1])},
                 TRAIN_LABELS, "decompresses to", id="size"),
    pytest.param(RAW, {**EXPECTED, TEST_IMAGES: (EXPECTED[TEST_IMAGES][0], "0" * 64)},
                 TEST_IMAGES, "SHA-256", id="sha256"),
    pytest.param(_bad_magic(TRAIN_IMAGES), None, TRAIN_IMAGES, "IDX header", id="images magic"),
    pytest.param(_bad_magic(TEST_LABELS), None, TEST_LABELS, "IDX header", id="labels magic"),
    pytest.param(_bad_shape(), None, TRAIN_IMAGES, "IDX header", id="not 28x28"),
    pytest.param(_bad_count(), None, TEST_LABELS, "IDX header", id="count"),
])
def test_a_mismatch_raises_and_writes_nothing(tmp_path, raw, expected, file, message):
    source = write_fake(tmp_path / "src", raw)
    expected = expected or {name: (len(data), hashlib.sha256(data).hexdigest()) for name, data in raw.items()}
    output = tmp_path / "out"
    (output / "train" / "001.T-shirt_top").mkdir(parents=True)  # a dataset already there stays
    with pytest.raises(ValueError, match=message) as caught:
        prepare_fashion_mnist(output, source, valid_per_class=1, expected=expected)
    assert file in str(caught.value) and "remove it from" in str(caught.value)
    assert sorted(p.name for p in output.iterdir()) == ["train"]
    assert [p.name for p in (output / "train").iterdir()] == ["001.T-shirt_top"]


def test_a_file_that_is_not_gzip_raises(tmp_path):
    source = write_fake(tmp_path / "src")
    (source / TRAIN_LABELS).write_bytes(RAW[TRAIN_LABELS])  # not compressed
    with pytest.raises(ValueError, match=f"{TRAIN_LABELS} is not a whole gzip file"):
        prepare(tmp_path / "out", source, valid_per_class=1)
    assert not (tmp_path / "out" / "train").exists()


def test_images_and_labels_must_agree_in_count(tmp_path):
    raw = {**RAW, TEST_LABELS: idx_bytes(ARRAYS[TEST_LABELS][:-1])}
    expected = {name: (len(data), hashlib.sha256(data).hexdigest()) for name, data in raw.items()}
    with pytest.raises(ValueError, match="19 labels"):
        prepare_fashion_mnist(tmp_path / "out", write_fake(tmp_path / "src", raw), valid_per_class=1,
                              expected=expected)
    assert not (tmp_path / "out" / "test").exists()


@pytest.mark.parametrize("kwargs, message", [
    ({"per_class": 0}, "per_class is 0"),
    ({"per_class": -3}, "per_class is -3"),
    ({"valid_per_class": 0}, "valid_per_class is 0"),
    ({"test_per_class": 0}, "test_per_class is 0"),
    ({"per_class": 5901, "valid_per_class": 100}, "per_class \\+ valid_per_class is 6001"),
    ({"per_class": 1, "valid_per_class": 6000}, "per_class \\+ valid_per_class is 6001"),
    ({"valid_per_class": 6000}, "leave some for train"),
    ({"test_per_class": 1001}, "test_per_class is 1001"),
])
def test_impossible_sizes_are_refused_before_reading(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):  # an empty source and no server: nothing is read
        prepare_fashion_mnist(tmp_path, tmp_path / "nothing", url="http://127.0.0.1:9/", **kwargs)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs, message", [
    ({"per_class": 3, "valid_per_class": 1}, "training set has 3"),
    ({"valid_per_class": 3}, "leave some for train"),
    ({"valid_per_class": 1, "test_per_class": 3}, "test set has 2"),
])
def test_sizes_beyond_the_files_are_refused(fake_dir, tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        prepare(tmp_path, fake_dir, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_full_sizes_are_accepted():
    datasets.check_per_class(5900, 100, 1000)
    datasets.check_per_class(None, 5999, None)
    datasets.check_per_class(1, 1, 1)


# --- downloads from a loopback server ---------------------------------------------------------

class FilesHandler(http.server.BaseHTTPRequestHandler):
    """Serves `server.files[<last path part>]`, honouring `Range: bytes=N-`; 404 for other names."""

    def do_GET(self):
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        data = server.files.get(self.path.rsplit("/", 1)[-1])
        if data is None:
            self.send_error(404)
            return
        status, start = 200, 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if match and int(match[1]) < len(data):
            status, start = 206, int(match[1])
        self.send_response(status)
        self.send_header("Content-Length", str(len(data) - start))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        self.wfile.write(data[start:])

    def log_message(self, *args):
        pass


@pytest.fixture
def server(monkeypatch):
    with serving(monkeypatch, FilesHandler, "/fashion/",
                 files={name: gzip.compress(data) for name, data in RAW.items()}) as httpd:
        yield httpd


@pytest.mark.parametrize("local", [(), (TRAIN_IMAGES, TEST_LABELS), NAMES[:3]])
def test_files_missing_locally_are_downloaded(server, tmp_path, local):
    source = write_fake(tmp_path / "src", {name: RAW[name] for name in local})
    output = tmp_path / "out"
    counts = prepare(output, source, valid_per_class=1, url=server.url)
    assert counts == {"train": 20, "valid": 10, "test": 20}
    assert sorted(path for path, _ in server.requests) == sorted(f"/fashion/{n}" for n in NAMES if n not in local)
    assert sorted(p.name for p in output.iterdir()) == ["test", "train", "valid"]  # downloads removed


def test_downloads_can_be_kept_and_are_reused(server, tmp_path):
    output = tmp_path / "out"
    prepare(output, tmp_path / "empty", valid_per_class=1, url=server.url, keep_downloads=True)
    assert sorted(p.name for p in (output / ".downloads").iterdir()) == sorted(NAMES)
    server.requests.clear()
    prepare(output, tmp_path / "empty", valid_per_class=1, url=server.url)
    assert server.requests == []
    assert not (output / ".downloads").exists()


def test_a_partial_download_is_resumed(server, tmp_path):
    output = tmp_path / "out"
    whole = server.files[TRAIN_IMAGES]
    (output / ".downloads").mkdir(parents=True)
    (output / ".downloads" / f"{TRAIN_IMAGES}.part").write_bytes(whole[:len(whole) // 2])
    prepare(output, tmp_path / "empty", valid_per_class=1, url=server.url)
    assert (f"/fashion/{TRAIN_IMAGES}", f"bytes={len(whole) // 2}-") in server.requests
    assert len(list(output.glob("*/*/*.png"))) == 50


def test_a_bad_download_is_deleted_and_nothing_written(server, tmp_path):
    server.files[TEST_IMAGES] = gzip.compress(idx_bytes(ARRAYS[TEST_IMAGES][::-1]))  # same size, other content
    output = tmp_path / "out"
    with pytest.raises(ValueError, match=f"SHA-256 of .*{TEST_IMAGES}.*run again to download it again"):
        prepare(output, tmp_path / "empty", valid_per_class=1, url=server.url)
    assert not (output / ".downloads" / TEST_IMAGES).exists()
    assert not any((output / split).exists() for split in SPLITS)


def test_a_missing_download_raises_http_error(server, tmp_path):
    del server.files[TEST_LABELS]
    with pytest.raises(requests.HTTPError):
        prepare(tmp_path / "out", tmp_path / "empty", valid_per_class=1, url=server.url)
    assert not (tmp_path / "out" / "train").exists()


# --- the real files (Debian's dataset-fashion-mnist) ------------------------------------------

@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(),
                    reason=f"{FASHION_MNIST_DIR} is absent: install the Debian package dataset-fashion-mnist")
def test_the_real_files_verify_and_write_a_small_tree(tmp_path):
    counts = prepare_fashion_mnist(tmp_path, per_class=20, valid_per_class=5, test_per_class=10)
    assert counts == {"train": 200, "valid": 50, "test": 100}
    for split, n in (("train", 20), ("valid", 5), ("test", 10)):
        assert sorted(p.name for p in (tmp_path / split).iterdir()) == FOLDERS
        assert all(len(list((tmp_path / split / f).iterdir())) == n for f in FOLDERS)
    arrays = {name: read_idx(FASHION_MNIST_DIR / name, *FASHION_MNIST_FILES[name]) for name in NAMES}
    assert arrays[TRAIN_IMAGES].shape == (60_000, 28, 28) and arrays[TEST_IMAGES].shape == (10_000, 28, 28)
    assert np.array_equal(np.bincount(arrays[TEST_LABELS]), [1000] * 10)
    [path] = list((tmp_path / "test").glob("*/*.png"))[:1]
    with Image.open(path) as image:
        assert image.mode == "RGB"
        assert np.array_equal(np.asarray(image)[:, :, 1], arrays[TEST_IMAGES][int(path.stem)])
    assert path.parent.name == FOLDERS[arrays[TEST_LABELS][int(path.stem)]]


# --- the CLI ----------------------------------------------------------------------------------

@pytest.fixture
def fake_digests(monkeypatch):
    """The module's expected digests set to the fake files' (the CLI has no flag for them)."""
    for name, value in EXPECTED.items():
        monkeypatch.setitem(FASHION_MNIST_FILES, name, value)


def test_cli_writes_fashion_mnist(fake_dir, fake_digests, tmp_path, capsys):
    output = tmp_path / "data"
    argv = ["prepare-data", "--source", "fashion-mnist", "--output", str(output), "--fashion-mnist-dir",
            str(fake_dir), "--per-class", "1", "--valid-per-class", "2", "--test-per-class", "1", "--seed", "3"]
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.strip() == \
        f'wrote Fashion-MNIST to {output}: {{"train": 10, "valid": 20, "test": 10}}'
    assert {split: len(files) for split, files in pngs(output).items()} == {"train": 10, "valid": 20, "test": 10}
    assert cli.main([*argv, "--if-missing"]) == 0
    assert "already holds a dataset" in capsys.readouterr().out


def test_cli_reports_a_mismatch(fake_dir, tmp_path, capsys):  # the real digests: the fake files fail
    argv = ["prepare-data", "--source", "fashion-mnist", "--output", str(tmp_path), "--fashion-mnist-dir",
            str(fake_dir)]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and TRAIN_IMAGES in err and "expected 47,040,016" in err
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_impossible_sizes(tmp_path, capsys):
    argv = ["prepare-data", "--source", "fashion-mnist", "--output", str(tmp_path), "--test-per-class", "2000"]
    assert cli.main(argv) == 1
    assert "test_per_class is 2000" in capsys.readouterr().err
