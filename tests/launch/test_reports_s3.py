"""`image-classifier report s3://...`: a job's output.tar.gz fetched from the emulator's S3, and unsafe archives."""

import json

import boto3
import pytest

from image_classifier import reports
from image_classifier.profiling.profiler import JOB_FILE, PROFILER_OUTPUT_DIR, STEPS_FILE, SYSTEM_FILE
from tests.launch.common import tar_gz

pytest.importorskip("smdebug_rulesconfig")


def output_archive(extra: dict[str, bytes] | None = None) -> bytes:
    """An output.tar.gz as a profiled job leaves it (profiler data only)."""
    steps = [{"mode": "train", "epoch": 1, "step": i, "start": 100.0 + i, "data": 0.01, "forward": 0.05,
              "backward": 0.08, "optimizer": 0.01, "seconds": 0.15} for i in range(30)]
    samples = [{"time": 100.0 + i / 2, "cpu": [40.0, 60.0], "memory": 30.0, "iowait": 1.0, "gpus": []}
               for i in range(20)]
    files = {f"{PROFILER_OUTPUT_DIR}/{STEPS_FILE}": "\n".join(json.dumps(s) for s in steps).encode(),
             f"{PROFILER_OUTPUT_DIR}/{SYSTEM_FILE}": "\n".join(json.dumps(s) for s in samples).encode(),
             f"{PROFILER_OUTPUT_DIR}/{JOB_FILE}":
                 json.dumps({"job_start": 95.0, "num_workers": 2, "cores": 2}).encode(),
             **(extra or {})}
    return tar_gz(files)


def test_report_from_a_training_jobs_s3_folder(aws, tmp_path, capsys):
    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="ic-reports")
    s3.put_object(Bucket="ic-reports", Key="jobs/ic-job-1/output/output.tar.gz", Body=output_archive())
    out = tmp_path / "reports"
    assert reports.main("s3://ic-reports/jobs/ic-job-1/", out) == 0
    printed = capsys.readouterr().out
    assert "profiler rules:" in printed and "StepOutlier" in printed and "debugger rules:" not in printed
    page = (out / PROFILER_OUTPUT_DIR / "profiler-report.html").read_text()
    assert "Profiler report" in page and page.count("data:image/png;base64,") == 3
    statuses = {r["rule"]: r["status"] for r in json.loads((out / PROFILER_OUTPUT_DIR / "rules.json").read_text())}
    assert statuses["Dataloader"] == "NoIssuesFound" and statuses["LowGPUUtilization"] == "NotApplicable"


def test_an_archive_reaching_outside_is_refused(tmp_path, capsys):
    archive = tmp_path / "output.tar.gz"
    archive.write_bytes(output_archive({"../escaped.txt": b"x"}))
    assert reports.main(str(archive), tmp_path / "out") == 1
    assert "outside the destination" in capsys.readouterr().err
    assert not (tmp_path / "escaped.txt").exists()
