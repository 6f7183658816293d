"""The model server against the model's own limit and against a typical baseline server, in one run.

For each model (resnet50 and resnet18 at 224 px, random weights, 133 classes) and one real
photo (scikit-learn's china.jpg, 427x640 JPEG):

- the limit, in this process on all the cores the servers get: decode + preprocess + forward
  at batch 1 (p50 latency), and the best images/s at batch 1, 2, 4, 8 or 16;
- this project's server (`python -m image_classifier.serve`, its defaults): seconds from
  start to the first 200 on /ping, then p50/p99 latency at concurrency 1 and images/s at
  concurrency 1, 2, 4 and 8 (load from `benchmarks.load`, a separate process);
- a baseline written the way the usual project writes it: Flask + gunicorn, one sync worker
  per core, PyTorch's default threads in each, the eager model, PIL decode;

then a table, and JSON with the headline ratios server/limit and server/baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import requests

from image_classifier import artifacts, models
from image_classifier.sagemaker_env import BASE_DIR_ENV, BIND_TO_PORT_ENV
from image_classifier.transforms import IMAGENET_MEAN, IMAGENET_STD, resize_size

MODELS = ("resnet50", "resnet18")
IMAGE_SIZE = 224
NUM_CLASSES = 133
CONCURRENCY = (1, 2, 4, 8)
BATCH_SIZES = (1, 2, 4, 8, 16)
JPEG = "image/jpeg"

BASELINE_APP = '''
"""The usual student endpoint: the model loaded at import in every worker, PIL decode, eager forward."""
import io, json, os
from pathlib import Path
import torch
from flask import Flask, Response, request
from PIL import Image
from image_classifier import artifacts, models
from image_classifier.transforms import eval_transform

state_dict, spec = artifacts.load_model(Path(os.environ["MODEL_DIR"]))
model = models.create_model(spec.arch, spec.num_classes)
model.load_state_dict(state_dict)
model.eval()
transform = eval_transform(spec.image_size, spec.mean, spec.std)
app = Flask(__name__)

@app.route("/ping")
def ping():
    return "ok"

@app.route("/invocations", methods=["POST"])
def invocations():
    image = Image.open(io.BytesIO(request.data)).convert("RGB")
    with torch.no_grad():
        probabilities = torch.softmax(model(transform(image).unsqueeze(0)), dim=1)[0]
    top = probabilities.topk(5)
    return Response(json.dumps([{"label": spec.labels[i], "probability": p}
                                for p, i in zip(top.values.tolist(), top.indices.tolist())]),
                    mimetype="application/json")
'''


def write_model(arch: str, base_dir: Path) -> Path:
    """Model artifacts of `arch` with random weights (seeded) under `base_dir/model`."""
    import torch

    torch.manual_seed(0)
    model = models.create_model(arch, NUM_CLASSES)
    names = [f"{i + 1:03d}.class_{i}" for i in range(NUM_CLASSES)]
    spec = artifacts.ModelSpec(arch=arch, num_classes=NUM_CLASSES, class_names=names,
                               labels=[n.split(".", 1)[1] for n in names], image_size=IMAGE_SIZE,
                               resize_size=resize_size(IMAGE_SIZE), mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))
    artifacts.save_model(base_dir / "model", model.state_dict(), spec)
    return base_dir / "model"


def measure_limit(model_dir: Path, payload: bytes, seconds: float) -> dict[str, Any]:
    """In-process decode + preprocess + forward: p50 at batch 1 and the best images/s over BATCH_SIZES."""
    import torch

    from image_classifier.serving import codec
    from image_classifier.serving.predictor import Predictor

    from image_classifier.sagemaker_env import SageMakerEnv

    torch.set_num_threads(os.cpu_count() or 1)
    predictor = Predictor.load(model_dir, SageMakerEnv.from_environ().torchscript)  # the server's model

    def one(batch: int) -> None:
        images = [codec.decode(payload, JPEG, None).images[0] for _ in range(batch)]
        predictor.predict(codec.Inputs(images=images))

    for _ in range(3):
        one(1)
    latencies = _repeat(lambda: one(1), seconds)
    throughput = {}
    for batch in BATCH_SIZES:
        one(batch)
        times = _repeat(lambda: one(batch), seconds / 2)
        throughput[batch] = batch / statistics.median(times)
    best = max(throughput, key=throughput.get)
    return {"p50_ms": 1000 * statistics.median(latencies), "images_per_second": throughput,
            "best_batch": best, "best_images_per_second": throughput[best]}


def _repeat(action, seconds: float, at_least: int = 5) -> list[float]:
    times, deadline = [], time.perf_counter() + seconds
    while len(times) < at_least or time.perf_counter() < deadline:
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return times


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(command: list[str], env: dict[str, str], port: int, cwd: Path | None = None,
                 timeout: float = 180) -> tuple[subprocess.Popen, float]:
    """Start a server; returns it and the seconds from start to its first 200 on /ping.

    Raises:
        RuntimeError: it exited or never answered 200 within `timeout`.
    """
    start = time.perf_counter()
    server = subprocess.Popen(command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    while time.perf_counter() - start < timeout:
        if server.poll() is not None:
            raise RuntimeError(f"{command[0]} exited with {server.returncode}")
        try:
            if requests.get(f"http://127.0.0.1:{port}/ping", timeout=1).status_code == 200:
                return server, time.perf_counter() - start
        except requests.RequestException:
            pass
        time.sleep(0.05)
    stop_server(server)
    raise RuntimeError(f"no 200 on /ping within {timeout} s")


def stop_server(server: subprocess.Popen) -> None:
    try:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=40)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def measure_server(port: int, payload_path: Path, seconds: float, count: int) -> dict[str, Any]:
    """p50/p99 at concurrency 1 and images/s at each CONCURRENCY, from a separate load process."""
    figures: dict[str, Any] = {"images_per_second": {}, "errors": {}}
    for concurrency in CONCURRENCY:
        subprocess.run([sys.executable, "-m", "image_classifier.benchmarks.load",  # warm-up: every worker
                        f"http://127.0.0.1:{port}/invocations", str(payload_path), "--concurrency",
                        str(concurrency), "--count", str(2 * concurrency), "--seconds", "60"],
                       capture_output=True, check=True)
        result = json.loads(subprocess.run(
            [sys.executable, "-m", "image_classifier.benchmarks.load", f"http://127.0.0.1:{port}/invocations",
             str(payload_path), "--concurrency", str(concurrency), "--count", str(count), "--seconds", str(seconds)],
            capture_output=True, text=True, check=True).stdout)
        latencies = result["latencies"]
        figures["images_per_second"][concurrency] = len(latencies) / result["seconds"]
        if result["errors"]:
            figures["errors"][concurrency] = result["errors"]
        if concurrency == 1:
            figures["p50_ms"] = 1000 * float(np.percentile(latencies, 50))
            figures["p99_ms"] = 1000 * float(np.percentile(latencies, 99))
    figures["best_images_per_second"] = max(figures["images_per_second"].values())
    return figures


def serve_and_measure(command: list[str], env: dict[str, str], port: int, payload_path: Path, seconds: float,
                      count: int, cwd: Path | None = None) -> dict[str, Any]:
    """Start a server, measure it (`measure_server`) and its start-up, stop it."""
    server, startup = start_server(command, env, port, cwd)
    try:
        return {"startup_seconds": startup, **measure_server(port, payload_path, seconds, count)}
    finally:
        stop_server(server)


def benchmark_model(arch: str, workdir: Path, payload_path: Path, seconds: float, count: int,
                    variants: dict[str, dict[str, str]] | None = None) -> dict[str, Any]:
    """Limit, this server (one run per variant: name → extra environment; the first is the
    headline) and the baseline for `arch`."""
    variants = variants or {"server": {}}
    base_dir = workdir / arch
    model_dir = write_model(arch, base_dir)
    result: dict[str, Any] = {"limit": measure_limit(model_dir, payload_path.read_bytes(), seconds),
                              "servers": list(variants)}
    print(f"{arch}: limit measured", flush=True)

    for name, extra_env in variants.items():
        port = free_port()
        env = {**os.environ, BASE_DIR_ENV: str(base_dir), BIND_TO_PORT_ENV: str(port), **extra_env}
        result[name] = {"env": extra_env, **serve_and_measure(
            [sys.executable, "-m", "image_classifier.serve"], env, port, payload_path, seconds, count)}
        print(f"{arch}: {name} measured (first 200 on /ping after {result[name]['startup_seconds']:.1f} s)",
              flush=True)

    (workdir / "baseline_app.py").write_text(BASELINE_APP)
    port = free_port()
    result["baseline"] = serve_and_measure(
        [sys.executable, "-m", "gunicorn", "-w", str(os.cpu_count() or 1), "-b", f"127.0.0.1:{port}",
         "--timeout", "120", "baseline_app:app"], {**os.environ, "MODEL_DIR": str(model_dir)}, port,
        payload_path, seconds, count, cwd=workdir)
    print(f"{arch}: baseline measured", flush=True)

    limit, server, base = result["limit"], result[result["servers"][0]], result["baseline"]
    result["ratios"] = {
        "server_p50_over_limit_p50": server["p50_ms"] / limit["p50_ms"],
        "server_best_over_limit_best": server["best_images_per_second"] / limit["best_images_per_second"],
        "server_best_over_baseline_best": server["best_images_per_second"] / base["best_images_per_second"],
    }
    return result


def format_table(results: dict[str, dict[str, Any]]) -> str:
    rows = []
    for arch, r in results.items():
        limit, ratios = r["limit"], r["ratios"]
        rows.append(f"== {arch} at {IMAGE_SIZE} px, {os.cpu_count()} cores")
        rows.append(f"{'':<10} {'start s':>8} {'p50 ms':>8} {'p99 ms':>8} " +
                    " ".join(f"{'c=' + str(c) + ' img/s':>11}" for c in CONCURRENCY) + f" {'best img/s':>11}")
        rows.append(f"{'limit':<10} {'':>8} {limit['p50_ms']:8.1f} {'':>8} " +
                    " ".join(f"{'':>11}" for _ in CONCURRENCY) +
                    f" {limit['best_images_per_second']:11.2f}  (batch {limit['best_batch']})")
        for name in (*r["servers"], "baseline"):
            f = r[name]
            rows.append(f"{name:<10} {f['startup_seconds']:8.1f} {f['p50_ms']:8.1f} {f['p99_ms']:8.1f} " +
                        " ".join(f"{f['images_per_second'][c]:11.2f}" for c in CONCURRENCY) +
                        f" {f['best_images_per_second']:11.2f}" + (f"  errors {f['errors']}" if f["errors"] else ""))
        rows.append(f"first server p50 / limit p50 = {ratios['server_p50_over_limit_p50']:.2f} (target <= 1.10); "
                    f"server best / limit best = {ratios['server_best_over_limit_best']:.2f} (target >= 0.90); "
                    f"server best / baseline best = {ratios['server_best_over_baseline_best']:.2f} (target >= 1.5)")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_serving.py", description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=models.MODEL_NAMES)
    parser.add_argument("--seconds", type=float, default=10.0, help="wall time per measurement at most")
    parser.add_argument("--count", type=int, default=400, help="requests per concurrency level at most")
    parser.add_argument("--json", type=Path, default=Path("bench_serving.json"), help="where the figures go")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE,...",
                        help="also run the server with this environment, side by side (repeatable), e.g. "
                             "eager:MODEL_SERVER_TORCHSCRIPT=false; the first variant is the headline")
    args = parser.parse_args(argv)
    variants = {"server": {}}
    for spec in args.variant:
        name, _, pairs = spec.partition(":")
        variants[name] = dict(pair.split("=", 1) for pair in pairs.split(",") if pair)
    from image_classifier.demo import sample_photo

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.models:
            results[arch] = benchmark_model(arch, Path(tmp), sample_photo(), args.seconds, args.count, variants)
    print(format_table(results))
    args.json.write_text(json.dumps({"cpus": os.cpu_count(), "image_size": IMAGE_SIZE, "results": results},
                                    indent=2, default=str))
    print(f"figures written to {args.json}")
    return 0
