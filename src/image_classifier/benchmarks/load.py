"""A load generator for `/invocations`, run as its own process: `python -m image_classifier.benchmarks.load`.

`concurrency` client threads, each with its own keep-alive connection, post the same payload
until `count` requests are done or `seconds` have passed; prints one JSON object: the
latency of every successful request (seconds), the status codes of the others, the elapsed
wall time. Loopback only: the URL must be on 127.0.0.1 or localhost.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import requests

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def run(url: str, payload: bytes, content_type: str, concurrency: int, count: int, seconds: float) -> dict:
    """Send the load; returns {"latencies": [...], "errors": {status: n}, "seconds": elapsed}.

    Raises:
        ValueError: `url` is not on the loopback interface.
    """
    if urlparse(url).hostname not in LOOPBACK:
        raise ValueError(f"the load generator only targets loopback, not {url}")
    latencies: list[float] = []
    errors: dict[str, int] = {}
    lock = threading.Lock()
    issued = [0]
    deadline = time.perf_counter() + seconds

    def client() -> None:
        with requests.Session() as session:
            while time.perf_counter() < deadline:
                with lock:
                    if issued[0] >= count:
                        return
                    issued[0] += 1
                start = time.perf_counter()
                try:
                    response = session.post(url, data=payload, headers={"Content-Type": content_type}, timeout=120)
                    status = str(response.status_code)
                except requests.RequestException as exc:
                    status = type(exc).__name__
                elapsed = time.perf_counter() - start
                with lock:
                    if status == "200":
                        latencies.append(elapsed)
                    else:
                        errors[status] = errors.get(status, 0) + 1

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return {"latencies": latencies, "errors": errors, "seconds": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("payload", type=Path)
    parser.add_argument("--content-type", default="image/jpeg")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--count", type=int, default=100, help="requests at most")
    parser.add_argument("--seconds", type=float, default=10.0, help="wall time at most")
    args = parser.parse_args(argv)
    result = run(args.url, args.payload.read_bytes(), args.content_type, args.concurrency, args.count, args.seconds)
    json.dump(result, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
