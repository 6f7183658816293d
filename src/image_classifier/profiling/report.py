"""The profiler report: step times and their split, utilisation over time, the rules, the top operators."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from image_classifier.debugging.report import rules_table
from image_classifier.debugging.results import RuleResult
from image_classifier.html_page import Page, subplots
from image_classifier.profiling.rules import ProfileData, usage_summary
from image_classifier.profiling.steps import PHASES

REPORT_FILE = "profiler-report.html"


def write(directory: Path, data: ProfileData, results: list[RuleResult]) -> Path:
    """Write `directory/profiler-report.html` (and its plots as PNGs beside it); returns its path."""
    page = Page("Profiler report")
    page.heading("Rules")
    rules_table(page, results)

    train = [s for s in data.steps if s["mode"] == "train"]
    page.heading("Steps")
    if train:
        seconds = np.array([s["seconds"] for s in train])
        page.text(f"{len(train)} training steps: mean {seconds.mean():.3f} s, p50 {np.median(seconds):.3f} s, "
                  f"p95 {np.quantile(seconds, 0.95):.3f} s, max {seconds.max():.3f} s.")
        fig, ax = subplots(figsize=(8, 3.5))
        ax.hist(seconds, bins=min(50, max(5, len(seconds) // 2)))
        ax.set_xlabel("training step time (s)")
        ax.set_ylabel("steps")
        page.plot("step_time_histogram", fig, "Training step times")

        split = {p: float(np.mean([s.get(p, 0.0) for s in train])) for p in PHASES}
        fig, ax = subplots(figsize=(8, 2.5))
        left = 0.0
        for phase, value in split.items():
            ax.barh([0], [value], left=left, label=f"{phase} {value * 1000:.1f} ms")
            left += value
        ax.set_yticks([])
        ax.set_xlabel("seconds per training step (mean)")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.45), ncol=4)
        page.plot("time_split", fig, "Where a training step's time goes: waiting for data, forward, backward, "
                                     "optimizer")
    else:
        page.text("No training step was recorded.")

    page.heading("Utilisation")
    if data.samples:
        start = data.samples[0]["time"]
        t = np.array([s["time"] - start for s in data.samples])
        fig, ax = subplots(figsize=(10, 4))
        cores = np.array([s["cpu"] for s in data.samples], dtype=float)
        ax.plot(t, cores, color="tab:blue", alpha=0.15, linewidth=0.8)
        ax.plot(t, cores.mean(axis=1), color="tab:blue", label="CPU (mean of cores; cores faint)")
        ax.plot(t, [s["memory"] for s in data.samples], color="tab:green", label="memory")
        ax.plot(t, [s.get("iowait", 0) for s in data.samples], color="tab:red", label="I/O wait")
        for i, (util, memory) in enumerate(zip(data.gpu_series("utilization"), data.gpu_series("memory"))):
            ax.plot(t[:len(util)], util, label=f"GPU {i}")
            ax.plot(t[:len(memory)], memory, linestyle="--", label=f"GPU {i} memory")
        ax.set_xlabel("seconds since the monitor started")
        ax.set_ylabel("%")
        ax.set_ylim(0, 105)
        ax.legend(fontsize=8)
        page.plot("utilization", fig, "System utilisation, sampled every 500 ms")
        page.table(["metric", "percentiles"], list(usage_summary(data).items()))
    else:
        page.text("No system samples were recorded.")

    page.heading("Top operators (torch.profiler)")
    table = directory / "top_operators.txt"
    if table.is_file():
        page.pre(table.read_text(encoding="utf-8"))
        page.text("The whole trace is trace.json beside this page: open it in https://ui.perfetto.dev or "
                  "chrome://tracing.")
    else:
        page.text("No torch.profiler window was recorded (fewer training steps than its schedule needs).")
    path = directory / REPORT_FILE
    page.save(path)
    return path
