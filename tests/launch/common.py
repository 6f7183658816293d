"""What the launcher tests share: a training image, a role, and the arguments of a training job."""

import io
import json
import tarfile

TRAIN_IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/image-classifier-train:abc1234"
ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
TRAINING_ARGS = ["--image", TRAIN_IMAGE, "--role", ROLE, "--region", "us-east-1",
                 "--data", "s3://ic-data/dogImages/", "--output", "s3://ic-out/jobs/"]


def launch(main, capsys, *args) -> tuple[int, dict]:
    """Run a launcher's `main` with TRAINING_ARGS and `args`; (exit code, the JSON it printed)."""
    code = main([*TRAINING_ARGS, *args])
    out = capsys.readouterr().out
    if code != 0:
        return code, {}
    start = out.index("{\n")  # after any log line (smdebug logs to stdout when imported)
    return code, json.loads(out[start: out.index("\n}", start) + 2])


def tar_gz(files: dict[str, bytes]) -> bytes:
    """A .tar.gz holding `files` (name → content), as SageMaker packs output.tar.gz."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def refuse(monkeypatch, module, operation: str, code: str, message: str) -> None:
    """Make the boto3 sessions `module` opens answer `operation` (e.g. "UpdateEndpoint") with an
    AWS error `code`, before the request leaves: for refusals the emulator cannot be made to give."""
    import boto3
    from botocore.exceptions import ClientError

    real = boto3.Session

    def refusal(**_):
        raise ClientError({"Error": {"Code": code, "Message": message}}, operation)

    def session(*args, **kwargs):
        s = real(*args, **kwargs)
        s.events.register(f"before-call.sagemaker.{operation}", refusal)
        return s

    monkeypatch.setattr(module.boto3, "Session", session)
