"""Rebuild a training job's debugger and profiler reports from its output, local or in S3.

A job's output is what SageMaker uploads as `output.tar.gz` (the job's `output/data`):
`debug/tensors` (the smdebug trial), `profiler/*.jsonl` and `metrics.json`. The rules are
evaluated afresh on them, so a report can be rebuilt with other rule parameters or a newer
version of this project.
"""

from __future__ import annotations

import logging
import sys
import tarfile
import tempfile
from pathlib import Path

from image_classifier.debugging import report as debugger_report
from image_classifier.debugging.hook import DEBUG_OUTPUT_DIR, TENSORS_DIR
from image_classifier.debugging.results import RuleResult, format_table, write_results
from image_classifier.launch.exit_codes import FAILED, exit_on
from image_classifier.profiling import report as profiler_report
from image_classifier.profiling import rules as profiler_rules
from image_classifier.profiling.profiler import PROFILER_OUTPUT_DIR, load
from image_classifier.training.metrics import read_epochs

logger = logging.getLogger(__name__)

OUTPUT_ARCHIVE = "output.tar.gz"


def fetch(source: str, workdir: Path) -> Path:
    """The job output folder for `source`: a folder, an output.tar.gz, or either in S3.

    `s3://bucket/prefix/JOB/` (a training job's folder under its S3OutputPath) means
    `s3://bucket/prefix/JOB/output/output.tar.gz`.

    Raises:
        FileNotFoundError: nothing at `source`.
        ValueError: an archive member that would land outside `workdir`.
    """
    if source.startswith("s3://"):
        import boto3

        from image_classifier.launch.upload import parse_s3_uri

        bucket, key = parse_s3_uri(source)
        if not key.endswith(".tar.gz"):
            key = f"{key}/output/{OUTPUT_ARCHIVE}".lstrip("/")
        archive = workdir / OUTPUT_ARCHIVE
        boto3.client("s3").download_file(bucket, key, str(archive))
        return _extract(archive, workdir / "output")
    path = Path(source)
    if path.is_dir():
        return path
    if path.is_file() and path.name.endswith(".tar.gz"):
        return _extract(path, workdir / "output")
    raise FileNotFoundError(f"no job output at {source} (a folder, an output.tar.gz, or an s3:// URI of either)")


def _extract(archive: Path, target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tar:
        try:
            tar.extractall(target, filter="data")  # no absolute paths, no links out, no devices
        except tarfile.FilterError as exc:
            raise ValueError(f"{archive}: {exc}") from exc
    return target


def rebuild(output: Path, out: Path) -> dict[str, list[RuleResult]]:
    """Evaluate the rules on the job output in `output` and write both reports under `out`.

    Returns:
        {"debugger": [...], "profiler": [...]}, each list empty when the job saved no such data.
    """
    results: dict[str, list[RuleResult]] = {"debugger": [], "profiler": []}
    tensors = output / DEBUG_OUTPUT_DIR / TENSORS_DIR
    if tensors.is_dir():
        from smdebug.trials import create_trial

        from image_classifier.debugging.rules import RuleSet  # imports smdebug: only for a job that saved tensors

        trial = create_trial(str(tensors))
        results["debugger"] = list(RuleSet(trial).evaluate().values())
        directory = out / DEBUG_OUTPUT_DIR
        write_results(directory, results["debugger"])
        debugger_report.write(directory, trial, results["debugger"], read_epochs(output))
    profiled = output / PROFILER_OUTPUT_DIR
    if profiled.is_dir():
        data = load(profiled)
        results["profiler"] = list(profiler_rules.evaluate(data).values())
        directory = out / PROFILER_OUTPUT_DIR
        write_results(directory, results["profiler"])
        if directory.resolve() != profiled.resolve():
            for name in ("top_operators.txt", "trace.json"):
                if (profiled / name).is_file():
                    (directory / name).write_bytes((profiled / name).read_bytes())
        profiler_report.write(directory, data, results["profiler"])
    return results


@exit_on({FileNotFoundError: FAILED, ValueError: FAILED})
def main(source: str, out: Path | None) -> int:
    """`image-classifier report`: rebuild, print the rules tables and where the reports are; an
    unreadable or missing source is an `error:` line on stderr and exit code 1."""
    with tempfile.TemporaryDirectory() as workdir:
        output = fetch(source, Path(workdir))
        target = out or (output if Path(source).is_dir() else Path("reports"))
        results = rebuild(output, target)
    if not any(results.values()):
        print(f"error: {source} holds neither debug/tensors nor profiler/ data (was debug or profile on?)",
              file=sys.stderr)
        return FAILED
    for kind, report_file, folder in (("debugger", debugger_report.REPORT_FILE, DEBUG_OUTPUT_DIR),
                                      ("profiler", profiler_report.REPORT_FILE, PROFILER_OUTPUT_DIR)):
        if results[kind]:
            print(f"{kind} rules:\n{format_table(results[kind])}\n{kind} report: {target / folder / report_file}\n")
    return 0
