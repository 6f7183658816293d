"""gunicorn settings for the model server, from the SageMaker environment (read by `serve`).

| variable | default | meaning |
| --- | --- | --- |
| SAGEMAKER_BIND_TO_PORT | 8080 | port to listen on, all interfaces |
| MODEL_SERVER_WORKERS | 1 | worker processes, each with its own copy of the model (see SageMakerEnv) |
| MODEL_SERVER_TIMEOUT | 60 | seconds a request may take before its worker is restarted |
| SAGEMAKER_MAX_PAYLOAD_IN_MB | 6 | largest request body (read by the app) |
| MODEL_SERVER_MAX_IMAGE_PIXELS | Pillow's | decompression-bomb limit per image |
| MODEL_SERVER_TORCHSCRIPT | true | serve the model frozen and optimised with TorchScript (read by the app) |
| MODEL_SERVER_THREADS | 8 | request threads per worker (gthread): requests read and decoded at once |
| MODEL_SERVER_MAX_BATCH | 16 | images one forward pass takes from the waiting requests (read by the app) |

Each worker's torch uses every core: the server's forward passes take turns (serving/batcher.py,
serving/shared.py), so they never fight over the cores, and concurrent requests share a
batched forward pass. A slow client holds one thread, not a worker.
"""

import os

from image_classifier.sagemaker_env import SageMakerEnv
from image_classifier.serving import shared

_env = SageMakerEnv.from_environ()

bind = f"0.0.0.0:{_env.port}"
workers = _env.model_server_workers
timeout = _env.model_server_timeout
# SageMaker sends SIGTERM and waits 30 s before SIGKILL: finish in-flight requests within that.
graceful_timeout = 25
worker_class = "gthread"  # threads per worker: requests decode in parallel and batch together
threads = _env.model_server_threads
accesslog = "-"
errorlog = "-"
loglevel = "info"
control_socket_disable = True  # gunicorn 27's admin socket: unused here, and it needs a writable $HOME


PILLOW_BLOCK_SIZE = 64 * 2**20


def on_starting(server):
    """The run directory this server's workers share (serving/shared.py): forward lock, ready flag."""
    os.environ[shared.RUN_DIR_ENV] = shared.new_run_dir()


def on_exit(server):
    shared.remove_run_dir(os.environ[shared.RUN_DIR_ENV])


def pre_request(worker, req):
    """A body declared over the payload limit is answered 413 unread: close the connection after
    it, saying so (`Connection: close`). gunicorn drains at most 64 kB of an unread body and
    otherwise closes a keep-alive connection silently, so the client's next request on it failed
    ("Remote end closed connection without response": found by tests/serving/test_load.py)."""
    length = next((value for name, value in req.headers if name == "CONTENT-LENGTH"), "")
    if length.strip().isdigit() and int(length) > _env.max_payload_bytes:
        req.force_close()


def post_fork(server, worker):
    """Every core for each worker's forward passes (they take turns): torch, imported later by
    the model loader, reads OMP_NUM_THREADS. Pillow's limit and block size for this worker."""
    from PIL import Image

    threads = os.cpu_count() or 1
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if _env.max_image_pixels:
        # Pillow refuses images over twice its own limit on open, before the app's check:
        # make its limit the configured one so that a larger limit works too.
        Image.MAX_IMAGE_PIXELS = _env.max_image_pixels
    # Pillow allocates pixels in blocks of 16 MB: glibc serves those from its heaps and keeps
    # them after a large image, so a worker's memory stayed at its largest image's high-water
    # mark (+235 MB after 50-megapixel PNGs in tests/serving/test_load.py). Blocks of 64 MB are
    # over glibc's largest mmap threshold (32 MB): a large image's memory goes back when freed.
    Image.core.set_block_size(PILLOW_BLOCK_SIZE)
    server.log.info("worker %s: %d torch thread(s)", worker.pid, threads)
