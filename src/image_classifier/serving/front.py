"""nginx in front of gunicorn, as AWS's BYOC sample runs it: the front end slow clients cannot starve.

nginx reads each request whole (head and body, `proxy_request_buffering`) on its event loop
before gunicorn sees it, and buffers each answer for the client (`proxy_buffering`), so a
client that stalls mid-header or mid-body holds one of nginx's connections (1024 a worker),
not one of gunicorn's request threads. `nginx_conf` writes its configuration from the
server's settings (`sagemaker_env.ServerSettings`), `run` starts and supervises both.

The bounds, each from nginx's documentation (https://nginx.org/en/docs/http/ngx_http_core_module.html):

- a request's head must arrive within CLIENT_TIMEOUT_SECONDS (`client_header_timeout`), and a
  body's successive reads may wait at most CLIENT_TIMEOUT_SECONDS each (`client_body_timeout`;
  the timeout is between two reads, not for the whole body); a stalled client is then
  dropped (nginx's defaults: SageMaker's own front end gives up on an invocation after 60 s);
- a body over the payload limit (`client_max_body_size`, bytes) is answered 413 with the
  app's JSON error and `Connection: close`; before the connection closes nginx reads and
  discards what the client still sends for at most LINGER_SECONDS in all, each read waiting
  at most LINGER_READ_SECONDS (`lingering_time`, `lingering_timeout`): a bound in seconds,
  not bytes (nginx has none in bytes);
- bodies up to BODY_BUFFER_BYTES are held in memory, larger ones in a temporary file in the
  run folder (`client_body_buffer_size`);
- nginx waits for gunicorn's answer up to the model server's timeout plus PROXY_MARGIN_SECONDS
  (`proxy_read_timeout`);
- on SIGTERM nginx stops listening and finishes its requests within NGINX_SHUTDOWN_SECONDS
  (`worker_shutdown_timeout`), then gunicorn drains (its `graceful_timeout`): SageMaker kills
  the container 30 s after SIGTERM.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from werkzeug.exceptions import RequestEntityTooLarge

from image_classifier.sagemaker_env import ServerSettings

logger = logging.getLogger(__name__)

NGINX = "nginx"                    # the program, looked up on PATH
CLIENT_TIMEOUT_SECONDS = 60        # a head, one read of a body, one write of an answer (nginx's defaults)
LINGER_SECONDS = 30                # discarding a refused body, at most (nginx's default lingering_time)
LINGER_READ_SECONDS = 5            # one read while discarding, at most (nginx's default lingering_timeout)
BODY_BUFFER_BYTES = 256 * 1024     # a body held in memory, at most; a larger one goes to a temporary file
CLIENT_KEEPALIVE_SECONDS = 75      # an idle client connection kept open (nginx's default keepalive_timeout)
PROXY_MARGIN_SECONDS = 30          # nginx waits for an answer the model server's timeout plus this
NO_TIMEOUT_SECONDS = 86_400        # nginx's wait for an answer when the model server has no timeout (0)
NGINX_SHUTDOWN_SECONDS = 20        # nginx's graceful stop, at most: SageMaker kills 30 s after SIGTERM
WORKER_CONNECTIONS = 1024          # connections one nginx worker holds at most
SOCKET_WAIT_SECONDS = 60           # gunicorn's socket must appear within this after its start
POLL_SECONDS = 0.1                 # how often `run` looks at its children


def too_large_body() -> str:
    """The 413's JSON body, the app's own (serving/app.py answers werkzeug's 413 this way)."""
    return json.dumps({"error": RequestEntityTooLarge.description}, separators=(",", ":"))


def _proxy_read_timeout(settings: ServerSettings) -> int:
    """Seconds nginx waits for gunicorn's answer: longer than gunicorn lets a worker take."""
    if not settings.model_server_timeout:
        return NO_TIMEOUT_SECONDS
    return settings.model_server_timeout + PROXY_MARGIN_SECONDS


def _user_directive() -> str:
    """nginx's `user`, which matters only to a master running as root (SageMaker's case): its
    workers then run as root too, as gunicorn's do, and can use the run folder."""
    return f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else ""


def nginx_conf(settings: ServerSettings, run_dir: Path, socket_path: Path) -> str:
    """nginx's configuration for `settings`: listen on the port, proxy to gunicorn's unix socket.

    Args:
        settings: the server's settings (port, payload limit, model server timeout).
        run_dir: a folder only this server uses: nginx's pid file and temporary files.
        socket_path: gunicorn's unix socket.

    Returns:
        the text of an nginx.conf, for `nginx -c`.
    """
    read_timeout = _proxy_read_timeout(settings)
    temp_paths = "\n".join(f"    {kind}_temp_path {run_dir / kind};"
                           for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return f"""# Written by image_classifier.serving.front from the server's settings: do not edit.
worker_processes 1;
worker_shutdown_timeout {NGINX_SHUTDOWN_SECONDS}s;
pid {run_dir / "nginx.pid"};
error_log stderr warn;
{_user_directive()}
events {{
    worker_connections {WORKER_CONNECTIONS};
}}

http {{
{temp_paths}
    server_tokens off;
    # requests nginx answers itself (413, 408, 400); gunicorn logs the ones it answers
    map $upstream_addr $answered_by_nginx {{
        "" 1;
        default 0;
    }}
    # nginx answers TRACE itself, 405, before any location: with the methods the app's routes
    # take in `Allow`, as RFC 9110 requires (tests/serving/test_front.py compares it with Flask's)
    map $uri $allowed_methods {{
{_allowed_methods()}
        default "";
    }}
    log_format front 'nginx $remote_addr "$request" $status $body_bytes_sent $request_time';
    access_log /dev/stdout front if=$answered_by_nginx;

    # a new connection to gunicorn for each request (a unix socket: tens of microseconds), so
    # that the kernel hands each request to whichever worker accepts first, as without nginx:
    # connections kept alive stay with the worker that accepted them, and a worker that
    # replaced a dead one got no request in 120 s (tests/serving/test_load.py)
    upstream gunicorn {{
        server unix:{socket_path};
    }}

    server {{
        listen {settings.port};
        client_max_body_size {settings.max_payload_bytes};
        client_body_buffer_size {BODY_BUFFER_BYTES};
        client_header_timeout {CLIENT_TIMEOUT_SECONDS}s;
        client_body_timeout {CLIENT_TIMEOUT_SECONDS}s;
        send_timeout {CLIENT_TIMEOUT_SECONDS}s;
        keepalive_timeout {CLIENT_KEEPALIVE_SECONDS}s;
        lingering_close on;
        lingering_time {LINGER_SECONDS}s;
        lingering_timeout {LINGER_READ_SECONDS}s;
        error_page 413 @too_large;
        error_page 405 @not_allowed;

        location / {{
            proxy_pass http://gunicorn;
            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_request_buffering on;
            proxy_buffering on;
            proxy_redirect off;
            proxy_read_timeout {read_timeout}s;
        }}

{_error_locations()}
    }}
}}
"""


# The app's routes and the methods Flask answers them with (serving/app.py): nginx's own 405 says the same
ROUTE_METHODS = {"/ping": "GET, HEAD, OPTIONS", "/invocations": "OPTIONS, POST",
                 "/execution-parameters": "GET, HEAD, OPTIONS"}


def _error_locations() -> str:
    """The answers nginx gives itself, as the app's: JSON, and `Allow` on a 405."""
    return f"""        location @not_allowed {{
            default_type application/json;
            add_header Allow $allowed_methods always;
            return 405 '{{"error": "The method is not allowed for the requested URL."}}';
        }}

        location @too_large {{
            default_type application/json;
            return 413 '{too_large_body()}';
        }}"""


def _allowed_methods() -> str:
    return "\n".join(f'        {route} "{methods}";' for route, methods in ROUTE_METHODS.items())


def find_nginx() -> str | None:
    """nginx's path on PATH, or None."""
    return shutil.which(NGINX)


def gunicorn_command(app: str, config: str, socket_path: Path | None = None) -> list[str]:
    """gunicorn with the project's config and app; behind nginx, bound to `socket_path`."""
    command = [sys.executable, "-m", "gunicorn", "--config", config]
    if socket_path is not None:
        command += ["--bind", f"unix:{socket_path}"]
    return [*command, app]


def _wait_for_socket(path: Path, gunicorn: subprocess.Popen) -> bool:
    """Until gunicorn listens on `path` (True) or exits or takes too long (False)."""
    deadline = time.monotonic() + SOCKET_WAIT_SECONDS
    while not path.exists():
        if gunicorn.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(POLL_SECONDS / 10)
    return True


def _stop(process: subprocess.Popen, sig: signal.Signals) -> int:
    if process.poll() is None:
        process.send_signal(sig)
    return process.wait()


def _kill_group(nginx: subprocess.Popen) -> None:
    """SIGKILL what is left of nginx's process group (workers its dead master left behind)."""
    try:
        os.killpg(nginx.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _drain(nginx: subprocess.Popen, gunicorn: subprocess.Popen) -> int:
    """SageMaker's stop: nginx first (SIGQUIT: it stops listening and finishes its requests, which
    gunicorn answers), then gunicorn (SIGTERM: its graceful stop). 0 when both exit cleanly."""
    logger.info("stopping: nginx finishes its requests (at most %d s), then gunicorn", NGINX_SHUTDOWN_SECONDS)
    codes = _stop(nginx, signal.SIGQUIT), _stop(gunicorn, signal.SIGTERM)
    return max(abs(code) for code in codes)


def _supervise(nginx: subprocess.Popen, gunicorn: subprocess.Popen, stopping: list[int]) -> int:
    """Until SIGTERM (then drain) or a child's exit (then stop the other and fail)."""
    # with one gone no request can be answered: the other stops at once (gunicorn's SIGQUIT, nginx's SIGTERM)
    while not stopping:
        for name, process, other, quick in (("nginx", nginx, gunicorn, signal.SIGQUIT),
                                            ("gunicorn", gunicorn, nginx, signal.SIGTERM)):
            if process.poll() is not None:
                logger.error("%s exited with %d: stopping the server", name, process.returncode)
                _stop(other, quick)
                _kill_group(nginx)
                return process.returncode or 1
        time.sleep(POLL_SECONDS)
    return _drain(nginx, gunicorn)


def run(settings: ServerSettings, nginx_path: str, app: str, config: str) -> int:
    """Serve: gunicorn on a unix socket in a private folder, nginx on the port in front of it.

    SIGTERM or SIGINT drains both (`_drain`); if either exits on its own, the other is stopped.

    Args:
        settings: the server's settings.
        nginx_path: the nginx program.
        app: gunicorn's app (module:factory()).
        config: gunicorn's config (python:module).

    Returns:
        the exit status: 0 after a clean drain, non-zero when a child failed.
    """
    stopping: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stopping.append(signum))
    with tempfile.TemporaryDirectory(prefix="image-classifier-serve-") as folder:
        run_dir = Path(folder)
        socket_path = run_dir / "gunicorn.sock"
        conf = run_dir / "nginx.conf"
        conf.write_text(nginx_conf(settings, run_dir, socket_path))
        gunicorn = subprocess.Popen(gunicorn_command(app, config, socket_path))
        if not _wait_for_socket(socket_path, gunicorn):
            logger.error("gunicorn did not listen on %s (exit status %s)", socket_path, gunicorn.poll())
            return _stop(gunicorn, signal.SIGTERM) or 1
        # in a process group of its own: if its master dies, its workers (which would keep the
        # port) go with it (`_supervise`)
        nginx = subprocess.Popen([nginx_path, "-e", "stderr", "-p", str(run_dir), "-c", str(conf),
                                  "-g", "daemon off;"], process_group=0)
        logger.info("nginx (pid %d) on port %d in front of gunicorn (pid %d) on %s",
                    nginx.pid, settings.port, gunicorn.pid, socket_path)
        return _supervise(nginx, gunicorn, stopping)
