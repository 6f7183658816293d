"""Step timing (data wait, forward, backward, optimizer) and a torch.profiler window of training steps."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

PHASES = ("data", "forward", "backward", "optimizer")
# torch.profiler window: skip the first steps (cuDNN autotuning, allocator warm-up), then record
PROFILE_WAIT, PROFILE_WARMUP, PROFILE_ACTIVE = 5, 2, 5
TOP_OPERATORS = 25


class NoTimer:
    """What the loop uses when profiling is off: every method does nothing."""

    _nothing = contextlib.nullcontext()

    def set_mode(self, mode: str) -> None:
        pass

    def iterate(self, loader: Iterable) -> Iterable:
        return loader

    def phase(self, name: str):
        return self._nothing

    def end_step(self) -> None:
        pass


NO_TIMER = NoTimer()


class StepTimer(NoTimer):
    """Times each step's phases (seconds) and drives a torch.profiler window over training steps.

    On a GPU each phase ends with `torch.cuda.synchronize()`, so its time is the GPU's too
    (the cost of that is part of what `scripts/bench_debug.py` measures).
    """

    def __init__(self, steps_path: Path, profiler_dir: Path, device: torch.device):
        self.steps_path, self.profiler_dir, self.device = steps_path, profiler_dir, device
        self.mode, self.epoch, self.step = "", 0, 0
        self._current: dict[str, Any] = {}
        self._out = None
        self._torch_profiler = None
        self._finished = None  # the torch.profiler of a finished window, until close() writes it
        self._profiled_steps = 0

    def start(self) -> None:
        self.steps_path.parent.mkdir(parents=True, exist_ok=True)
        self._out = open(self.steps_path, "a", encoding="utf-8")  # noqa: SIM115 (open from start to close)
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self._torch_profiler = torch.profiler.profile(
            activities=activities, on_trace_ready=self._keep,
            schedule=torch.profiler.schedule(wait=PROFILE_WAIT, warmup=PROFILE_WARMUP, active=PROFILE_ACTIVE,
                                             repeat=1))
        self._torch_profiler.start()

    def set_mode(self, mode: str) -> None:
        """"train" or "eval"; each switch to "train" starts an epoch. The torch.profiler
        window counts training steps only."""
        if mode == "train" and self.mode != "train":
            self.epoch += 1
        self.mode = mode

    def iterate(self, loader: Iterable) -> Iterator:
        """The loader's batches, timing the wait for each as the step's "data" phase."""
        iterator = iter(loader)
        while True:
            start = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            self._current = {"start": time.time() - (time.perf_counter() - start),
                             "data": time.perf_counter() - start}
            yield batch

    @contextlib.contextmanager
    def phase(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self._current[name] = self._current.get(name, 0.0) + time.perf_counter() - start

    def end_step(self) -> None:
        """Record the step (one JSON line) and advance the torch.profiler schedule."""
        record = {"mode": self.mode, "epoch": self.epoch, "step": self.step, **self._current}
        record["seconds"] = sum(record.get(p, 0.0) for p in PHASES)
        self._out.write(json.dumps(record) + "\n")
        self.step += 1
        self._current = {}
        if self.mode == "train" and self._torch_profiler is not None:
            self._torch_profiler.step()
            self._profiled_steps += 1
            if self._profiled_steps > PROFILE_WAIT + PROFILE_WARMUP + PROFILE_ACTIVE:
                self._stop_torch_profiler()

    def close(self) -> None:
        self._stop_torch_profiler()
        if self._finished is not None:
            self._export(self._finished)
            self._finished = None
        if self._out:
            self._out.close()
            self._out = None

    def _stop_torch_profiler(self) -> None:
        if self._torch_profiler is not None:
            profiler, self._torch_profiler = self._torch_profiler, None
            profiler.stop()  # a window cut short by the end of training is handed over here

    def _keep(self, profiler) -> None:
        """Keep the finished window; it is written out at `close`, not in the middle of an epoch."""
        self._finished = profiler

    def _export(self, profiler) -> None:
        """The trace (opens in Perfetto or chrome://tracing) and the top-operator table."""
        self.profiler_dir.mkdir(parents=True, exist_ok=True)
        profiler.export_chrome_trace(str(self.profiler_dir / "trace.json"))
        sort_by = "self_cuda_time_total" if self.device.type == "cuda" else "self_cpu_time_total"
        table = profiler.key_averages().table(sort_by=sort_by, row_limit=TOP_OPERATORS)
        (self.profiler_dir / "top_operators.txt").write_text(table, encoding="utf-8")
