"""The ProfilerReport rules on profiling data made to show each problem, and on healthy data."""

import numpy as np
import pytest

from image_classifier.debugging.results import ISSUES, NO_ISSUES, NOT_APPLICABLE
from image_classifier.profiling import rules
from image_classifier.profiling.rules import ProfileData

pytest.importorskip("smdebug_rulesconfig")

N = 1200  # samples: more than the rules' patience (1000, AWS's rules-config default)


def samples(gpu_util, gpu_memory=None, cpu=50.0, iowait=0.0, n=N) -> list[dict]:
    """`n` monitor samples; each argument a constant or an (n,) array (per GPU: a list of them)."""
    def at(value, i):
        return float(value[i]) if np.ndim(value) else float(value)

    gpus = gpu_util if isinstance(gpu_util, list) else [gpu_util]
    if not isinstance(gpu_memory, list):
        gpu_memory = [gpu_memory if gpu_memory is not None else 80.0] * len(gpus)
    memories = gpu_memory
    return [{"time": i * 0.5, "cpu": [at(cpu, i), at(cpu, i)], "memory": 30.0, "iowait": at(iowait, i),
             "gpus": [{"utilization": at(g, i), "memory": at(m, i)} for g, m in zip(gpus, memories)]}
            for i in range(n)]


def judge(name, **data):
    return rules.evaluate(ProfileData(**{"cores": 4, "num_workers": 4, **data}))[name]


def test_defaults_are_aws_rules_config_package():
    from smdebug_rulesconfig.profiler_rules import rules as aws

    result = judge("CPUBottleneck", samples=samples(90.0))
    expected = dict(aws.CPUBottleneck().rule_parameters)
    assert result.parameters == {k: v for k, v in expected.items() if k not in ("rule_to_invoke", "scan_interval_us")}
    assert result.parameters == {"threshold": 50, "gpu_threshold": 10, "cpu_threshold": 90, "patience": 1000}


@pytest.mark.parametrize("name", ["LowGPUUtilization", "CPUBottleneck", "IOBottleneck", "BatchSize",
                                  "GPUMemoryIncrease", "LoadBalancing"])
def test_gpu_rules_are_not_applicable_without_a_gpu(name):
    cpu_only = [{"time": i, "cpu": [50.0], "memory": 20.0, "iowait": 0.0, "gpus": []} for i in range(N)]
    assert judge(name, samples=cpu_only).status == NOT_APPLICABLE


def test_healthy_gpu_job_has_no_issues():
    rng = np.random.default_rng(0)
    healthy = samples([90 + 5 * rng.random(N), 90 + 5 * rng.random(N)], [np.full(N, 80.0)] * 2, cpu=85.0)
    steps = [{"mode": "train", "step": i, "start": 100.0 + i, "seconds": 0.2 + 0.01 * rng.random()} for i in range(300)]
    results = rules.evaluate(ProfileData(samples=healthy, steps=steps, job_start=40.0, num_workers=4, cores=4))
    assert {n: r.status for n, r in results.items() if r.status != NO_ISSUES} == {}


@pytest.mark.parametrize("utilization, fires", [(40.0, True), (85.0, False)])
def test_low_gpu_utilization(utilization, fires):
    assert (judge("LowGPUUtilization", samples=samples(utilization)).status == ISSUES) == fires


def test_low_gpu_utilization_fluctuating():
    fluctuating = np.where(np.arange(N) % 10 == 0, 0.0, 95.0)  # 95th percentile high, 5th at 0
    result = judge("LowGPUUtilization", samples=samples(fluctuating))
    assert result.status == ISSUES and "fluctuating" in result.details[0]


def test_not_judged_before_patience():
    assert judge("LowGPUUtilization", samples=samples(5.0, n=900)).status == NO_ISSUES


@pytest.mark.parametrize("cpu, fires", [(95.0, True), (50.0, False)])
def test_cpu_bottleneck(cpu, fires):
    assert (judge("CPUBottleneck", samples=samples(5.0, cpu=cpu)).status == ISSUES) == fires


@pytest.mark.parametrize("iowait, fires", [(60.0, True), (10.0, False)])
def test_io_bottleneck(iowait, fires):
    assert (judge("IOBottleneck", samples=samples(5.0, iowait=iowait)).status == ISSUES) == fires


@pytest.mark.parametrize("gpu, memory, cpu, fires", [(30.0, 20.0, 20.0, True), (30.0, 90.0, 20.0, False),
                                                     (30.0, 20.0, 90.0, False)])
def test_batch_size(gpu, memory, cpu, fires):
    assert (judge("BatchSize", samples=samples(gpu, memory, cpu=cpu)).status == ISSUES) == fires


@pytest.mark.parametrize("jump, fires", [(60.0, True), (3.0, False)])
def test_gpu_memory_increase(jump, fires):
    memory = np.where(np.arange(N) < 1100, 20.0, 20.0 + jump)
    result = judge("GPUMemoryIncrease", samples=samples(90.0, memory))
    assert (result.status == ISSUES) == fires


def test_step_outlier():
    durations = [0.2] * 200
    for i in range(20, 200, 10):  # 18 steps 10x longer
        durations[i] = 2.0
    steps = [{"mode": "train", "step": i, "start": float(i), "seconds": s} for i, s in enumerate(durations)]
    result = judge("StepOutlier", steps=steps)
    assert result.status == ISSUES and result.step == 20 and "18 train steps" in result.details[0]
    steps = [dict(s, seconds=0.2) for s in steps]
    assert judge("StepOutlier", steps=steps).status == NO_ISSUES


@pytest.mark.parametrize("workers, cores, fires", [(1, 8, True), (4, 4, False), (20, 4, True)])
def test_dataloader(workers, cores, fires):
    result = rules.evaluate(ProfileData(num_workers=workers, cores=cores))["Dataloader"]
    assert (result.status == ISSUES) == fires


@pytest.mark.parametrize("minutes, fires", [(25, True), (2, False)])
def test_max_initialization_time(minutes, fires):
    steps = [{"mode": "train", "step": 0, "start": 1000.0 + 60 * minutes, "seconds": 0.1}]
    assert (judge("MaxInitializationTime", steps=steps, job_start=1000.0).status == ISSUES) == fires


def test_overall_system_usage_reports_and_never_fires():
    result = judge("OverallSystemUsage", samples=samples(90.0, cpu=np.linspace(0, 100, N)))
    assert result.status == NO_ISSUES
    assert any(d.startswith("cpu: min 0 p50 50 ") for d in result.details)


def test_load_balancing():
    rng = np.random.default_rng(1)
    busy, idle = 90 + 5 * rng.random(N), 10 + 5 * rng.random(N)
    assert judge("LoadBalancing", samples=samples([busy, idle])).status == ISSUES
    assert judge("LoadBalancing", samples=samples([busy, 90 + 5 * rng.random(N)])).status == NO_ISSUES


def test_unknown_rule_or_parameter():
    with pytest.raises(ValueError, match="unknown profiler rule"):
        rules.evaluate(ProfileData(), {"GPUHot": {}})
    with pytest.raises(ValueError, match="no parameter"):
        rules.evaluate(ProfileData(), {"StepOutlier": {"sigma": 2}})
