"""gunicorn settings for the model server, from the SageMaker environment (read by `serve`).

| variable | default | meaning |
| --- | --- | --- |
| SAGEMAKER_BIND_TO_PORT | 8080 | port to listen on, all interfaces |
| MODEL_SERVER_WORKERS | CPU cores | worker processes, each with its own copy of the model |
| MODEL_SERVER_TIMEOUT | 60 | seconds a request may take before its worker is restarted |
| SAGEMAKER_MAX_PAYLOAD_IN_MB | 6 | largest request body (read by the app) |
| MODEL_SERVER_MAX_IMAGE_PIXELS | Pillow's | decompression-bomb limit per image |
| MODEL_SERVER_TORCHSCRIPT | true | serve the model frozen and optimised with TorchScript (read by the app) |
"""

import os

from image_classifier.sagemaker_env import SageMakerEnv

_env = SageMakerEnv.from_environ()

bind = f"0.0.0.0:{_env.port}"
workers = _env.model_server_workers
timeout = _env.model_server_timeout
# SageMaker sends SIGTERM and waits 30 s before SIGKILL: finish in-flight requests within that.
graceful_timeout = 25
worker_class = "sync"
accesslog = "-"
errorlog = "-"
loglevel = "info"
control_socket_disable = True  # gunicorn 27's admin socket: unused here, and it needs a writable $HOME


def torch_threads(workers_count: int, cores: int | None = None) -> int:
    """Intra-op threads per worker so that workers × threads ≤ cores (at least 1)."""
    return max(1, (cores or os.cpu_count() or 1) // max(1, workers_count))


def post_fork(server, worker):
    """Divide the cores among workers; torch, imported later by the model loader, reads this."""
    threads = torch_threads(workers)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    if _env.max_image_pixels:
        # Pillow refuses images over twice its own limit on open, before the app's check:
        # make its limit the configured one so that a larger limit works too.
        from PIL import Image

        Image.MAX_IMAGE_PIXELS = _env.max_image_pixels
    server.log.info("worker %s: %d torch thread(s)", worker.pid, threads)
