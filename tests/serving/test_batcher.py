"""Dynamic batching: concurrent requests share a forward pass, each gets its own rows; the server-wide lock."""

import contextlib
import gc
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from image_classifier.serving.batcher import Batcher
from image_classifier.serving.shared import ForwardLock, RunDir


def identify(batch: np.ndarray) -> np.ndarray:
    """(N, 1): each row's first value, so a request can check it got its own rows."""
    return batch[:, :1, 0, 0].copy()


def rows(value: float, n: int = 1, side: int = 4) -> np.ndarray:
    return np.full((n, 3, side, side), value, np.float32)


class Gate:
    """Where the forward passes wait, as `threading.Event` does, until `set()`; `entered` tells
    that one is waiting there."""

    def __init__(self):
        self.entered, self._open = threading.Event(), threading.Event()

    def wait(self, timeout: float) -> bool:
        self.entered.set()
        return self._open.wait(timeout)

    def set(self) -> None:
        self._open.set()


def wait_until_waiting(batcher: Batcher, n: int, timeout: float = 10.0) -> None:
    """Return once `n` requests wait in `batcher`'s queue (a bounded wait: fail after `timeout` s)."""
    deadline = time.monotonic() + timeout
    while batcher.waiting != n:
        assert time.monotonic() < deadline, f"{batcher.waiting} requests waiting after {timeout} s, not {n}"
        time.sleep(0.001)


def first_then_queued(batcher: Batcher, threads: list[threading.Thread], gate: Gate) -> None:
    """Start the first thread, whose forward pass blocks on `gate`, then the others (they queue
    behind it), open the gate and wait for all."""
    threads[0].start()
    assert gate.entered.wait(10)  # the first request's forward is running
    for thread in threads[1:]:
        thread.start()
    wait_until_waiting(batcher, len(threads) - 1)
    gate.set()
    for thread in threads:
        thread.join(10)


@pytest.fixture
def lock(tmp_path):
    return ForwardLock(tmp_path / "forward.lock")


def test_a_lone_request_is_not_kept_waiting(lock):
    batcher = Batcher(identify, lock=lock)
    started = time.monotonic()
    assert batcher.predict(rows(7.0)).tolist() == [[7.0]]
    assert time.monotonic() - started < 1 and batcher.batches == 1


def test_concurrent_requests_share_forward_passes_and_get_their_own_rows(lock):
    gate = Gate()
    sizes = []

    def slow(batch):
        sizes.append(batch.shape[0])
        gate.wait(10)
        return identify(batch)

    batcher = Batcher(slow, max_images=16, lock=lock)
    results = {}

    def client(i):
        results[i] = batcher.predict(rows(float(i), n=2))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    first_then_queued(batcher, threads, gate)
    assert {i: r.ravel().tolist() for i, r in results.items()} == {i: [float(i)] * 2 for i in range(6)}
    assert sizes == [2, 10]  # the five waiting requests (10 images) in one forward pass


def test_max_images_and_sizes_split_batches(lock):
    gate = Gate()
    sizes = []

    def slow(batch):
        sizes.append(tuple(batch.shape))
        gate.wait(10)
        return identify(batch)

    batcher = Batcher(slow, max_images=4, lock=lock)
    bodies = [rows(0.0), rows(1.0, 3), rows(2.0, 3), rows(3.0, 1, side=8)]
    threads = [threading.Thread(target=batcher.predict, args=(b,)) for b in bodies]
    first_then_queued(batcher, threads, gate)
    assert sizes[0] == (1, 3, 4, 4)
    assert sorted(sizes[1:]) == [(1, 3, 8, 8), (3, 3, 4, 4), (3, 3, 4, 4)]  # never over 4, never mixed sizes


def test_a_failed_forward_fails_its_requests_and_the_batcher_goes_on(lock):
    calls = []

    def flaky(batch):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return identify(batch)

    batcher = Batcher(flaky, lock=lock)
    with pytest.raises(RuntimeError, match="boom"):
        batcher.predict(rows(1.0))
    assert batcher.predict(rows(2.0)).tolist() == [[2.0]]


def test_preparing_runs_in_the_batcher_thread_and_a_bad_input_fails_alone(lock):
    """Preprocessing happens in the thread of the forward pass (one OpenMP team per worker);
    an input that fails to preprocess fails its own request, not the others of its batch."""
    gate, threads_seen = Gate(), set()

    def prepare(item):
        threads_seen.add(threading.current_thread().name)
        if item == "bad":
            raise ValueError("cannot preprocess")
        return rows(float(item))

    def slow(batch):
        threads_seen.add(threading.current_thread().name)
        gate.wait(10)
        return identify(batch)

    batcher = Batcher(slow, prepare, lock=lock)
    results = {}

    def client(item):
        try:
            results[item] = batcher.predict(item).ravel().tolist()
        except ValueError as exc:
            results[item] = str(exc)

    clients = [threading.Thread(target=client, args=(item,)) for item in ("1", "2", "bad", "3")]
    first_then_queued(batcher, clients, gate)
    assert results == {"1": [1.0], "2": [2.0], "bad": "cannot preprocess", "3": [3.0]}
    assert threads_seen == {"batcher"} and batcher.batches == 2


class RecordingLock:
    """A lock that records whether it is held: what `Batcher` calls of a `ForwardLock`."""

    def __init__(self):
        self.holding = False

    @contextlib.contextmanager
    def held(self):
        self.holding = True
        try:
            yield
        finally:
            self.holding = False


def test_a_task_runs_alone_in_the_batcher_thread_holding_the_lock_between_batches():
    """`Batcher.run`: the task waits its turn in the queue, runs by itself (the requests before it
    in one batch, those after in the next), in the batcher's thread, with the lock held."""
    gate, events, lock = Gate(), [], RecordingLock()

    def slow(batch):
        events.append(("forward", identify(batch).ravel().tolist()))
        gate.wait(10)
        return identify(batch)

    def task():
        events.append(("task", threading.current_thread().name, lock.holding))
        return "done"

    batcher = Batcher(slow, lock=lock)
    results = {}
    calls = [lambda: batcher.predict(rows(0.0)), lambda: batcher.predict(rows(1.0)),
             lambda: batcher.predict(rows(2.0)), lambda: batcher.run(task),
             lambda: batcher.predict(rows(3.0)), lambda: batcher.predict(rows(4.0))]
    threads = [threading.Thread(target=lambda i=i, call=call: results.__setitem__(i, call()))
               for i, call in enumerate(calls)]
    threads[0].start()
    assert gate.entered.wait(10)
    for queued, thread in enumerate(threads[1:], 1):  # queued in this order behind the first forward pass
        thread.start()
        wait_until_waiting(batcher, queued)
    gate.set()
    for thread in threads:
        thread.join(10)
    assert events == [("forward", [0.0]), ("forward", [1.0, 2.0]), ("task", "batcher", True),
                      ("forward", [3.0, 4.0])]
    assert results[3] == "done" and [results[i].ravel().tolist() for i in (0, 1, 2, 4, 5)] == [[0.0], [1.0], [2.0],
                                                                                                [3.0], [4.0]]


def test_a_failed_task_raises_in_its_caller_and_the_batcher_goes_on(lock):
    batcher = Batcher(identify, lock=lock)

    def bad():
        raise ValueError("no such class")

    with pytest.raises(ValueError, match="no such class"):
        batcher.run(bad)
    assert batcher.run(lambda: 42) == 42
    assert batcher.predict(rows(5.0)).tolist() == [[5.0]]


HOLD = """
import sys, time
from pathlib import Path
from image_classifier.serving.shared import ForwardLock
with ForwardLock(Path(sys.argv[1])).held():
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def test_the_lock_is_shared_by_processes_and_freed_when_its_holder_dies(tmp_path):
    path = tmp_path / "forward.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path), "60"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    acquired = threading.Event()

    def take():
        with ForwardLock(path).held():
            acquired.set()

    threading.Thread(target=take, daemon=True).start()
    assert not acquired.wait(0.5)  # another process holds it
    os.kill(holder.pid, signal.SIGKILL)  # a worker killed mid-forward
    holder.wait()
    assert acquired.wait(5)


def test_run_dir_of_its_own_is_removed_and_a_removed_one_is_made_again(tmp_path):
    run_dir = RunDir()
    path = run_dir.path
    assert path.is_dir() and not run_dir.ready
    del run_dir
    gc.collect()
    assert not path.exists()  # an in-process app's directory does not outlive it
    shared_dir = RunDir(tmp_path / "server")  # as gunicorn's master names it: kept
    with shared_dir.lock().held():  # made again if something removed it
        shared_dir.mark_ready()
    assert shared_dir.ready
