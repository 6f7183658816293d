"""scripts/bench_serving.py and its load generator."""

import http.server
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from image_classifier.benchmarks import load

ROOT = Path(__file__).resolve().parents[2]


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        status = 200 if body == b"good" else 400
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def loopback_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/invocations"
    server.shutdown()


def test_load_generator_counts_and_bounds(loopback_server):
    result = load.run(loopback_server, b"good", "image/jpeg", concurrency=4, count=50, seconds=30)
    assert len(result["latencies"]) == 50 and result["errors"] == {}
    assert all(latency > 0 for latency in result["latencies"])
    result = load.run(loopback_server, b"bad", "image/jpeg", concurrency=2, count=10, seconds=30)
    assert result["latencies"] == [] and result["errors"] == {"400": 10}


def test_load_generator_is_bounded_in_time(loopback_server):
    result = load.run(loopback_server, b"good", "image/jpeg", concurrency=1, count=10**9, seconds=0.5)
    assert 0.5 <= result["seconds"] < 5 and len(result["latencies"]) > 0


def test_load_generator_targets_loopback_only():
    with pytest.raises(ValueError, match="loopback"):
        load.run("http://example.com/invocations", b"x", "image/jpeg", 1, 1, 1)


@pytest.mark.slow
def test_the_benchmark_runs_and_reports_its_ratios(tmp_path):
    """As a user runs it: the script, in its own process (NNCF's quantization stays out of pytest's:
    tests/isolated.py), with the TorchScript reference it hands in."""
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_serving.py"), "--models", "resnet18", "--seconds", "0.2",
         "--count", "4", "--json", str(out), "--precisions", "fp32", "--variant",
         "int8:MODEL_SERVER_PRECISION=int8,MODEL_SERVER_THREADS=2"], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())["results"]["resnet18"]
    assert result["servers"] == ["fp32", "int8", "torchscript"]
    assert result["int8"]["env"] == {"MODEL_SERVER_PRECISION": "int8", "MODEL_SERVER_THREADS": "2"}
    assert result["fp32"]["env"] == {}
    for side in (*result["servers"], "baseline"):
        assert result[side]["errors"] == {} and set(result[side]["images_per_second"]) == {"1", "2", "4", "8"}
        assert result[side]["startup_seconds"] > 0 and result[side]["p99_ms"] >= result[side]["p50_ms"] > 0
        assert result[side]["limit_p50_ms"] > 0 and result[side]["limit"]["best_images_per_second"] > 0
        assert set(result[side]["limit"]["images_per_second"]) == {"1", "2", "4", "8", "16"}
        ratios = result[side]["ratios"]
        assert ratios["p50_over_limit_p50"] == pytest.approx(result[side]["p50_ms"] / result[side]["limit_p50_ms"])
        assert ratios["best_over_baseline_best"] == pytest.approx(
            result[side]["best_images_per_second"] / result["baseline"]["best_images_per_second"])
        assert ratios["best_over_torchscript_best"] == pytest.approx(
            result[side]["best_images_per_second"] / result["torchscript"]["best_images_per_second"])
    assert result["ratios"] == result["fp32"]["ratios"]
    check_explanations(result["fp32"]["explain"])
    assert "explain" not in result["int8"]  # the headline server's alone
    assert "int8: p50 / limit p50 =" in done.stdout and "(target >= 4.0)" in done.stdout
    assert "\ntorchscript " in done.stdout and "serving image image-classifier-serve:latest: " in done.stdout
    assert "explained / plain: p50 " in done.stdout


def check_explanations(figures: dict) -> None:
    assert figures["requests"] >= 5 and figures["first_explanation_ms"] > 0
    for side in ("plain", "explained"):
        assert figures[side]["p99_ms"] >= figures[side]["p50_ms"] > 0
    assert figures["ratios"] == {
        "p50_explained_over_plain": pytest.approx(figures["explained"]["p50_ms"] / figures["plain"]["p50_ms"]),
        "p99_explained_over_plain": pytest.approx(figures["explained"]["p99_ms"] / figures["plain"]["p99_ms"])}


@pytest.mark.slow
def test_explain_only(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_serving.py"), "--models", "resnet18", "--seconds", "0.2",
         "--count", "5", "--json", str(out), "--explain-only"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())["results"]["resnet18"]
    assert set(result) == {"startup_seconds", "explain"}
    check_explanations(result["explain"])
    assert "== resnet18: explain=gradcam against the same request without" in done.stdout
    assert "limit" not in done.stdout and "baseline" not in done.stdout
