"""SageMaker on this machine: an `/opt/ml` tree, the container's `train` run on it, its `serve` on a port.

Every local run (the demo, tuning trials, the benchmarks, the tests) goes through this one
module, so that each does what SageMaker does and in the same way:

- `lay_out` writes the tree a training job sees: `input/config/hyperparameters.json` (every
  value a string), `inputdataconfig.json`, `resourceconfig.json`, and each channel under
  `input/data/<channel>` (a symlink to the data); `link_feature_cache` shares a folder of cached
  features between jobs;
- `start_job` / `run_job` run `python -m image_classifier.train`, and `start_server` runs
  `python -m image_classifier.serve`, as the container's `train` and `serve` do, pointed at the
  tree by `SAGEMAKER_BASE_DIR` (`sagemaker_env.BASE_DIR_ENV`);
- `wait_for_ping` polls `GET /ping` until 200, as SageMaker's health check does;
- `stop` sends SIGTERM, as StopTrainingJob and an endpoint update do, and SIGKILL after a
  bounded wait.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import requests

from image_classifier.sagemaker_env import BASE_DIR_ENV, BIND_TO_PORT_ENV, MODEL_SERVER_WORKERS_ENV, SageMakerEnv

CHANNELS = ("train", "valid", "test")  # the channels `lay_out` links from the data folder
TRAIN_COMMAND = (sys.executable, "-m", "image_classifier.train")  # the container's `train`
SERVE_COMMAND = (sys.executable, "-m", "image_classifier.serve")  # the container's `serve`
HOST = "127.0.0.1"                     # local servers listen on loopback only
PING_TIMEOUT_SECONDS = 120.0           # a server's start-up, model load included, at most
PING_INTERVAL_SECONDS = 0.5            # between two `GET /ping` while it starts
STOP_TIMEOUT_SECONDS = 30.0            # after SIGTERM, seconds a process has to exit before SIGKILL

_STALE = ("model", "output", "checkpoints", "input")  # what an earlier run on the tree left
# inputdataconfig.json's entry for each channel, as SageMaker writes it for File mode from S3
_CHANNEL_CONFIG = {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated", "RecordWrapperType": "None"}
# resourceconfig.json of a one-instance job
_RESOURCE_CONFIG = {"current_host": "algo-1", "hosts": ["algo-1"], "network_interface_name": "eth0"}


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now (the OS picks it).

    Returns:
        the port number, 1024-65535.
    """
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def server_url(port: int) -> str:
    """`http://127.0.0.1:<port>`: the root of a local server (no trailing slash)."""
    return f"http://{HOST}:{port}"


def lay_out(base_dir: Path, data_dir: Path, hyperparameters: Mapping[str, str],
            channels: tuple[str, ...] = CHANNELS) -> SageMakerEnv:
    """Write a fresh `/opt/ml` tree as SageMaker does before a training job starts.

    What an earlier run left there (model/, output/, checkpoints/, input/) is removed first.

    Args:
        base_dir: the tree's root, the container's `/opt/ml`; created if missing.
        data_dir: an ImageFolder root holding one folder per channel (`<data_dir>/train`, ...).
        hyperparameters: written as they are to `input/config/hyperparameters.json`; SageMaker's
            values are strings, so pass strings.
        channels: the channels to link, each `input/data/<channel>` → `<data_dir>/<channel>`.

    Returns:
        the layout, for its paths (`model_dir`, `failure_path`, ...).
    """
    for stale in _STALE:
        shutil.rmtree(base_dir / stale, ignore_errors=True)
    env = SageMakerEnv(base_dir=base_dir)
    env.config_dir.mkdir(parents=True)
    env.hyperparameters_path.write_text(json.dumps(dict(hyperparameters), indent=2))
    env.input_data_config_path.write_text(json.dumps(dict.fromkeys(channels, _CHANNEL_CONFIG), indent=2))
    env.resource_config_path.write_text(json.dumps(_RESOURCE_CONFIG))
    env.data_dir.mkdir(parents=True)
    for channel in channels:
        env.channel_dir(channel).symlink_to((data_dir / channel).resolve(), target_is_directory=True)
    return env


def link_feature_cache(env: SageMakerEnv, shared: Path) -> Path:
    """Make the job's `<checkpoint dir>/feature-cache` a symlink to `shared`, a folder jobs share.

    Jobs with a frozen backbone cache its features there, under a lock, so that jobs side by side
    (tuning trials) compute them once and later ones read them.

    Args:
        env: the job's layout (`lay_out`).
        shared: the shared folder; created if missing.

    Returns:
        the symlink.
    """
    from image_classifier.training.features import CACHE_DIR  # imports torch: only for jobs that share a cache

    shared.mkdir(parents=True, exist_ok=True)
    env.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    link = env.checkpoint_dir / CACHE_DIR
    link.symlink_to(shared.resolve(), target_is_directory=True)
    return link


def child_environ(base_dir: Path, extra: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """The environment of a job or server on the tree at `base_dir`.

    Args:
        base_dir: the tree's root, passed as `SAGEMAKER_BASE_DIR` (made absolute).
        extra: variables to set on top of this process's environment; a None value removes
            the variable (e.g. a setting of this process the child must not inherit).

    Returns:
        variable name → value.
    """
    environ = {**os.environ, BASE_DIR_ENV: str(Path(base_dir).resolve())}
    for name, value in (extra or {}).items():
        if value is None:
            environ.pop(name, None)
        else:
            environ[name] = value
    return environ


def start_job(base_dir: Path, extra_environ: Mapping[str, str | None] | None = None,
              **popen: Any) -> subprocess.Popen:
    """Start `python -m image_classifier.train` on the tree at `base_dir`, as the container's `train`.

    Args:
        base_dir: the tree's root, as `lay_out` wrote it.
        extra_environ: see `child_environ`.
        **popen: passed to `subprocess.Popen` (stdout, text, start_new_session, ...).

    Returns:
        the running job; it exits 0 on success, non-zero with `output/failure` written otherwise.
    """
    return subprocess.Popen(TRAIN_COMMAND, env=child_environ(base_dir, extra_environ), **popen)


def run_job(base_dir: Path, extra_environ: Mapping[str, str | None] | None = None,
            **run: Any) -> subprocess.CompletedProcess:
    """Run `python -m image_classifier.train` on the tree at `base_dir` to its end.

    Args:
        base_dir: the tree's root, as `lay_out` wrote it.
        extra_environ: see `child_environ`.
        **run: passed to `subprocess.run` (capture_output, text, timeout, ...).

    Returns:
        the finished job (`returncode` 0 on success; `output/failure` says why otherwise).

    Raises:
        subprocess.TimeoutExpired: `timeout` was given and passed (the job is killed).
    """
    return subprocess.run(TRAIN_COMMAND, env=child_environ(base_dir, extra_environ), **run)


def start_server(base_dir: Path, port: int, workers: int | None = None,
                 extra_environ: Mapping[str, str | None] | None = None, **popen: Any) -> subprocess.Popen:
    """Start `python -m image_classifier.serve` on the tree at `base_dir`, as the container's `serve`.

    It does not wait: call `wait_for_ping`.

    Args:
        base_dir: the tree's root; the server loads `<base_dir>/model`.
        port: where it listens (`SAGEMAKER_BIND_TO_PORT`); see `free_port`.
        workers: gunicorn workers (`MODEL_SERVER_WORKERS`); None: the server's default.
        extra_environ: see `child_environ`.
        **popen: passed to `subprocess.Popen` (stdout, start_new_session, ...).

    Returns:
        the running server.
    """
    settings: dict[str, str | None] = {BIND_TO_PORT_ENV: str(port)}
    if workers is not None:
        settings[MODEL_SERVER_WORKERS_ENV] = str(workers)
    return subprocess.Popen(SERVE_COMMAND, env=child_environ(base_dir, {**settings, **(extra_environ or {})}),
                            **popen)


def wait_for_ping(url: str, server: subprocess.Popen, timeout: float = PING_TIMEOUT_SECONDS,
                  interval: float = PING_INTERVAL_SECONDS) -> None:
    """Poll `GET <url>/ping` until it answers 200.

    Args:
        url: the server's root, e.g. `server_url(port)`.
        server: its process, watched so that a crash ends the wait at once.
        timeout: seconds to wait at most.
        interval: seconds between two polls.

    Raises:
        RuntimeError: the server exited, or did not answer 200 within `timeout` (it is left running).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with code {server.returncode} before {url}/ping answered 200: "
                               "its log says why")
        try:
            if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(interval)
    raise RuntimeError(f"{url}/ping did not answer 200 within {timeout} s: the model may be too slow to load "
                       "(raise the timeout) or the server may be stuck (see its log)")


def stop(process: subprocess.Popen, timeout: float = STOP_TIMEOUT_SECONDS, group: bool = False) -> float:
    """SIGTERM, as SageMaker stops a training job or a server; SIGKILL if it outlives `timeout`.

    Args:
        process: a job or server; nothing is sent if it has exited already.
        timeout: seconds it has to exit after SIGTERM.
        group: signal its whole process group (it was started with `start_new_session=True`),
            so that its children (gunicorn's workers, DataLoader workers) get the signal too.

    Returns:
        seconds from SIGTERM to its exit.

    Raises:
        subprocess.TimeoutExpired: it did not exit within `timeout` (it was killed before this is raised).
    """
    started = time.monotonic()
    _send(process, signal.SIGTERM, group)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _send(process, signal.SIGKILL, group)
        process.wait()
        raise
    return time.monotonic() - started


def _send(process: subprocess.Popen, signum: int, group: bool) -> None:
    """`signum` to the process (or its group), unless it is gone."""
    try:
        if group:
            os.killpg(process.pid, signum)
        else:
            process.send_signal(signum)  # a no-op once the process was waited for
    except ProcessLookupError:
        pass
