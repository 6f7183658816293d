"""Fixtures of the in-process app tests: the app on the digits model, one torch thread."""

from __future__ import annotations

import pytest
import torch

from image_classifier.serving.app import create_app

SERVER_ENV = ("SAGEMAKER_MAX_PAYLOAD_IN_MB", "MODEL_SERVER_MAX_IMAGE_PIXELS", "MODEL_SERVER_WORKERS",
              "MODEL_SERVER_THREADS", "MODEL_SERVER_MAX_BATCH", "SAGEMAKER_BASE_DIR")


@pytest.fixture(scope="module")
def one_torch_thread():
    """As a server worker on a small machine runs (gunicorn_config.post_fork): much faster here."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def app(model_dir):
    """The app on `model_dir`, loaded before it returns, with the server's defaults (TorchScript)."""
    with pytest.MonkeyPatch.context() as mp:
        for name in SERVER_ENV:
            mp.delenv(name, raising=False)
        yield create_app({"TESTING": True, "MODEL_DIR": model_dir, "LOAD_IN_BACKGROUND": False})


@pytest.fixture
def client(app):
    return app.test_client()
