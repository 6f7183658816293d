"""A real model server (`local.start_server`: nginx in front of gunicorn) in a subprocess, for the tests:
which worker answered."""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from image_classifier import local
from image_classifier.local import free_port

# gunicorn reads GUNICORN_CMD_ARGS after the config module: log which worker answered each request
ACCESS_LOG_FORMAT = """--access-logformat 'pid=%(p)s "%(r)s" %(s)s %(b)s'"""
STARTUP_TIMEOUT = 180


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path
    workers: set[int]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def _direct_children(pid: int) -> set[int]:
    """Pids of the live processes whose parent is `pid`, from /proc."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state, ppid, ...
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry.name))
    return found


def _is_gunicorn(pid: int) -> bool:
    try:
        return b"gunicorn" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def children(pid: int) -> set[int]:
    """Pids of the live gunicorn workers of the server `pid` (`python -m image_classifier.serve`).

    Behind nginx the server's children are nginx and gunicorn's master, whose children are the
    workers; without nginx the server became gunicorn's master (exec) and its children are them.
    """
    if _is_gunicorn(pid):
        return _direct_children(pid)
    return {worker for child in _direct_children(pid) if _is_gunicorn(child) for worker in _direct_children(child)}


def start(base_dir: Path, workers: int, port: int | None = None, **env) -> tuple[subprocess.Popen, str, Path]:
    """`python -m image_classifier.serve` on `port` (default: a free one), logging to base_dir/server.log.

    The limits this process may have set (payload, pixels) are not inherited unless `env` sets them.
    """
    port = port or free_port()
    log = base_dir / "server.log"
    extra = {"SAGEMAKER_MAX_PAYLOAD_IN_MB": None, "MODEL_SERVER_MAX_IMAGE_PIXELS": None,
             "GUNICORN_CMD_ARGS": ACCESS_LOG_FORMAT, **env}
    with log.open("wb") as out:
        process = local.start_server(base_dir, port, workers, extra, stdout=out, stderr=subprocess.STDOUT)
    return process, local.server_url(port), log


def pinged(log: Path, status: int) -> set[int]:
    """Pids of the workers that answered `/ping` with `status`, from the access log."""
    return {int(pid) for pid in re.findall(rf'pid=<(\d+)> "GET /ping HTTP/1.1" {status}', log.read_text())}


def wait_for_answer(url: str, process: subprocess.Popen, log: Path, want: int, workers: int) -> set[int]:
    """Until each of the `workers` answered `/ping` with `want`; returns their pids (fails with the log)."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while True:
        pids = children(process.pid)
        if len(pids) == workers and pids <= pinged(log, want):
            return pids
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        if time.monotonic() > deadline:
            stop(process)
            pytest.fail(f"/ping never answered {want}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            requests.get(f"{url}/ping", timeout=30)
        except requests.RequestException:
            time.sleep(0.2)


def stop(process: subprocess.Popen) -> float:
    """SIGTERM, as SageMaker stops a container (`local.stop`); returns the seconds it took to exit."""
    return local.stop(process)
