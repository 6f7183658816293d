"""gunicorn settings for the model server, from the SageMaker environment (read by `serve`).

The settings are environment variables, typed and checked by `sagemaker_env.ServerSettings`
(their defaults, ranges and units: docs/reference/environment.md): a bad value stops the server
at start with a message that names the variable.

Each worker's torch uses every core: the server's forward passes take turns (serving/batcher.py,
serving/shared.py), so they never fight over the cores, and concurrent requests share a
batched forward pass.

Behind nginx (serving/front.py, the default) `serve` binds gunicorn to a unix socket instead
of the port (`--bind`) and gunicorn sees only whole requests. Without nginx a
slow client holds one request thread; the 413 bounds here (`pre_request`, parser.discard_body)
are then the only line.
"""

import os

from image_classifier.sagemaker_env import SageMakerEnv
from image_classifier.serving import shared

_settings = SageMakerEnv.from_environ().server

bind = f"0.0.0.0:{_settings.port}"  # gunicorn alone; behind nginx, serve passes a unix socket
workers = _settings.model_server_workers
timeout = _settings.model_server_timeout
# SageMaker sends SIGTERM and waits 30 s before SIGKILL: finish in-flight requests within that.
graceful_timeout = 25
worker_class = "gthread"  # threads per worker: requests decode in parallel and batch together
threads = _settings.model_server_threads
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
    if length.strip().isdigit() and int(length) > _settings.max_payload_bytes:
        req.force_close()


def post_fork(server, worker):
    """Every core for each worker's forward passes (they take turns): torch, imported later by
    the model loader, reads OMP_NUM_THREADS. Pillow's limit and block size for this worker."""
    from PIL import Image

    threads = os.cpu_count() or 1
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if _settings.max_image_pixels:
        # Pillow refuses images over twice its own limit on open, before the app's check:
        # make its limit the configured one so that a larger limit works too.
        Image.MAX_IMAGE_PIXELS = _settings.max_image_pixels
    # Pillow allocates pixels in blocks of 16 MB: glibc serves those from its heaps and keeps
    # them after a large image, so a worker's memory stayed at its largest image's high-water
    # mark (+235 MB after 50-megapixel PNGs in tests/serving/test_load.py). Blocks of 64 MB are
    # over glibc's largest mmap threshold (32 MB): a large image's memory goes back when freed.
    Image.core.set_block_size(PILLOW_BLOCK_SIZE)
    server.log.info("worker %s: %d torch thread(s)", worker.pid, threads)
