"""Load and faults against a real gunicorn server on loopback (issue 6).

- thousands of requests at concurrency 8 mixing valid images with every kind of bad input:
  no 5xx, no dropped connection, every valid answer right, worker memory flat after warm-up;
- a worker killed with SIGKILL under load: replaced, `/ping` stays 200, only the requests it
  had in flight fail;
- clients that send their bodies slowly do not stall the others;
- SIGTERM lets the requests in flight finish, then the server exits within SageMaker's 30 s.
"""

from __future__ import annotations

import collections
import os
import random
import re
import shutil
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import requests

from image_classifier.serving.predictor import Predictor
from tests.serving.images import (
    big_png,
    china_jpeg,
    instances,
    invocation_headers,
    load_npy,
    npy,
    random_batch,
    truncated_jpeg,
    variants,
)
from tests.serving.servers import Server, children, start, stop, wait_for_answer

pytestmark = pytest.mark.slow

WORKERS = 2
CONCURRENCY = 8
LOAD_REQUESTS = 2400
DEFAULT_MAX_PAYLOAD = 6_000_000  # SageMaker's 6 MB, the server's default
# Growth allowed to each worker's resident memory between the end of warm-up and the end of the
# load. A leak of one decoded 640x427 photo per request (0.8 MB) would grow it by over 1 GB.
RSS_GROWTH_LIMIT = 48 * 2**20
NPY = "application/x-npy"


@dataclass(frozen=True)
class Kind:
    """One kind of request of the mix: its body, headers and the status it must get."""

    name: str
    body: bytes
    content_type: str | None
    status: int
    count: int          # how many of LOAD_REQUESTS (the rest are split among the valid kinds)


def bad_kinds() -> list[Kind]:
    rng = np.random.default_rng(6)
    return [
        Kind("garbage", rng.integers(0, 256, 20_000, dtype=np.uint8).tobytes(), "image/jpeg", 400, 120),
        Kind("truncated-jpeg", truncated_jpeg(), "image/jpeg", 400, 120),
        # 50 megapixels, under Pillow's 89.5-million limit: decoded and answered, a few of them
        Kind("50-megapixel-png", big_png(10_000, 5_000), "image/png", 200, 6),
        Kind("wrong-content-type", china_jpeg(), "text/csv", 415, 120),
        Kind("no-content-type", china_jpeg(), None, 415, 60),
        Kind("npy-wrong-shape", npy(np.zeros((4, 32, 32), np.float32)), NPY, 400, 120),
        Kind("npy-pickled", npy(np.array([{"x": 1}], dtype=object), allow_pickle=True), NPY, 400, 120),
        Kind("empty", b"", "image/jpeg", 400, 120),
        Kind("oversized", b"\0" * (DEFAULT_MAX_PAYLOAD + 1), NPY, 413, 40),
    ]


VALID = {  # name → (body, content type); answered as probabilities (npy) to compare with the model's
    "jpeg": (china_jpeg(), "image/jpeg"),
    "png": (variants()["png-rgb"], "image/png"),
    "webp": (variants()["webp"], "application/x-image"),
    "npy-batch": (npy(random_batch(3, seed=1)), NPY),
    "json-instances": (instances(variants()["jpeg"], variants()["gif"]), "application/json"),
}


@pytest.fixture(scope="module", params=["fp32", "int8"])
def precision(request) -> str:
    """The server's MODEL_SERVER_PRECISION: the default, and int8 from the training job's file."""
    return request.param


@pytest.fixture(scope="module")
def expected(model_dir, precision) -> dict[str, np.ndarray]:
    """The valid kinds' probabilities from the model in this process at `precision`, one request at a time."""
    from image_classifier.serving import codec

    predictor = Predictor.load(model_dir, precision)
    return {name: predictor.predict(codec.decode(body, content_type, None))
            for name, (body, content_type) in VALID.items()}


def schedule(total: int, seed: int) -> list[Kind | str]:
    """`total` requests in a shuffled order: every bad kind its count (scaled), valid kinds the rest."""
    scale = total / LOAD_REQUESTS
    mix: list[Kind | str] = []
    for kind in bad_kinds():
        mix += [kind] * max(1, round(kind.count * scale))
    mix += [list(VALID)[i % len(VALID)] for i in range(total - len(mix))]
    random.Random(seed).shuffle(mix)
    return mix


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


class Outcomes:
    """What the clients saw: (name, status or exception name) counts, and the wrong answers."""

    def __init__(self):
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()
        self.wrong: list[str] = []
        self._lock = threading.Lock()

    def add(self, name: str, status: str, wrong: str | None = None) -> None:
        with self._lock:
            self.counts[(name, status)] += 1
            if wrong:
                self.wrong.append(wrong)


def send(server: Server, requests_: list[Kind | str], expected: dict[str, np.ndarray]) -> Outcomes:
    """Send `requests_` at CONCURRENCY, each client thread on its own keep-alive connection."""
    outcomes, local = Outcomes(), threading.local()

    def one(item: Kind | str) -> None:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        name = item if isinstance(item, str) else item.name
        body, content_type = VALID[item] if isinstance(item, str) else (item.body, item.content_type)
        try:
            response = local.session.post(f"{server.url}/invocations", data=body, timeout=60,
                                          headers=invocation_headers(content_type, NPY))
        except requests.RequestException as exc:
            outcomes.add(name, type(exc).__name__, f"{name}: {exc}")
            return
        wrong = None
        if isinstance(item, str):
            if response.status_code != 200:
                wrong = f"{name}: {response.status_code} {response.text[:200]}"
            elif not np.allclose(load_npy(response.content), expected[name], rtol=1e-4, atol=1e-6):
                wrong = f"{name}: probabilities differ from the model's"
        elif response.status_code != item.status:
            wrong = f"{name}: {response.status_code} instead of {item.status}: {response.text[:200]}"
        elif item.status != 200 and (list(response.json()) != ["error"] or "Traceback" in response.text):
            wrong = f"{name}: error body {response.text[:200]}"
        outcomes.add(name, str(response.status_code), wrong)

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(one, requests_))
    return outcomes


def start_server(model_dir: Path, base_dir: Path, workers: int = WORKERS, **env) -> Server:
    shutil.copytree(model_dir, base_dir / "model")
    process, url, log = start(base_dir, workers, **env)
    return Server(url, process, log, wait_for_answer(url, process, log, want=200, workers=workers))


@pytest.fixture(scope="module")
def server(model_dir, precision, tmp_path_factory):
    server = start_server(model_dir, tmp_path_factory.mktemp("opt_ml_load"), MODEL_SERVER_PRECISION=precision)
    try:
        yield server
    finally:
        if server.process.poll() is None:
            stop(server.process)


def every_worker_decodes(server: Server, kind: Kind, tries: int = 30, burst: int = 2 * WORKERS) -> None:
    """Send `kind` in bursts of `burst` at once, each on a fresh connection, until each worker has
    answered one, told by the access log.

    A worker's memory rises once, by about 190 MB, with its first 50-megapixel image and stays
    there (measured: flat over the next 20): a high-water mark, not a leak. The shuffled warm-up
    alone can leave one worker without such an image, and its first one then counted as growth.
    The requests go in bursts because which worker accepts a connection is the kernel's choice:
    one at a time, the same idle worker may win every accept (CI saw 60 in a row); while it is
    busy with one of a burst, another accepts the next.
    """
    def one(tag: str) -> None:
        response = requests.post(f"{server.url}/invocations?warm-up={tag}", data=kind.body, timeout=60,
                                 headers={**invocation_headers(kind.content_type, NPY), "Connection": "close"})
        assert response.status_code == kind.status, response.text[:200]

    served: set[int] = set()
    with ThreadPoolExecutor(burst) as pool:
        for i in range(tries):
            tags = [f"{i}-{j}" for j in range(burst)]
            list(pool.map(one, tags))
            for tag in tags:
                deadline = time.monotonic() + 10
                while not (pids := re.findall(rf'pid=<(\d+)> "POST /invocations\?warm-up={tag} ', server.log_text())):
                    assert time.monotonic() < deadline, f"request warm-up={tag} is not in the access log"
                    time.sleep(0.05)
                served.add(int(pids[0]))
            if served == server.workers:
                print(f"every worker decoded a {kind.name} after {i + 1} burst(s) of {burst}")
                return
    raise AssertionError(f"after {tries} bursts of {burst} only workers {served} of {server.workers} got one")


def test_mixed_load_no_5xx_no_drop_right_answers_no_leak(server, expected):
    every_worker_decodes(server, next(kind for kind in bad_kinds() if kind.name == "50-megapixel-png"))
    warm_up = send(server, schedule(LOAD_REQUESTS, seed=1), expected)  # the same mix: its high-water marks
    rss_after_warm_up = {pid: rss_bytes(pid) for pid in server.workers}
    load = send(server, schedule(LOAD_REQUESTS, seed=2), expected)
    rss_after_load = {pid: rss_bytes(pid) for pid in children(server.process.pid)}
    for outcomes in (warm_up, load):
        dropped = {key: n for key, n in outcomes.counts.items() if not key[1].isdigit()}
        assert not dropped, f"dropped connections: {dropped}: {outcomes.wrong}"
        assert not {key: n for key, n in outcomes.counts.items() if key[1].startswith("5")}, outcomes.counts
        assert outcomes.wrong == [], outcomes.wrong[:10]
    assert sum(load.counts.values()) == LOAD_REQUESTS
    assert {name for name, _ in load.counts} == set(VALID) | {kind.name for kind in bad_kinds()}
    assert set(rss_after_load) == server.workers, "a worker died or was replaced under load"
    growth = {pid: rss_after_load[pid] - rss_after_warm_up[pid] for pid in server.workers}
    print(f"worker resident memory after warm-up {rss_after_warm_up}, growth over {LOAD_REQUESTS} "
          f"requests {growth} bytes")
    assert max(growth.values()) < RSS_GROWTH_LIMIT, growth


def raw_request_head(url: str, length: int, content_type: str = "image/jpeg") -> bytes:
    host = urlparse(url).netloc
    return (f"POST /invocations HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
            f"Accept: {NPY}\r\nContent-Length: {length}\r\n\r\n").encode()


class SlowClient:
    """Sends a request's head and half its body, then the rest when `finish` is called."""

    def __init__(self, url: str, body: bytes):
        parsed = urlparse(url)
        self.body = body
        self.sock = socket.create_connection((parsed.hostname, parsed.port), timeout=60)
        self.sock.sendall(raw_request_head(url, len(body)) + body[: len(body) // 2])

    def finish(self) -> tuple[int, bytes]:
        """Send the rest; returns the status and the body of the response."""
        self.sock.sendall(self.body[len(self.body) // 2:])
        response = b""
        while b"\r\n\r\n" not in response or len(response.split(b"\r\n\r\n", 1)[1]) < self._length(response):
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            response += chunk
        self.sock.close()
        assert response, "the server closed the connection without answering"
        head, _, content = response.partition(b"\r\n\r\n")
        return int(head.split()[1]), content

    @staticmethod
    def _length(response: bytes) -> int:
        for line in response.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                return int(value)
        return 0


def test_slow_clients_do_not_stall_the_others(server, expected):
    """Three clients stop halfway through their bodies; meanwhile 200 requests at concurrency 8
    are all answered (each within the client's timeout), then the slow ones get their answer."""
    slow = [SlowClient(server.url, china_jpeg()) for _ in range(3)]
    time.sleep(0.5)  # their heads and half bodies reached the workers
    others = send(server, ["jpeg", "png", "npy-batch", "json-instances"] * 50, expected)
    assert others.wrong == [] and {status for _, status in others.counts} == {"200"}, others.counts
    for client in slow:
        status, content = client.finish()
        assert status == 200
        np.testing.assert_allclose(load_npy(content), expected["jpeg"], rtol=1e-4, atol=1e-6)


def test_sigterm_drains_requests_in_flight_and_exits_within_30_s(server, expected):
    """Run last on the module's server: requests in flight when SIGTERM arrives are answered."""
    in_flight = [SlowClient(server.url, china_jpeg()) for _ in range(4)]
    time.sleep(0.5)
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    time.sleep(1)  # the master has told its workers to stop
    for client in in_flight:
        status, content = client.finish()
        assert status == 200
        np.testing.assert_allclose(load_npy(content), expected["jpeg"], rtol=1e-4, atol=1e-6)
    server.process.wait(timeout=30)
    assert time.monotonic() - started < 30
    assert server.process.returncode == 0, server.log_text()[-3000:]


@pytest.mark.parametrize("workers, precision", [(WORKERS, "fp32"), (1, "int8")])
def test_sigkill_of_a_worker_under_load(model_dir, tmp_path, workers, precision):
    """Under load at concurrency 8 (a new connection per request), one worker is SIGKILLed:
    only requests it had in flight fail, `/ping` answers 200 all along, a new worker takes over.
    With one worker (the default), requests and pings wait in the listen queue for its
    replacement, which answers `/ping` at once and `/invocations` once its model is loaded."""
    server = start_server(model_dir, tmp_path, workers, MODEL_SERVER_PRECISION=precision)
    pings: list[tuple[float, float, str]] = []  # (start, end, status or exception name)
    finished: list[tuple[float, float, str]] = []  # (start, end, status or exception name)
    stopping = threading.Event()
    lock = threading.Lock()

    def pinger() -> None:
        while not stopping.is_set():
            began = time.monotonic()
            try:
                status = str(requests.get(f"{server.url}/ping", timeout=10,
                                          headers={"Connection": "close"}).status_code)
            except requests.RequestException as exc:
                status = type(exc).__name__
            pings.append((began, time.monotonic(), status))
            time.sleep(0.05)

    def client(seed: int) -> None:
        rng = random.Random(seed)
        while not stopping.is_set():
            name = rng.choice(["jpeg", "png", "npy-batch"])
            body, content_type = VALID[name]
            began = time.monotonic()
            try:
                status = str(requests.post(f"{server.url}/invocations", data=body, timeout=60,
                                           headers={**invocation_headers(content_type, NPY),
                                                    "Connection": "close"}).status_code)
            except requests.RequestException as exc:
                status = type(exc).__name__
            with lock:
                finished.append((began, time.monotonic(), status))

    threads = [threading.Thread(target=pinger)] + [threading.Thread(target=client, args=(i,))
                                                   for i in range(CONCURRENCY)]
    try:
        for thread in threads:
            thread.start()
        time.sleep(3)
        victim = min(server.workers)
        killed_at = time.monotonic()
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 120
        while True:  # until the replacement has loaded its model and answered a request
            live = children(server.process.pid)
            new = live - server.workers
            if new and f"pid=<{next(iter(new))}> \"POST /invocations HTTP/1.1\" 200" in server.log_text():
                break
            assert time.monotonic() < deadline, server.log_text()[-3000:]
            time.sleep(0.2)
        time.sleep(2)
    finally:
        stopping.set()
        for thread in threads:
            thread.join(90)
        stop(server.process)
    assert len(live) == workers and victim not in live
    failed = [(began, ended, status) for began, ended, status in finished if status != "200"]
    assert all(began <= killed_at <= ended for began, ended, _ in failed), failed
    assert len(failed) <= CONCURRENCY
    after = [status for began, _, status in finished if began > killed_at]
    print(f"{len(finished)} requests, {len(failed)} failed (in flight on the killed worker), "
          f"{len(after)} after the kill; {len(pings)} pings: {collections.Counter(p[2] for p in pings)}")
    assert len(after) > 50 and set(after) == {"200"}
    # a ping the killed worker had accepted fails with it, as its requests do; every other is 200
    failed_pings = [(began, ended, status) for began, ended, status in pings if status != "200"]
    assert all(began <= killed_at <= ended for began, ended, _ in failed_pings), failed_pings
    assert len(failed_pings) <= 1 and len(pings) - len(failed_pings) > 20
