"""gunicorn settings for the model server, from the SageMaker environment (read by `serve`).

| variable | default | meaning |
| --- | --- | --- |
| SAGEMAKER_BIND_TO_PORT | 8080 | port to listen on, all interfaces |
| MODEL_SERVER_WORKERS | CPU cores | worker processes, each with its own copy of the model |
| MODEL_SERVER_TIMEOUT | 60 | seconds a request may take before its worker is restarted |
| SAGEMAKER_MAX_PAYLOAD_IN_MB | 6 | largest request body (read by the app) |
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
    """Divide the cores among workers before the worker imports the model (no preload)."""
    threads = torch_threads(workers)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)
    torch.set_num_interop_threads(1)
    server.log.info("worker %s: %d torch thread(s)", worker.pid, threads)
