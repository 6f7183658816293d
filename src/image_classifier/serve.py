"""The model server entry point: `python -m image_classifier.serve` (the container's `serve`).

nginx listens on SageMaker's port and passes each request, once read whole, to gunicorn on a
unix socket (serving/front.py), as AWS's BYOC sample does: clients that stall mid-header or
mid-body cannot take gunicorn's request threads. SIGTERM drains both; if either exits, so does
the server, non-zero.

Without nginx on PATH (a developer's machine) it replaces itself with gunicorn alone on the
port, with a warning: gunicorn's own bounds (serving/parser.discard_body, gunicorn_config)
still answer an oversized body with its 413, but MODEL_SERVER_THREADS clients stalled mid-body
hold every request thread of a worker, and `/ping` with them. The serving image has nginx.
"""

import logging
import os
import sys

APP = "image_classifier.serving.app:create_app()"
CONFIG = "python:image_classifier.serving.gunicorn_config"

logger = logging.getLogger("image_classifier.serve")


def main() -> None:
    """Serve behind nginx (exits with its status), or exec gunicorn alone where nginx is missing."""
    from image_classifier.sagemaker_env import SageMakerEnv
    from image_classifier.serving import front

    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s",
                        datefmt="%Y-%m-%d %H:%M:%S %z")
    settings = SageMakerEnv.from_environ().server
    nginx = front.find_nginx()
    if nginx is None:
        logger.warning("nginx is not on PATH: gunicorn alone serves port %d, and %d clients stalled mid-body "
                       "take all of a worker's request threads (and /ping). Install nginx (apt-get install nginx, "
                       "brew install nginx) to put it in front, as the serving image does.",
                       settings.port, settings.model_server_threads)
        command = front.gunicorn_command(APP, CONFIG)
        os.execv(command[0], command)
    sys.exit(front.run(settings, nginx, APP, CONFIG))


if __name__ == "__main__":
    main()
