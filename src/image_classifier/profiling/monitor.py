"""The system monitor: CPU per core, memory, I/O wait and, through NVML, each GPU, every 500 ms."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

INTERVAL_SECONDS = 0.5  # SageMaker Debugger's default system monitoring interval (500 ms)


class SystemMonitor:
    """A daemon thread appending one JSON line per sample to `path`.

    A sample: `time` (Unix seconds), `cpu` (% per core), `memory` (% of RAM used), `iowait`
    (% of CPU time waiting for I/O, Linux), and `gpus`: per GPU `utilization` (%) and
    `memory` (% of its memory used), from NVML (nvidia-ml-py) when a GPU and its driver are there.
    """

    def __init__(self, path: Path, interval: float = INTERVAL_SECONDS):
        import psutil

        self.path, self.interval, self._psutil = path, interval, psutil
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="system-monitor", daemon=True)
        self._gpus = _nvml_handles()

    @property
    def gpu_count(self) -> int:
        return len(self._gpus)

    def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._psutil.cpu_percent(percpu=True)  # the first call only sets the baseline
        self._psutil.cpu_times_percent()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def sample(self) -> dict[str, Any]:
        """One sample of every metric (CPU figures are averages since the previous call)."""
        psutil = self._psutil
        sample = {"time": time.time(), "cpu": psutil.cpu_percent(percpu=True),
                  "memory": psutil.virtual_memory().percent,
                  "iowait": getattr(psutil.cpu_times_percent(), "iowait", 0.0), "gpus": []}
        for handle in self._gpus:
            import pynvml

            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            sample["gpus"].append({"utilization": pynvml.nvmlDeviceGetUtilizationRates(handle).gpu,
                                   "memory": 100.0 * memory.used / memory.total})
        return sample

    def _run(self) -> None:
        with open(self.path, "a", encoding="utf-8") as out:
            while not self._stop.wait(self.interval):
                try:
                    out.write(json.dumps(self.sample()) + "\n")
                    out.flush()
                except Exception as exc:  # a monitor failure must not fail the job
                    logger.warning("system monitor stopped: %s", exc)
                    return


def _nvml_handles() -> list:
    """NVML handles of the GPUs, or [] without a GPU, its driver or nvidia-ml-py."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    except Exception:  # pynvml raises NVMLError_LibraryNotFound and friends on CPU machines
        return []


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file (monitor samples, step timings); a torn last line
    (the job was killed mid-write) is skipped, a missing file is no records."""
    records = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records
