"""Upload a local ImageFolder dataset (train/, valid/, test/) to S3, skipping files already there.

A file is skipped when the object at its key has the same size and ETag: the MD5 of the file
for a single-part upload, or S3's multipart ETag (the MD5 of the parts' MD5s, then `-<parts>`)
computed with the same part size boto3 uploads with.
"""

from __future__ import annotations

import argparse
import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.exceptions import ClientError
from tqdm import tqdm

from image_classifier.launch.exit_codes import LAUNCHER, exit_on

SPLITS = ("train", "valid", "test")
TRANSFER = TransferConfig()  # boto3's defaults: multipart from 8 MiB, in 8 MiB parts


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/some/prefix/` → ("bucket", "some/prefix"). Raises: ValueError: not an s3:// URI."""
    bucket, _, prefix = uri[5:].partition("/")
    if not uri.startswith("s3://") or not bucket:
        raise ValueError(f"not an S3 URI: {uri!r} (expected s3://bucket/prefix)")
    return bucket, prefix.strip("/")


def etag_of(path: Path, config: TransferConfig = TRANSFER) -> str:
    """The ETag S3 gives `path` when boto3 uploads it with `config` (quoted, as S3 returns it)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        if size < config.multipart_threshold:
            return f'"{hashlib.md5(f.read()).hexdigest()}"'
        parts = [hashlib.md5(chunk).digest() for chunk in iter(lambda: f.read(config.multipart_chunksize), b"")]
    return f'"{hashlib.md5(b"".join(parts)).hexdigest()}-{len(parts)}"'


@dataclass
class Result:
    uploaded: int = 0
    skipped: int = 0
    bytes: int = 0


def files_of(root: Path) -> list[Path]:
    """Every file under root/{train,valid,test}, sorted.

    Raises:
        ValueError: root has no train/ folder.
    """
    if not (root / "train").is_dir():
        raise ValueError(f"{root} has no train/ folder: expected an ImageFolder tree with train/, valid/, test/")
    return sorted(p for split in SPLITS if (root / split).is_dir() for p in (root / split).rglob("*") if p.is_file())


def upload(root: Path, s3_uri: str, s3_client, workers: int = 16) -> Result:
    """Upload the dataset under `root` to `s3_uri` (keys: <prefix>/<split>/<class>/<file>)."""
    bucket, prefix = parse_s3_uri(s3_uri)
    files = files_of(root)
    result = Result()
    with tqdm(total=sum(p.stat().st_size for p in files), unit="B", unit_scale=True, desc=s3_uri) as bar:
        def one(path: Path) -> bool:
            key = "/".join(filter(None, [prefix, path.relative_to(root).as_posix()]))
            size = path.stat().st_size
            try:
                head = s3_client.head_object(Bucket=bucket, Key=key)
                if head["ContentLength"] == size and head["ETag"] == etag_of(path):
                    bar.update(size)
                    return False
            except ClientError as exc:
                if exc.response["Error"]["Code"] not in ("404", "NoSuchKey", "NotFound"):
                    raise
            s3_client.upload_file(str(path), bucket, key, Config=TRANSFER, Callback=bar.update)
            return True

        with ThreadPoolExecutor(max_workers=workers) as pool:
            for path, sent in zip(files, pool.map(one, files)):
                if sent:
                    result.uploaded += 1
                    result.bytes += path.stat().st_size
                else:
                    result.skipped += 1
    return result


@exit_on(LAUNCHER)
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="upload_data.py", description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="dataset root holding train/, valid/, test/")
    parser.add_argument("s3_uri", help="destination, e.g. s3://my-bucket/dogImages")
    parser.add_argument("--region", default=None, help="AWS region (default: the AWS configuration's)")
    parser.add_argument("--workers", type=int, default=16, help="parallel uploads")
    parser.add_argument("--dry-run", action="store_true", help="list the objects it would write, send nothing")
    args = parser.parse_args(argv)
    if args.dry_run:
        bucket, prefix = parse_s3_uri(args.s3_uri)
        files = files_of(args.data)
        for path in files:
            key = "/".join(filter(None, [prefix, path.relative_to(args.data).as_posix()]))
            print(f"s3://{bucket}/{key} {path.stat().st_size}")
        print(f"{len(files)} file(s); objects of the same size and ETag already there would be skipped")
        return 0
    result = upload(args.data, args.s3_uri, boto3.Session(region_name=args.region).client("s3"), args.workers)
    print(f"uploaded {result.uploaded} file(s) ({result.bytes} bytes), skipped {result.skipped} already there; "
          f"channels: {args.s3_uri.rstrip('/')}/{{train,valid,test}}")
    return 0
