"""scripts/upload_data.py against moto_server: keys, skipping what is there, ETags."""

import boto3
import pytest
from boto3.s3.transfer import TransferConfig

from image_classifier.launch import upload


@pytest.fixture
def bucket(aws):
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="ic-upload-test")
    return s3


def keys(s3, prefix: str) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket="ic-upload-test", Prefix=prefix).get("Contents", []))


def test_uploads_then_skips_then_sends_only_what_changed(bucket, digit_tree, tmp_path, capsys):
    import shutil

    tree = shutil.copytree(digit_tree, tmp_path / "data")
    expected = sorted(f"sets/digits/{p.relative_to(tree).as_posix()}" for p in tree.rglob("*.png"))

    assert upload.main([str(tree), "s3://ic-upload-test/sets/digits/", "--region", "us-east-1"]) == 0
    assert f"uploaded {len(expected)} file(s)" in capsys.readouterr().out
    assert keys(bucket, "sets/digits/") == expected

    assert upload.main([str(tree), "s3://ic-upload-test/sets/digits"]) == 0
    assert f"uploaded 0 file(s) (0 bytes), skipped {len(expected)}" in capsys.readouterr().out

    changed = sorted(tree.rglob("*.png"))[0]
    changed.write_bytes(changed.read_bytes() + b"\0")
    assert upload.main([str(tree), "s3://ic-upload-test/sets/digits"]) == 0
    assert (f"uploaded 1 file(s) ({changed.stat().st_size} bytes), skipped {len(expected) - 1}"
            in capsys.readouterr().out)


def test_multipart_etag_matches_s3s(bucket, tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(bytes(range(256)) * (5 * 1024 * 1024 // 256 * 3))  # 15 MiB: two 8 MiB parts
    config = TransferConfig(multipart_threshold=8 * 1024 * 1024, multipart_chunksize=8 * 1024 * 1024)
    bucket.upload_file(str(big), "ic-upload-test", "big.bin", Config=config)
    assert bucket.head_object(Bucket="ic-upload-test", Key="big.bin")["ETag"] == upload.etag_of(big, config)
    assert upload.etag_of(big, config).endswith('-2"')


@pytest.mark.parametrize("uri", ["ic-upload-test/x", "s3://", "https://bucket/x"])
def test_bad_uri(uri):
    with pytest.raises(ValueError, match="not an S3 URI"):
        upload.parse_s3_uri(uri)


def test_not_a_dataset(aws, tmp_path, capsys):
    assert upload.main([str(tmp_path), "s3://ic-upload-test/x"]) == 2
    assert "no train/ folder" in capsys.readouterr().err


def test_dry_run_lists_the_objects_and_sends_nothing(bucket, digit_tree, capsys):
    assert upload.main([str(digit_tree), "s3://ic-upload-test/dry", "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    files = sorted(digit_tree.rglob("*.png"))
    assert out[-1].startswith(f"{len(files)} file(s)")
    assert out[0] == f"s3://ic-upload-test/dry/{files[0].relative_to(digit_tree).as_posix()} {files[0].stat().st_size}"
    assert keys(bucket, "dry/") == []
