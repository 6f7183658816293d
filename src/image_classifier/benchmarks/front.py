"""What nginx in front of gunicorn costs a request: the server with it and without it, in one run.

Two servers on one small model (resnet18, random weights, 10 classes, `--image-size` px), each
with one worker: `python -m image_classifier.serve` as it runs (nginx in front), and the same
with nginx off PATH (gunicorn alone on the port). At concurrency 1, on keep-alive connections,
requests go to one and then the other in turns, which goes first alternating (this machine's
speed drifts over minutes, so the two are measured side by side): `GET /ping` (the proxy
alone) and `POST /invocations` of a real photo (scikit-learn's china.jpg). Prints p50/p99 of
each, the difference in milliseconds and the ratio with/without nginx, then the same as JSON.
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
from pathlib import Path

import requests

from image_classifier import artifacts, local, models
from image_classifier.serving import front
from image_classifier.transforms import IMAGENET_MEAN, IMAGENET_STD, resize_size

ARCH = "resnet18"
NUM_CLASSES = 10
WARM_UP = 20            # requests to each server before the timed ones


def write_model(model_dir: Path, image_size: int) -> None:
    import torch

    torch.manual_seed(0)
    model = models.create_model(ARCH, NUM_CLASSES)
    spec = artifacts.ModelSpec(arch=ARCH, num_classes=NUM_CLASSES, class_names=[str(i) for i in range(NUM_CLASSES)],
                               labels=[str(i) for i in range(NUM_CLASSES)], image_size=image_size,
                               resize_size=resize_size(image_size), mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))
    artifacts.save_model(model_dir, model.state_dict(), spec)


def without_nginx_path() -> str:
    """PATH without the folders that hold nginx: the server then runs gunicorn alone."""
    return os.pathsep.join(d for d in os.environ["PATH"].split(os.pathsep) if not Path(d, front.NGINX).exists())


def timed(session: requests.Session, method: str, url: str, body: bytes | None) -> float:
    started = time.perf_counter()
    response = session.request(method, url, data=body, timeout=60,
                               headers={"Content-Type": "image/jpeg"} if body is not None else None)
    seconds = time.perf_counter() - started
    assert response.status_code == 200, response.text
    return seconds


def in_turns(urls: dict[str, str], method: str, path: str, body: bytes | None, count: int) -> dict[str, list[float]]:
    """`count` requests to each server, one to each in turn (which goes first alternates), each server
    on its own keep-alive session."""
    sessions = {name: requests.Session() for name in urls}
    for name, url in urls.items():
        for _ in range(WARM_UP):
            timed(sessions[name], method, url + path, body)
    seconds: dict[str, list[float]] = {name: [] for name in urls}
    order = list(urls)
    for _ in range(count):
        for name in order:
            seconds[name].append(timed(sessions[name], method, urls[name] + path, body))
        order.reverse()
    return seconds


def summary(seconds: dict[str, list[float]]) -> dict[str, float]:
    ms = {name: {"p50": statistics.median(values) * 1000,
                 "p99": statistics.quantiles(values, n=100)[98] * 1000} for name, values in seconds.items()}
    return {"nginx_p50_ms": ms["nginx"]["p50"], "gunicorn_p50_ms": ms["gunicorn"]["p50"],
            "nginx_p99_ms": ms["nginx"]["p99"], "gunicorn_p99_ms": ms["gunicorn"]["p99"],
            "added_p50_ms": ms["nginx"]["p50"] - ms["gunicorn"]["p50"],
            "ratio_p50": ms["nginx"]["p50"] / ms["gunicorn"]["p50"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=300, help="timed requests to each server, per route")
    parser.add_argument("--image-size", type=int, default=64, help="the model's input side, pixels")
    args = parser.parse_args(argv)
    if front.find_nginx() is None:
        parser.error("nginx is not on PATH: install it (apt-get install nginx)")
    import sklearn.datasets  # scikit-learn ships the photo

    photo = (Path(sklearn.datasets.__file__).parent / "images" / "china.jpg").read_bytes()
    servers: dict[str, subprocess.Popen] = {}
    with tempfile.TemporaryDirectory() as folder:
        base_dir = Path(folder)
        write_model(base_dir / "model", args.image_size)
        urls = {}
        try:
            for name, env in (("nginx", {}), ("gunicorn", {"PATH": without_nginx_path()})):
                port = local.free_port()
                servers[name] = local.start_server(base_dir, port, 1, env, stdout=subprocess.DEVNULL,
                                                   stderr=subprocess.DEVNULL)
                urls[name] = local.server_url(port)
            for name, url in urls.items():
                local.wait_for_ping(url, servers[name])
            results = {"ping": summary(in_turns(urls, "GET", "/ping", None, args.count)),
                       "invocations": summary(in_turns(urls, "POST", "/invocations", photo, args.count))}
        finally:
            for server in servers.values():
                local.stop(server)
    print(f"{ARCH} at {args.image_size} px, concurrency 1, {args.count} requests each, in turns")
    print(f"{'route':<12} {'nginx p50':>10} {'alone p50':>10} {'nginx p99':>10} {'alone p99':>10} "
          f"{'added p50':>10} {'ratio':>6}")
    for route, r in results.items():
        print(f"{route:<12} {r['nginx_p50_ms']:>8.3f}ms {r['gunicorn_p50_ms']:>8.3f}ms {r['nginx_p99_ms']:>8.3f}ms "
              f"{r['gunicorn_p99_ms']:>8.3f}ms {r['added_p50_ms']:>8.3f}ms {r['ratio_p50']:>6.3f}")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
