"""The model server against the model's own limit and against a typical baseline server, in one run.

For each model (resnet50 and resnet18 at 224 px, random weights, 133 classes) and one real
photo (scikit-learn's china.jpg, 427x640 JPEG):

- this project's server (`python -m image_classifier.serve`) at each precision (fp32, its
  default, then bf16 and int8: `MODEL_SERVER_PRECISION`), then each `--variant`, then the server
  before issue 18 (TorchScript fp32, `torchscript`: the project's server with the forward pass of
  scripts/reference/torchscript_reference.py, in a checkout of the repository): seconds from
  start to the first 200 on /ping, p50/p99 latency at concurrency 1, and images/s at
  concurrency 1, 2, 4 and 8 (load from `benchmarks.load`, a separate process);
- each server's own limit, in this process on all the cores the servers get, measured beside
  it (this machine's speed drifts by tens of percent over minutes): decode + preprocess +
  forward through that server's runtime and precision at batch 1, one pass in turn with each of
  the server's requests at concurrency 1 (p50), and the best images/s at batch 1, 2, 4, 8 or 16
  just before the server's load;
- a baseline written the way the usual project writes it: Flask + gunicorn, one sync worker
  per core, PyTorch's default threads in each, the eager model, PIL decode;
- what an explanation adds (the server with its defaults): p50/p99 at concurrency 1 of the
  photo with `explain=gradcam` and without, in turns, and their ratio (`--explain-only`: this
  alone, quickly);

then a table, and JSON with the headline ratios server/limit, server/baseline and, per
precision, best images/s over the TorchScript server's; and the serving image's size where a
container engine has it.

The models have random weights (seeded); the training job's OpenVINO files are written for them
as the job writes them (`training.export`), int8 calibrated on the real photos scikit-learn and
scikit-image ship (random weights: the figures are speed, not accuracy).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import requests

from image_classifier import artifacts, local, models
from image_classifier.benchmarks import REFERENCE_DIR, timings, torchscript_reference
from image_classifier.sagemaker_env import BIND_TO_PORT_ENV, PRECISION_ENV, SageMakerEnv
from image_classifier.serving import attributes
from image_classifier.transforms import resize_size

MODELS = ("resnet50", "resnet18")
IMAGE_SIZE = 224
NUM_CLASSES = 133
CONCURRENCY = (1, 2, 4, 8)
BATCH_SIZES = (1, 2, 4, 8, 16)
JPEG = "image/jpeg"
EXPLAIN = {attributes.HEADER: "explain=gradcam"}

BASELINE_APP = '''
"""The usual student endpoint: the model loaded at import in every worker, PIL decode, eager forward."""
import io, json, os
from pathlib import Path
import torch
from flask import Flask, Response, request
from PIL import Image
from image_classifier import artifacts
from image_classifier.transforms import eval_transform

state_dict, spec = artifacts.load_model(Path(os.environ["MODEL_DIR"]))
model = spec.create_model()
model.load_state_dict(state_dict)
model.train(False)
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


def calibration_photos(spec: artifacts.ModelSpec) -> list[np.ndarray]:
    """The photos scikit-learn and scikit-image ship, each whole and mirrored, through `spec`'s
    eval transforms: float32 batches (N, 3, H, W) for int8 calibration."""
    import sklearn.datasets
    from PIL import Image, ImageOps

    from image_classifier.images import open_image
    from image_classifier.transforms import eval_transform

    images = [Image.fromarray(array) for array in sklearn.datasets.load_sample_images().images]
    try:
        import skimage

        folder = Path(skimage.__file__).parent / "data"
        images += [open_image(path) for name in ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg")
                   if (path := folder / name).exists()]
    except ImportError:
        pass
    transform = eval_transform(spec.image_size, spec.mean, spec.std)
    tensors = [transform(view).numpy() for image in images for view in (image, ImageOps.mirror(image))]
    return [np.stack(tensors)]


def write_model(arch: str, base_dir: Path) -> Path:
    """Model artifacts of `arch` with random weights (seeded) under `base_dir/model`, with the
    OpenVINO files the training job writes (`training.export.export`)."""
    import torch

    from image_classifier.training.export import export

    torch.manual_seed(0)
    model = models.create_model(arch, NUM_CLASSES)
    names = [f"{i + 1:03d}.class_{i}" for i in range(NUM_CLASSES)]
    spec = artifacts.ModelSpec(arch=arch, num_classes=NUM_CLASSES, class_names=names,
                               labels=[n.split(".", 1)[1] for n in names], image_size=IMAGE_SIZE,
                               resize_size=resize_size(IMAGE_SIZE), mean=list(models.data_config(arch).mean),
                               std=list(models.data_config(arch).std))
    artifacts.save_model(base_dir / "model", model.state_dict(), spec)
    export(base_dir / "model", spec, model.state_dict(), calibration_photos(spec))
    return base_dir / "model"


class Limit:
    """A server's own limit in this process, on all the cores the servers get: decode +
    preprocess + forward of the payload through the server's `Predictor` (its runtime and precision)."""

    def __init__(self, predictor, payload: bytes):
        self.predictor = predictor
        self.payload = payload
        for _ in range(3):
            self.run(1)

    def run(self, batch: int) -> None:
        """One forward pass of `batch` copies of the payload, each decoded and preprocessed."""
        from image_classifier.serving import codec

        images = [codec.decode(self.payload, JPEG, None).images[0] for _ in range(batch)]
        self.predictor.predict(codec.Inputs(images=images))

    def timed(self, batch: int = 1) -> float:
        """Seconds `run(batch)` took."""
        start = time.perf_counter()
        self.run(batch)
        return time.perf_counter() - start

    def throughput(self, seconds: float) -> dict[str, Any]:
        """Images/s at each of BATCH_SIZES (median over `seconds` / 2 each) and the best."""
        figures = {}
        for batch in BATCH_SIZES:
            self.run(batch)
            figures[batch] = batch / statistics.median(timings(lambda batch=batch: self.run(batch), seconds / 2))
        best = max(figures, key=figures.get)
        return {"images_per_second": figures, "best_batch": best, "best_images_per_second": figures[best]}


def start_server(start: Callable[[], subprocess.Popen], port: int,
                 timeout: float = 180) -> tuple[subprocess.Popen, float]:
    """Start a server with `start()` (`_project_server`, `_baseline_server`: quiet, in a session of its own);
    returns it and the seconds from start to its first 200 on /ping (`local.wait_for_ping`).

    Raises:
        RuntimeError: it exited or never answered 200 within `timeout` (it is stopped).
    """
    started = time.perf_counter()
    server = start()
    try:
        local.wait_for_ping(local.server_url(port), server, timeout, interval=0.05)
    except RuntimeError:
        stop_server(server)
        raise
    return server, time.perf_counter() - started


def stop_server(server: subprocess.Popen) -> None:
    """SIGTERM to the server and its workers (`local.stop`), SIGKILL after 40 s."""
    try:
        local.stop(server, timeout=40, group=True)
    except subprocess.TimeoutExpired:
        pass  # killed: its figures are taken already


def _project_server(base_dir: Path, port: int, extra_env: dict[str, str]) -> Callable[[], subprocess.Popen]:
    """A `start` for `start_server`: this project's server (`local.start_server`) on `base_dir`'s model."""
    return lambda: local.start_server(base_dir, port, extra_environ=extra_env, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True)


def _baseline_server(workdir: Path, model_dir: Path, port: int) -> Callable[[], subprocess.Popen]:
    """A `start` for `start_server`: BASELINE_APP (written to `workdir`) under gunicorn, a sync worker a core."""
    (workdir / "baseline_app.py").write_text(BASELINE_APP)
    return lambda: subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-w", str(os.cpu_count() or 1), "-b", f"{local.HOST}:{port}",
         "--timeout", "120", "baseline_app:app"], env={**os.environ, "MODEL_DIR": str(model_dir)}, cwd=workdir,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _timed_post(session: requests.Session, port: int, payload: bytes, headers: dict[str, str] | None = None) -> float:
    """Seconds for one JPEG `POST /invocations` to the server on `port` (raises on an error status)."""
    start = time.perf_counter()
    response = session.post(f"{local.server_url(port)}/invocations", data=payload, timeout=120,
                            headers={"Content-Type": JPEG, **(headers or {})})
    response.raise_for_status()
    return time.perf_counter() - start


def _percentiles(seconds: list[float]) -> dict[str, float]:
    return {"p50_ms": 1000 * float(np.percentile(seconds, 50)), "p99_ms": 1000 * float(np.percentile(seconds, 99))}


def paired_latency(port: int, payload: bytes, limit: Limit, seconds: float, count: int) -> dict[str, float]:
    """p50/p99 of `/invocations` at concurrency 1 and p50 of the limit at batch 1, taken in turns
    (one request, one in-process pass) so that both see the same machine."""
    server, own = [], []
    with requests.Session() as session:
        for _ in range(3):
            _timed_post(session, port, payload)
        deadline = time.perf_counter() + seconds
        while len(server) < 5 or (len(server) < count and time.perf_counter() < deadline):
            server.append(_timed_post(session, port, payload))
            own.append(limit.timed())
    return {**_percentiles(server), "limit_p50_ms": 1000 * statistics.median(own)}


def explain_latency(port: int, payload: bytes, seconds: float, count: int) -> dict[str, Any]:
    """p50/p99 of `/invocations` at concurrency 1 with `explain=gradcam` and without, taken in
    turns (one of each) so that both see the same machine, and their ratios; the worker's first
    explanation (Captum imported, then Grad-CAM) apart, as `first_explanation_ms`."""
    plain, explained = [], []
    with requests.Session() as session:
        def request(headers: dict[str, str]) -> float:
            return _timed_post(session, port, payload, headers)

        first = request(EXPLAIN)
        for _ in range(3):  # warm-up
            request({})
            request(EXPLAIN)
        deadline = time.perf_counter() + seconds
        while len(plain) < 5 or (len(plain) < count and time.perf_counter() < deadline):
            plain.append(request({}))
            explained.append(request(EXPLAIN))
    figures = {"requests": len(plain), "first_explanation_ms": 1000 * first,
               "plain": _percentiles(plain), "explained": _percentiles(explained)}
    figures["ratios"] = {f"{p}_explained_over_plain": figures["explained"][f"{p}_ms"] / figures["plain"][f"{p}_ms"]
                         for p in ("p50", "p99")}
    return figures


def measure_server(port: int, payload_path: Path, seconds: float, count: int, limit: Limit,
                   explain: bool = False) -> dict[str, Any]:
    """Paired latency (`paired_latency`), with `explain` what an explanation adds
    (`explain_latency`), then the limit's throughput, then images/s at each CONCURRENCY from a
    separate load process."""
    figures: dict[str, Any] = {**paired_latency(port, payload_path.read_bytes(), limit, seconds, count),
                               "limit": limit.throughput(seconds), "images_per_second": {}, "errors": {}}
    if explain:
        figures["explain"] = explain_latency(port, payload_path.read_bytes(), seconds, count)
    for concurrency in CONCURRENCY:
        _load(port, payload_path, concurrency, 2 * concurrency, 60)  # warm-up: every worker
        result = _load(port, payload_path, concurrency, count, seconds)
        figures["images_per_second"][concurrency] = len(result["latencies"]) / result["seconds"]
        if result["errors"]:
            figures["errors"][concurrency] = result["errors"]
    figures["best_images_per_second"] = max(figures["images_per_second"].values())
    return figures


def _load(port: int, payload_path: Path, concurrency: int, count: int, seconds: float) -> dict[str, Any]:
    """`benchmarks.load` in a process of its own against the server on `port`; its result."""
    return json.loads(subprocess.run(
        [sys.executable, "-m", "image_classifier.benchmarks.load", f"{local.server_url(port)}/invocations",
         str(payload_path), "--concurrency", str(concurrency), "--count", str(count), "--seconds", str(seconds)],
        capture_output=True, text=True, check=True).stdout)


def serve_and_measure(start: Callable[[], subprocess.Popen], port: int, payload_path: Path, seconds: float,
                      count: int, limit: Limit, explain: bool = False) -> dict[str, Any]:
    """Start a server (`start_server`), measure it (`measure_server`) and its start-up, stop it."""
    server, startup = start_server(start, port)
    try:
        return {"startup_seconds": startup, **measure_server(port, payload_path, seconds, count, limit, explain)}
    finally:
        stop_server(server)


def benchmark_explanations(arch: str, workdir: Path, payload_path: Path, seconds: float,
                           count: int) -> dict[str, Any]:
    """`--explain-only`: the server with its defaults, `explain_latency` alone."""
    base_dir = workdir / arch
    write_model(arch, base_dir)
    port = local.free_port()
    server, startup = start_server(_project_server(base_dir, port, {}), port)
    try:
        return {"startup_seconds": startup, "explain": explain_latency(port, payload_path.read_bytes(), seconds, count)}
    finally:
        stop_server(server)


PRECISION_TARGETS = {"fp32": 1.25, "bf16": 2.0, "int8": 4.0}  # best img/s over TorchScript's (issue 18)
REFERENCE = "torchscript"


def reference() -> Reference | None:
    """The TorchScript server from scripts/reference/ (`benchmarks.torchscript_reference`), or None."""
    module = torchscript_reference()
    return Reference(REFERENCE_DIR, module.APP, module.load_predictor) if module else None


@dataclass(frozen=True)
class Reference:
    """The server before issue 18, kept outside the package (scripts/reference/torchscript_reference.py):
    gunicorn's `app` importable from `folder`, and `load_predictor(model_dir)` for its limit."""

    folder: Path
    app: str
    load_predictor: Callable[[Path], Any]


def default_variants() -> dict[str, dict[str, str]]:
    """The server at each precision: name → its environment on top of this process's (fp32 first: the default)."""
    return {precision: ({} if precision == "fp32" else {PRECISION_ENV: precision}) for precision in PRECISION_TARGETS}


def _reference_server(reference: Reference, base_dir: Path, port: int) -> Callable[[], subprocess.Popen]:
    """A `start` for `start_server`: the project's gunicorn config with the reference's app."""
    environ = local.child_environ(base_dir, {BIND_TO_PORT_ENV: str(port), "PYTHONPATH": os.pathsep.join(
        filter(None, [str(reference.folder), os.environ.get("PYTHONPATH")]))})
    return lambda: subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--config", "python:image_classifier.serving.gunicorn_config",
         reference.app], env=environ, cwd=reference.folder, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)


def _measure_servers(arch: str, base_dir: Path, model_dir: Path, payload_path: Path, seconds: float, count: int,
                     variants: dict[str, dict[str, str]], reference: Reference | None) -> dict[str, Any]:
    """Each variant of this project's server, then the reference, each beside its own limit."""
    from image_classifier.serving.predictor import Predictor

    result: dict[str, Any] = {"servers": [*variants, *([REFERENCE] if reference else [])]}
    for name in result["servers"]:
        port = local.free_port()
        if name == REFERENCE:
            env, start = {}, _reference_server(reference, base_dir, port)
            predictor = reference.load_predictor(model_dir)
        else:
            env, start = variants[name], _project_server(base_dir, port, variants[name])
            precision = SageMakerEnv.from_environ({**os.environ, **env}).server.precision
            predictor = Predictor.load(model_dir, precision, os.cpu_count())
        limit = Limit(predictor, payload_path.read_bytes())
        result[name] = {"env": env, **serve_and_measure(start, port, payload_path, seconds, count, limit,
                                                        explain=name == result["servers"][0])}
        print(f"{arch}: {name} measured (first 200 on /ping after {result[name]['startup_seconds']:.1f} s)",
              flush=True)
    return result


def benchmark_model(arch: str, workdir: Path, payload_path: Path, seconds: float, count: int,
                    variants: dict[str, dict[str, str]] | None = None,
                    reference: Reference | None = None) -> dict[str, Any]:
    """This server (one run per variant: name → extra environment; the first is the headline;
    default one per precision), the reference (TorchScript) and the baseline for `arch`, each
    beside its own limit."""
    variants = variants or default_variants()
    base_dir = workdir / arch
    model_dir = write_model(arch, base_dir)
    result = _measure_servers(arch, base_dir, model_dir, payload_path, seconds, count, variants, reference)

    from image_classifier.serving.predictor import Predictor

    port = local.free_port()
    result["baseline"] = serve_and_measure(_baseline_server(workdir, model_dir, port), port, payload_path, seconds,
                                           count, Limit(Predictor.load(model_dir), payload_path.read_bytes()))
    print(f"{arch}: baseline measured", flush=True)

    base = result["baseline"]
    for name in (*result["servers"], "baseline"):
        server = result[name]
        server["ratios"] = {
            "p50_over_limit_p50": server["p50_ms"] / server["limit_p50_ms"],
            "best_over_limit_best": server["best_images_per_second"] / server["limit"]["best_images_per_second"],
            "best_over_baseline_best": server["best_images_per_second"] / base["best_images_per_second"],
        }
        if reference:
            server["ratios"]["best_over_torchscript_best"] = (server["best_images_per_second"] /
                                                              result[REFERENCE]["best_images_per_second"])
    result["ratios"] = result[result["servers"][0]]["ratios"]  # the headline: the first server
    return result


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """Per model, one row per server with its ratios to its own limit measured beside it, to the
    baseline and to the TorchScript server; then each server's figures against the issue's targets."""
    rows = []
    for arch, r in results.items():
        rows.append(f"== {arch} at {IMAGE_SIZE} px, {os.cpu_count()} cores; limit = in-process decode + "
                    f"preprocess + forward through the server's runtime and precision, measured beside each server")
        rows.append(f"{'':<12} {'start s':>8} {'p50 ms':>7} {'p99 ms':>7} " +
                    " ".join(f"{'c=' + str(c) + ' img/s':>11}" for c in CONCURRENCY) +
                    f" {'best img/s':>10} | {'limit p50':>9} {'limit best':>10} | "
                    f"{'p50/limit':>9} {'best/limit':>10} {'best/baseline':>13} {'best/torchscript':>16}")
        for name in (*r["servers"], "baseline"):
            f, ratios = r[name], r[name]["ratios"]
            versus = ratios.get("best_over_torchscript_best")
            rows.append(f"{name:<12} {f['startup_seconds']:8.1f} {f['p50_ms']:7.1f} {f['p99_ms']:7.1f} " +
                        " ".join(f"{f['images_per_second'][c]:11.2f}" for c in CONCURRENCY) +
                        f" {f['best_images_per_second']:10.2f} | {f['limit_p50_ms']:9.1f} "
                        f"{f['limit']['best_images_per_second']:10.2f} | {ratios['p50_over_limit_p50']:9.2f} "
                        f"{ratios['best_over_limit_best']:10.2f} {ratios['best_over_baseline_best']:13.2f} "
                        f"{'' if versus is None else f'{versus:.2f}':>16}" +
                        (f"  errors {f['errors']}" if f["errors"] else ""))
        for name in r["servers"]:
            if name == REFERENCE:
                continue
            ratios, target = r[name]["ratios"], PRECISION_TARGETS.get(name)
            versus = ratios.get("best_over_torchscript_best")
            rows.append(f"{name}: p50 / limit p50 = {ratios['p50_over_limit_p50']:.2f} (target <= 1.10); "
                        f"best / limit best = {ratios['best_over_limit_best']:.2f} (target >= 0.90)" +
                        ("" if versus is None else f"; best / torchscript best = {versus:.2f}" +
                         ("" if target is None else f" (target >= {target})")) +
                        f"; first 200 on /ping after {r[name]['startup_seconds']:.1f} s (target < 5)")
        rows.append(format_explanations(arch, r[r["servers"][0]]["explain"]))
    return "\n".join(rows)


def image_size_bytes(image: str) -> int | None:
    """The size of container image `image` in bytes as docker or podman reports it; None where
    neither has it (not built on this machine)."""
    import shutil

    for engine in ("docker", "podman"):
        if shutil.which(engine):
            done = subprocess.run([engine, "image", "inspect", "--format", "{{.Size}}", image],
                                  capture_output=True, text=True)
            if done.returncode == 0 and done.stdout.strip().isdigit():
                return int(done.stdout.strip())
    return None


def format_explanations(arch: str, figures: dict[str, Any]) -> str:
    """What an explanation adds, as rows: plain and explained p50/p99, their ratios."""
    ratios = figures["ratios"]
    return "\n".join([
        f"== {arch}: explain=gradcam against the same request without, in turns, concurrency 1, "
        f"{figures['requests']} each",
        f"{'':<10} {'p50 ms':>7} {'p99 ms':>7}",
        *(f"{name:<10} {figures[name]['p50_ms']:7.1f} {figures[name]['p99_ms']:7.1f}"
          for name in ("plain", "explained")),
        f"explained / plain: p50 {ratios['p50_explained_over_plain']:.2f}x, "
        f"p99 {ratios['p99_explained_over_plain']:.2f}x; the worker's first explanation (imports Captum) "
        f"{figures['first_explanation_ms']:.0f} ms"])


def main(argv: list[str] | None = None) -> int:
    """The benchmark; in a checkout of the repository, with the TorchScript server
    (scripts/reference/torchscript_reference.py) and the ratios to it."""
    parser = argparse.ArgumentParser(prog="bench_serving.py", description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=models.MODEL_NAMES)
    parser.add_argument("--seconds", type=float, default=10.0, help="wall time per measurement at most")
    parser.add_argument("--count", type=int, default=400, help="requests per concurrency level at most")
    parser.add_argument("--json", type=Path, default=Path("bench_serving.json"), help="where the figures go")
    parser.add_argument("--precisions", nargs="+", default=list(PRECISION_TARGETS), choices=list(PRECISION_TARGETS),
                        help="the server at each of these (MODEL_SERVER_PRECISION); the first is the headline")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=VALUE,...",
                        help="also run the server with this environment, side by side (repeatable), e.g. "
                             "one-worker:MODEL_SERVER_WORKERS=1")
    parser.add_argument("--image", default="image-classifier-serve:latest",
                        help="the serving image whose size is reported, where docker or podman has it")
    parser.add_argument("--explain-only", action="store_true",
                        help="measure only what an explanation adds (explain=gradcam against plain requests), "
                             "e.g. --models resnet18 --count 30: about a minute")
    args = parser.parse_args(argv)
    variants = {name: default_variants()[name] for name in args.precisions}
    for spec in args.variant:
        name, _, pairs = spec.partition(":")
        variants[name] = dict(pair.split("=", 1) for pair in pairs.split(",") if pair)
    from image_classifier.demo import sample_photo

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arch in args.models:
            if args.explain_only:
                results[arch] = benchmark_explanations(arch, Path(tmp), sample_photo(), args.seconds, args.count)
            else:
                results[arch] = benchmark_model(arch, Path(tmp), sample_photo(), args.seconds, args.count, variants,
                                                reference())
    if args.explain_only:
        print("\n".join(format_explanations(arch, r["explain"]) for arch, r in results.items()))
    else:
        print(format_table(results))
    size = image_size_bytes(args.image)
    print(f"serving image {args.image}: " + (f"{size / 1e9:.2f} GB" if size else "not built here"))
    args.json.write_text(json.dumps({"cpus": os.cpu_count(), "image_size": IMAGE_SIZE, "serving_image_bytes": size,
                                     "results": results}, indent=2, default=str))
    print(f"figures written to {args.json}")
    return 0
