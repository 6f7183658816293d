"""Tests for dataset preparation: the digits sample, resumable loopback downloads and safe zip extraction."""

from __future__ import annotations

import hashlib
import http.server
import io
import random
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from image_classifier import datasets
from image_classifier.datasets import DIGIT_NAMES, SPLITS, download, extract_dogimages, has_dataset, write_sample
from tests.local_http import serving

CLASS_FOLDERS = [f"{i + 1:03d}.{name}" for i, name in enumerate(DIGIT_NAMES)]


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# --- the digits sample ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    root = tmp_path_factory.mktemp("sample")
    return root, write_sample(root, seed=0)


def test_write_sample_writes_every_digit(sample):
    root, counts = sample
    assert set(counts) == set(SPLITS)
    assert sum(counts.values()) == 1797
    for split in SPLITS:
        folders = sorted(p.name for p in (root / split).iterdir())
        assert folders == CLASS_FOLDERS  # every split holds every class
        files = list((root / split).glob("*/*.png"))
        assert len(files) == counts[split]
    assert 0.68 < counts["train"] / 1797 < 0.72 and 0.13 < counts["valid"] / 1797 < 0.17
    names = [Path(f).name for f in listing(root)]
    assert len(set(names)) == 1797  # each scan exactly once


def test_write_sample_images_are_the_digits(sample):
    from sklearn.datasets import load_digits

    root, _ = sample
    digits = load_digits()
    for index in (0, 1, 1796):
        [path] = root.glob(f"*/*/{index:04d}.png")
        assert path.parent.name == CLASS_FOLDERS[digits.target[index]]
        image = Image.open(path)
        assert image.mode == "L" and image.size == (8, 8)
        expected = (digits.images[index] * (255 / 16)).round().astype(np.uint8)
        assert np.array_equal(np.asarray(image), expected)


def test_write_sample_is_reproducible(sample, tmp_path):
    root, counts = sample
    assert write_sample(tmp_path / "same", seed=0) == counts
    assert listing(tmp_path / "same") == listing(root)
    write_sample(tmp_path / "other", seed=1)
    assert listing(tmp_path / "other") != listing(root)


@pytest.mark.parametrize("layout, expected", [
    ([], False),
    (["valid/001.zero/"], False),
    (["train/"], False),
    (["train/loose.png"], False),
    (["train"], False),                 # a file named train
    (["train/001.zero/"], True),
    (["train/001.zero/x.png", "valid/001.zero/x.png"], True),
])
def test_has_dataset(tmp_path, layout, expected):
    for entry in layout:
        path = tmp_path / entry
        if entry.endswith("/"):
            path.mkdir(parents=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"x")
    assert has_dataset(tmp_path) is expected


# --- downloads from a loopback server ---------------------------------------------------------

PAYLOAD = random.Random(0).randbytes(2_500_000)  # more than two of download()'s 1 MiB chunks


class RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves `server.payload` at any path, honouring `Range: bytes=N-` unless told not to."""

    def do_GET(self):
        server = self.server
        server.requests.append(dict(self.headers))
        if self.path.startswith("/missing"):
            self.send_error(404)
            return
        data, status, extra = server.payload, 200, {}
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if match and server.mode != "ignore range":
            start = int(match[1])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data, status = data[start:], 206
            extra["Content-Range"] = f"bytes {start}-{len(server.payload) - 1}/{len(server.payload)}"
        self.send_response(status)
        self.send_header("Content-Type", "application/zip")
        self.send_header("Content-Length", str(len(data)))
        for key, value in extra.items():
            self.send_header(key, value)
        self.end_headers()
        if server.mode == "cut":  # the connection drops part-way through
            data = data[:len(data) // 2]
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server(monkeypatch):
    with serving(monkeypatch, RangeHandler, "/dogImages.zip", payload=PAYLOAD, mode="normal") as httpd:
        yield httpd


def part_of(destination: Path) -> Path:
    return destination.with_name(destination.name + ".part")


def test_full_download(server, tmp_path):
    destination = tmp_path / "nested" / "dogImages.zip"
    assert download(server.url, destination, timeout=10) == destination
    assert destination.read_bytes() == PAYLOAD
    assert not part_of(destination).exists()
    assert len(server.requests) == 1 and "Range" not in server.requests[0]


@pytest.mark.parametrize("already", [1, 1_000_000, 1 << 20, len(PAYLOAD) - 1])
def test_resumed_download(server, tmp_path, already):
    destination = tmp_path / "dogImages.zip"
    part_of(destination).write_bytes(PAYLOAD[:already])
    download(server.url, destination, timeout=10)
    assert server.requests[0]["Range"] == f"bytes={already}-"
    assert destination.read_bytes() == PAYLOAD
    assert not part_of(destination).exists()


def test_whole_part_file_is_finished_on_416(server, tmp_path):
    destination = tmp_path / "dogImages.zip"
    part_of(destination).write_bytes(PAYLOAD)
    download(server.url, destination, sha256=hashlib.sha256(PAYLOAD).hexdigest(), timeout=10)
    assert server.requests[0]["Range"] == f"bytes={len(PAYLOAD)}-"
    assert destination.read_bytes() == PAYLOAD


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    server.mode = "ignore range"
    destination = tmp_path / "dogImages.zip"
    part_of(destination).write_bytes(b"stale bytes that are not a prefix of the file" * 100)
    download(server.url, destination, timeout=10)
    assert "Range" in server.requests[0]
    assert destination.read_bytes() == PAYLOAD


def test_dropped_connection_leaves_a_part_file_that_resumes(server, tmp_path):
    server.mode = "cut"
    destination = tmp_path / "dogImages.zip"
    with pytest.raises((requests.RequestException, ValueError)):
        download(server.url, destination, timeout=10)
    partial = part_of(destination).read_bytes()
    assert not destination.exists()
    assert 0 < len(partial) < len(PAYLOAD) and PAYLOAD.startswith(partial)
    server.mode = "normal"
    download(server.url, destination, timeout=10)
    assert server.requests[-1]["Range"] == f"bytes={len(partial)}-"
    assert destination.read_bytes() == PAYLOAD


def test_sha256_mismatch_deletes_the_partial(server, tmp_path):
    destination = tmp_path / "dogImages.zip"
    with pytest.raises(ValueError, match="SHA-256"):
        download(server.url, destination, sha256="0" * 64, timeout=10)
    assert not destination.exists() and not part_of(destination).exists()


@pytest.mark.parametrize("case", [str.lower, str.upper])
def test_right_sha256_is_accepted(server, tmp_path, case):
    destination = tmp_path / "dogImages.zip"
    download(server.url, destination, sha256=case(hashlib.sha256(PAYLOAD).hexdigest()), timeout=10)
    assert destination.read_bytes() == PAYLOAD


def test_http_error_raises(server, tmp_path):
    destination = tmp_path / "dogImages.zip"
    with pytest.raises(requests.HTTPError):
        download(server.url.replace("/dogImages.zip", "/missing.zip"), destination, timeout=10)
    assert not destination.exists()


# --- extraction -------------------------------------------------------------------------------

def _jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 100, 0)).save(buffer, "JPEG")
    return buffer.getvalue()


def make_zip(path: Path, members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def dog_members() -> dict[str, bytes]:
    return {f"dogImages/{split}/{breed}/{name}": _jpeg()
            for split in SPLITS
            for breed, name in (("001.Affenpinscher", "x.jpg"), ("002.Afghan_hound", "y.jpg"))}


def test_extract_dogimages(tmp_path):
    archive = make_zip(tmp_path / "dogImages.zip", dog_members())
    output = tmp_path / "data"
    (output / "train" / "999.stale").mkdir(parents=True)  # a previous extraction is replaced
    extract_dogimages(archive, output)
    assert sorted(p.name for p in output.iterdir()) == ["test", "train", "valid"]
    for split in SPLITS:
        assert listing(output / split) == ["001.Affenpinscher/x.jpg", "002.Afghan_hound/y.jpg"]
        assert (output / split / "001.Affenpinscher" / "x.jpg").read_bytes() == _jpeg()
    assert has_dataset(output)


@pytest.mark.parametrize("evil", ["../evil.txt", "../../evil.txt", "dogImages/../../evil.txt",
                                  "dogImages/train/../../../../evil.txt", "/tmp/evil-absolute.txt"])
def test_member_outside_the_folder_is_refused(tmp_path, evil):
    archive = make_zip(tmp_path / "dogImages.zip", {**dog_members(), evil: b"pwned"})
    output = tmp_path / "out" / "data"
    with pytest.raises(ValueError, match="outside"):
        extract_dogimages(archive, output)
    assert listing(tmp_path) == ["dogImages.zip"]  # nothing written anywhere
    assert not Path("/tmp/evil-absolute.txt").exists()


def _corrupt_member(path: Path, compression) -> bytes:
    make_zip(path, dog_members() | {"dogImages/train/001.Affenpinscher/big.bin":
                                    random.Random(1).randbytes(20_000).hex().encode()}, compression)
    data = bytearray(path.read_bytes())
    info = zipfile.ZipFile(path).getinfo("dogImages/train/001.Affenpinscher/big.bin")
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    for i in range(start + info.compress_size // 3, start + info.compress_size // 3 + 64):
        data[i] ^= 0x5A
    return bytes(data)


@pytest.mark.parametrize("damage", [
    pytest.param(lambda p: random.Random(2).randbytes(5000), id="not a zip"),
    pytest.param(lambda p: make_zip(p, dog_members()).read_bytes()[:-40], id="truncated"),
    pytest.param(lambda p: _corrupt_member(p, zipfile.ZIP_DEFLATED), id="deflate stream damaged"),
    pytest.param(lambda p: _corrupt_member(p, zipfile.ZIP_STORED), id="stored member damaged (CRC)"),
])
def test_corrupt_zip_raises_bad_zip_file(tmp_path, damage):
    archive = tmp_path / "dogImages.zip"
    archive.write_bytes(damage(archive))
    output = tmp_path / "data"
    with pytest.raises(zipfile.BadZipFile):
        extract_dogimages(archive, output)
    assert not (output / "train").exists()


def test_zip_without_a_split_is_refused(tmp_path):
    members = {k: v for k, v in dog_members().items() if not k.startswith("dogImages/test/")}
    archive = make_zip(tmp_path / "dogImages.zip", members)
    with pytest.raises(ValueError, match="test"):
        extract_dogimages(archive, tmp_path / "data")


def test_prepare_dogimages_downloads_and_extracts(server, tmp_path):
    server.payload = make_zip(tmp_path / "served.zip", dog_members()).read_bytes()
    output = tmp_path / "data"
    datasets.prepare_dogimages(output, url=server.url, sha256=hashlib.sha256(server.payload).hexdigest())
    assert listing(output / "valid") == ["001.Affenpinscher/x.jpg", "002.Afghan_hound/y.jpg"]
    assert not (output / "dogImages.zip").exists()
