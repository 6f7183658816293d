"""The system monitor, step timing, the torch.profiler window, and whole jobs with debug and profile on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image
from torch import nn

from image_classifier.debugging.hook import DEBUG_OUTPUT_DIR
from image_classifier.profiling.monitor import SystemMonitor, read_jsonl
from image_classifier.profiling.profiler import PROFILER_OUTPUT_DIR, STEPS_FILE, SYSTEM_FILE
from image_classifier.profiling.steps import NO_TIMER, PHASES, PROFILE_ACTIVE, PROFILE_WAIT, PROFILE_WARMUP, StepTimer
from image_classifier.training.loop import Meter, evaluate, train_one_epoch
from tests.training.test_job import run_job

pytest.importorskip("psutil")


def test_monitor_samples_every_interval(tmp_path):
    monitor = SystemMonitor(tmp_path / "system.jsonl", interval=0.05)
    monitor.start()
    deadline = time.monotonic() + 5
    while len(read_jsonl(tmp_path / "system.jsonl")) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    monitor.stop()
    samples = read_jsonl(tmp_path / "system.jsonl")
    assert len(samples) >= 3
    first = samples[0]
    assert len(first["cpu"]) == os.cpu_count() and all(0 <= c <= 100 for c in first["cpu"])
    assert 0 < first["memory"] < 100 and 0 <= first["iowait"] <= 100
    assert len(first["gpus"]) == monitor.gpu_count
    assert samples[1]["time"] > samples[0]["time"]


def test_read_jsonl_skips_a_torn_last_line(tmp_path):
    path = tmp_path / "steps.jsonl"
    path.write_text('{"step": 0}\n{"step": 1}\n{"ste')
    assert read_jsonl(path) == [{"step": 0}, {"step": 1}]
    assert read_jsonl(tmp_path / "missing.jsonl") == []


def tiny_loader(batches: int):
    generator = torch.Generator().manual_seed(0)
    return [(torch.randn(4, 3, 8, 8, generator=generator), torch.randint(0, 2, (4,), generator=generator))
            for _ in range(batches)]


def test_step_timer_times_each_phase_and_records_a_trace(tmp_path):
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    timer = StepTimer(tmp_path / "steps.jsonl", tmp_path, torch.device("cpu"))
    timer.start()
    steps = PROFILE_WAIT + PROFILE_WARMUP + PROFILE_ACTIVE + 1
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    for _ in range(2):
        train_one_epoch(model, tiny_loader(steps), nn.CrossEntropyLoss(), optimizer, torch.device("cpu"),
                        scaler, None, Meter(), timer=timer)
        evaluate(model, tiny_loader(2), nn.CrossEntropyLoss(), torch.device("cpu"), None, timer=timer)
    timer.close()
    records = read_jsonl(tmp_path / "steps.jsonl")
    assert [r["mode"] for r in records] == (["train"] * steps + ["eval"] * 2) * 2
    assert [r["epoch"] for r in records] == [1] * (steps + 2) + [2] * (steps + 2)
    train = records[0]
    assert all(train[p] >= 0 for p in PHASES)
    assert train["seconds"] == pytest.approx(sum(train[p] for p in PHASES))
    assert "backward" not in records[steps]  # evaluation: data wait and forward only
    trace = json.loads((tmp_path / "trace.json").read_text())
    assert any(e.get("name", "").startswith("ProfilerStep#") for e in trace["traceEvents"])
    assert "aten::addmm" in (tmp_path / "top_operators.txt").read_text()


def test_no_timer_changes_nothing():
    loader = tiny_loader(3)
    assert NO_TIMER.iterate(loader) is loader
    with NO_TIMER.phase("forward"):
        pass


def assert_valid_png(path):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path
    with Image.open(path) as image:
        image.verify()


@pytest.mark.slow
def test_a_job_with_debug_and_profile_writes_both_reports(opt_ml, tmp_path, capsys):
    env = opt_ml(debug=True, profile=True, epochs=2)
    code, log = run_job(env)
    assert code == 0, log[-3000:]
    assert "debugger rules:" in log and "profiler rules:" in log
    for name in ("VanishingGradient", "Overfit", "StepOutlier", "Dataloader"):
        assert f"\n{name} " in log
    debug, profiler = env.output_data_dir / DEBUG_OUTPUT_DIR, env.output_data_dir / PROFILER_OUTPUT_DIR
    for report, plots in ((debug / "debugger-report.html", ("loss", "loss_per_epoch", "gradients", "weight_updates")),
                          (profiler / "profiler-report.html", ("step_time_histogram", "time_split", "utilization"))):
        page = report.read_text()
        assert page.startswith("<!doctype html>") and page.count("data:image/png;base64,") == len(plots)
        for plot in plots:
            assert_valid_png(report.parent / f"{plot}.png")
    assert len(read_jsonl(profiler / SYSTEM_FILE)) >= 2
    assert {r["mode"] for r in read_jsonl(profiler / STEPS_FILE)} == {"train", "eval"}
    assert (profiler / "trace.json").is_file() and (profiler / "top_operators.txt").is_file()

    # rebuilt from the job's output.tar.gz, as `image-classifier report` does with one from S3
    archive = tmp_path / "output.tar.gz"
    subprocess.run(["tar", "-C", str(env.output_data_dir), "-czf", str(archive), "."], check=True)
    out = tmp_path / "rebuilt"
    result = subprocess.run([sys.executable, "-m", "image_classifier.cli", "report", str(archive), "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "debugger rules:" in result.stdout and "profiler rules:" in result.stdout
    assert_valid_png(out / DEBUG_OUTPUT_DIR / "loss.png")
    assert_valid_png(out / PROFILER_OUTPUT_DIR / "utilization.png")
    rebuilt = {r["rule"]: r["status"] for r in json.loads((out / DEBUG_OUTPUT_DIR / "rules.json").read_text())}
    in_job = {r["rule"]: r["status"] for r in json.loads((debug / "rules.json").read_text())}
    assert rebuilt == in_job


def test_report_of_nothing_is_a_clear_error(tmp_path):
    from image_classifier.reports import main

    assert main(str(tmp_path / "missing"), None) == 1
    assert main(str(tmp_path), None) == 1
