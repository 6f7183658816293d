"""The ProfilerReport rules of SageMaker Debugger, evaluated by the project on its own profiling data.

Defaults are read from AWS's rules-config package (`smdebug_rulesconfig.profiler_rules.rules`,
what `sagemaker.debugger.rule_configs` hands to AWS's rule containers). The algorithms follow
the open-source implementations in awslabs/sagemaker-debugger
(`smdebug/profiler/analysis/rules/*.py`) and AWS's "List of Debugger built-in profiler rules"
(https://docs.aws.amazon.com/sagemaker/latest/dg/debugger-built-in-profiler-rules.html). A rule
that judges GPUs says NotApplicable without one. Datapoints are system monitor samples (every
500 ms) or steps, as in AWS's rules.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from image_classifier.debugging.results import ISSUES, NO_ISSUES, NOT_APPLICABLE, RuleResult


@dataclass
class ProfileData:
    """What the rules judge.

    Attributes:
        samples: system monitor samples (see monitor.SystemMonitor), oldest first.
        steps: step records (see steps.StepTimer): mode, phase seconds, `seconds`, `start`.
        job_start: Unix seconds when the job started (for MaxInitializationTime).
        num_workers: DataLoader worker processes; cores: CPU cores of the machine.
    """

    samples: list[dict[str, Any]] = field(default_factory=list)
    steps: list[dict[str, Any]] = field(default_factory=list)
    job_start: float | None = None
    num_workers: int = 0
    cores: int = 1

    @property
    def gpu_count(self) -> int:
        return max((len(s.get("gpus", [])) for s in self.samples), default=0)

    def gpu_series(self, key: str) -> list[np.ndarray]:
        """Per GPU, its `key` ("utilization" or "memory", %) over the samples."""
        return [np.array([s["gpus"][i][key] for s in self.samples if len(s.get("gpus", [])) > i], dtype=float)
                for i in range(self.gpu_count)]


def aws_defaults(rule: str) -> dict[str, Any]:
    """The rule's parameters with their defaults, from AWS's rules-config package."""
    from smdebug_rulesconfig.profiler_rules import rules

    parameters = dict(getattr(rules, rule)().rule_parameters)
    for key in ("rule_to_invoke", "scan_interval_us"):  # how AWS's containers run, not what they judge
        parameters.pop(key, None)
    return parameters


def _result(rule: str, parameters: dict, violations: list[str], datapoints: int, first: int | None = None,
            not_applicable: str | None = None) -> RuleResult:
    if not_applicable:
        return RuleResult(rule, NOT_APPLICABLE, details=[not_applicable], parameters=parameters)
    return RuleResult(rule, ISSUES if violations else NO_ISSUES, step=first if violations else None,
                      details=violations[:20], parameters=parameters, violations=len(violations),
                      datapoints=datapoints)


NO_GPU = "no GPU: GPU utilisation is not judged on the CPU"


def low_gpu_utilization(data: ProfileData, p: dict) -> RuleResult:
    """Per GPU, once there are more than `patience` samples: the 95th percentile of utilisation
    over the last `window` below `threshold_p95` (underused), or above it with the 5th
    percentile below `threshold_p5` (fluctuating)."""
    if not data.gpu_count:
        return _result("LowGPUUtilization", p, [], 0, not_applicable=NO_GPU)
    violations = []
    for gpu, series in enumerate(data.gpu_series("utilization")):
        if len(series) <= p["patience"]:
            continue
        recent = series[-p["window"]:]
        p95, p5 = np.quantile(recent, 0.95), np.quantile(recent, 0.05)
        if p95 < p["threshold_p95"]:
            violations.append(f"GPU {gpu}: 95th percentile utilisation {p95:.0f} % < {p['threshold_p95']} %")
        elif p5 < p["threshold_p5"]:
            violations.append(f"GPU {gpu}: fluctuating, 5th percentile {p5:.0f} % < {p['threshold_p5']} %")
    return _result("LowGPUUtilization", p, violations, len(data.samples))


def _bottleneck(rule: str, data: ProfileData, p: dict, busy: Callable[[dict], bool], what: str) -> RuleResult:
    """CPUBottleneck and IOBottleneck: the % of samples with a GPU below `gpu_threshold` while
    the CPU is busy, judged once there are more than `patience` samples."""
    if not data.gpu_count:
        return _result(rule, p, [], 0, not_applicable=NO_GPU)
    hits = [s for s in data.samples if s.get("gpus") and min(g["utilization"] for g in s["gpus"]) < p["gpu_threshold"]
            and busy(s)]
    share = 100.0 * len(hits) / max(len(data.samples), 1)
    violations = []
    if len(data.samples) > p["patience"] and share > p["threshold"]:
        violations.append(f"{share:.0f} % of the time a GPU was below {p['gpu_threshold']} % while {what} "
                          f"(> {p['threshold']} %)")
    return _result(rule, p, violations, len(data.samples))


def cpu_bottleneck(data: ProfileData, p: dict) -> RuleResult:
    """A sample is a CPU bottleneck when a core is above `cpu_threshold` % and a GPU below `gpu_threshold` %."""
    return _bottleneck("CPUBottleneck", data, p, lambda s: max(s["cpu"], default=0) > p["cpu_threshold"],
                       f"a CPU core was above {p['cpu_threshold']} %")


def io_bottleneck(data: ProfileData, p: dict) -> RuleResult:
    """A sample is an I/O bottleneck when I/O wait is above `io_threshold` % and a GPU below `gpu_threshold` %."""
    return _bottleneck("IOBottleneck", data, p, lambda s: s.get("iowait", 0) > p["io_threshold"],
                       f"I/O wait was above {p['io_threshold']} %")


def batch_size(data: ProfileData, p: dict) -> RuleResult:
    """Over the last `window` samples (once past `patience`): the 95th percentiles of mean CPU,
    GPU and GPU memory utilisation all below their thresholds: a bigger batch would fit."""
    if not data.gpu_count:
        return _result("BatchSize", p, [], 0, not_applicable=NO_GPU)
    violations = []
    cpu = np.array([np.mean(s["cpu"]) for s in data.samples if s.get("cpu")])
    if len(cpu) > max(p["window"], p["patience"]) and np.quantile(cpu[-p["window"]:], 0.95) < p["cpu_threshold_p95"]:
        for gpu, (util, memory) in enumerate(zip(data.gpu_series("utilization"), data.gpu_series("memory"))):
            u95, m95 = np.quantile(util[-p["window"]:], 0.95), np.quantile(memory[-p["window"]:], 0.95)
            if u95 < p["gpu_threshold_p95"] and m95 < p["gpu_memory_threshold_p95"]:
                violations.append(f"GPU {gpu}: 95th percentiles CPU, GPU {u95:.0f} %, GPU memory {m95:.0f} % "
                                  f"all below 70 %: try a bigger batch size or a smaller instance")
    return _result("BatchSize", p, violations, len(data.samples))


def gpu_memory_increase(data: ProfileData, p: dict) -> RuleResult:
    """Per GPU: the moving average of memory use over `window` samples against the same average
    one sample earlier rose by more than `increase` (percentage points), past `patience`."""
    if not data.gpu_count:
        return _result("GPUMemoryIncrease", p, [], 0, not_applicable=NO_GPU)
    violations, w = [], int(p["window"])
    for gpu, series in enumerate(data.gpu_series("memory")):
        for n in range(w + 2, len(series) + 1):
            diff = series[n - w:n].mean() - series[n - w - 1:n - 2].mean()  # as AWS's code: v[-w:] vs v[-w-1:-2]
            if diff > p["increase"] and n > p["patience"]:
                violations.append(f"GPU {gpu}: memory moving average up {diff:.1f} points at sample {n}")
    return _result("GPUMemoryIncrease", p, violations, len(data.samples))


def step_outlier(data: ProfileData, p: dict) -> RuleResult:
    """Per mode (or `mode` only), once more than 100 steps: steps longer than mean + `stddev` ×
    standard deviation of all step durations; fires with more than `n_outliers` of them."""
    violations, first, points = [], None, 0
    for mode in sorted({s["mode"] for s in data.steps}):
        if p.get("mode") and mode.upper() != str(p["mode"]).upper():
            continue
        records = [s for s in data.steps if s["mode"] == mode]
        durations = np.array([s["seconds"] for s in records])
        points += len(durations)
        if len(durations) <= 100:
            continue
        limit = durations.mean() + p["stddev"] * durations.std()
        outliers = [r for r in records if r["seconds"] > limit]
        if len(outliers) > p["n_outliers"]:
            first = outliers[0]["step"] if first is None else min(first, outliers[0]["step"])
            violations.append(f"{len(outliers)} {mode} steps longer than {limit:.3f} s "
                              f"(mean {durations.mean():.3f} s + {p['stddev']} std)")
    return _result("StepOutlier", p, violations, points, first)


def dataloader(data: ProfileData, p: dict) -> RuleResult:
    """DataLoader worker processes against the cores: fewer than `min_threshold` % or more
    than `max_threshold` % of them. (AWS counts the worker pids seen per second; the job
    knows its worker count, which is what that count estimates.)"""
    share = 100.0 * data.num_workers / max(data.cores, 1)
    violations = []
    if share < p["min_threshold"]:
        violations.append(f"{data.num_workers} DataLoader workers on {data.cores} cores ({share:.0f} % < "
                          f"{p['min_threshold']} %): raise num-workers")
    elif share > p["max_threshold"]:
        violations.append(f"{data.num_workers} DataLoader workers on {data.cores} cores ({share:.0f} % > "
                          f"{p['max_threshold']} %): lower num-workers")
    return _result("Dataloader", p, violations, 1, 0 if violations else None)


def max_initialization_time(data: ProfileData, p: dict) -> RuleResult:
    """The first step started more than `threshold` minutes after the job did."""
    if data.job_start is None or not data.steps:
        return _result("MaxInitializationTime", p, [], 0, not_applicable="no step was recorded")
    minutes = (data.steps[0]["start"] - data.job_start) / 60
    violations = [f"the first step started {minutes:.1f} min after the job (> {p['threshold']} min)"] \
        if minutes > p["threshold"] else []
    return _result("MaxInitializationTime", p, violations, 1, 0 if violations else None)


def overall_system_usage(data: ProfileData, p: dict) -> RuleResult:
    """Percentiles of CPU, memory, I/O wait and GPU use; it never fires (nor does AWS's)."""
    result = _result("OverallSystemUsage", p, [], len(data.samples))
    result.details = [f"{name}: {summary}" for name, summary in usage_summary(data).items()]
    return result


def usage_summary(data: ProfileData) -> dict[str, str]:
    """min, p50, p95, p99 and max of each utilisation (%), as AWS's OverallSystemUsage reports them."""
    series = {"cpu": [np.mean(s["cpu"]) for s in data.samples if s.get("cpu")],
              "memory": [s["memory"] for s in data.samples], "iowait": [s.get("iowait", 0) for s in data.samples]}
    for i, (util, memory) in enumerate(zip(data.gpu_series("utilization"), data.gpu_series("memory"))):
        series[f"gpu{i}"], series[f"gpu{i}_memory"] = list(util), list(memory)
    summary = {}
    for name, values in series.items():
        if len(values):
            q = np.quantile(values, [0, 0.5, 0.95, 0.99, 1])
            summary[name] = "min {:.0f} p50 {:.0f} p95 {:.0f} p99 {:.0f} max {:.0f} %".format(*q)
    return summary


def load_balancing(data: ProfileData, p: dict) -> RuleResult:
    """With several GPUs: the Jensen–Shannon distance between each pair's utilisation histograms
    (2 % bins) above `threshold`, once each has more than `patience` samples."""
    if data.gpu_count < 2:
        return _result("LoadBalancing", p, [], 0, not_applicable="fewer than 2 GPUs: no load to balance")
    bins = np.arange(0, 100, 2)
    histograms = [np.histogram(s, bins=bins)[0] + 1e-12 for s in data.gpu_series("utilization")
                  if len(s) > p["patience"]]
    violations = []
    for i in range(len(histograms)):
        for j in range(i + 1, len(histograms)):
            a, b = histograms[i] / histograms[i].sum(), histograms[j] / histograms[j].sum()
            m = (a + b) / 2
            distance = math.sqrt((np.sum(a * np.log(a / m)) + np.sum(b * np.log(b / m))) / 2)
            if distance > p["threshold"]:
                violations.append(f"GPUs {i} and {j}: Jensen–Shannon distance {distance:.2f} > {p['threshold']}")
    return _result("LoadBalancing", p, violations, len(data.samples))


_RULES: dict[str, Callable[[ProfileData, dict], RuleResult]] = {
    "LowGPUUtilization": low_gpu_utilization, "CPUBottleneck": cpu_bottleneck, "IOBottleneck": io_bottleneck,
    "BatchSize": batch_size, "GPUMemoryIncrease": gpu_memory_increase, "StepOutlier": step_outlier,
    "Dataloader": dataloader, "MaxInitializationTime": max_initialization_time,
    "OverallSystemUsage": overall_system_usage, "LoadBalancing": load_balancing,
}
PROFILER_RULE_NAMES: tuple[str, ...] = tuple(_RULES)  # in the order they run and are reported


def evaluate(data: ProfileData, parameters: dict[str, dict] | None = None) -> dict[str, RuleResult]:
    """Every ProfilerReport rule on `data`, each with AWS's defaults updated by `parameters[rule]`.

    Raises:
        ValueError: an unknown rule or parameter in `parameters`.
    """
    parameters = parameters or {}
    unknown = set(parameters) - set(_RULES)
    if unknown:
        raise ValueError(f"unknown profiler rule(s) {', '.join(sorted(unknown))}")
    results = {}
    for name, rule in _RULES.items():
        defaults = aws_defaults(name)
        extra = set(parameters.get(name, {})) - set(defaults)
        if extra:
            raise ValueError(f"{name} has no parameter(s) {', '.join(sorted(extra))}; it takes {', '.join(defaults)}")
        results[name] = rule(data, {**defaults, **parameters.get(name, {})})
    return results
