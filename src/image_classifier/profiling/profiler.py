"""What profile=true adds to a training job: the system monitor, step timing, torch.profiler, the rules."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from image_classifier import artifacts
from image_classifier.debugging.results import RuleResult, format_table, write_results
from image_classifier.profiling import report, rules
from image_classifier.profiling.monitor import SystemMonitor, read_jsonl
from image_classifier.profiling.steps import StepTimer
from image_classifier.sagemaker_env import SageMakerEnv

logger = logging.getLogger(__name__)

PROFILER_OUTPUT_DIR = "profiler"  # under output/data: system.jsonl, steps.jsonl, trace.json, rules, report
SYSTEM_FILE, STEPS_FILE = "system.jsonl", "steps.jsonl"
JOB_FILE = "job.json"  # what the rules need besides the samples and steps: job start, workers, cores


class Profiler:
    """The job's profiler: start it before the first step, close it after the last."""

    def __init__(self, env: SageMakerEnv, device: torch.device, num_workers: int):
        self.directory = env.output_data_dir / PROFILER_OUTPUT_DIR
        self.monitor = SystemMonitor(self.directory / SYSTEM_FILE)
        self.timer = StepTimer(self.directory / STEPS_FILE, self.directory, device)
        self.num_workers = num_workers
        self.job_start = _process_start()

    @classmethod
    def create(cls, env: SageMakerEnv, profile: bool, device: torch.device, num_workers: int) -> Profiler | None:
        """The profiler when `profile` is asked for, else None (then profiling costs nothing).

        Raises:
            ImportError: psutil (the `train` extra) is missing.
        """
        return cls(env, device, num_workers) if profile else None

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        artifacts.atomic_write_bytes(self.directory / JOB_FILE, json.dumps({
            "job_start": self.job_start, "num_workers": self.num_workers, "cores": os.cpu_count() or 1}).encode())
        self.monitor.start()
        self.timer.start()
        logger.info("profiling: system monitor every %.1f s (%d GPU(s) through NVML), step timing, torch.profiler; "
                    "output in %s", self.monitor.interval, self.monitor.gpu_count, self.directory)

    def close(self, evaluate: bool = True) -> list[RuleResult]:
        """Stop profiling; then, unless `evaluate` is false (a job stopped by SIGTERM), evaluate the
        ProfilerReport rules, write them, log their table and write the profiler report."""
        self.timer.close()
        self.monitor.stop()
        if not evaluate:
            return []
        data = load(self.directory)
        results = list(rules.evaluate(data).values())
        write_results(self.directory, results)
        logger.info("profiler rules:\n%s", format_table(results))
        try:
            logger.info("profiler report: %s", report.write(self.directory, data, results))
        except Exception:  # the report is a view of the job's results, not a reason to fail it
            logger.exception("the profiler report could not be written")
        return results


def load(directory: Path) -> rules.ProfileData:
    """The profiling data a job left in `directory` (output/data/profiler)."""
    job = json.loads((directory / JOB_FILE).read_text()) if (directory / JOB_FILE).is_file() else {}
    return rules.ProfileData(samples=read_jsonl(directory / SYSTEM_FILE), steps=read_jsonl(directory / STEPS_FILE),
                             job_start=job.get("job_start"), num_workers=job.get("num_workers", 0),
                             cores=job.get("cores", 1))


def _process_start() -> float:
    import psutil

    return psutil.Process().create_time()
