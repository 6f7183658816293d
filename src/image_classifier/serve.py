"""The model server entry point: `python -m image_classifier.serve` (the container's `serve`).

Replaces itself with gunicorn, so SIGTERM from SageMaker reaches gunicorn directly, which
drains in-flight requests and stops its workers.
"""

import os
import sys

APP = "image_classifier.serving.app:create_app()"
CONFIG = "python:image_classifier.serving.gunicorn_config"


def main() -> None:
    """exec gunicorn with the project's config and app factory; never returns."""
    os.execv(sys.executable, [sys.executable, "-m", "gunicorn", "--config", CONFIG, APP])


if __name__ == "__main__":
    main()
