"""What one server's workers share: a run directory with the forward lock and the ready flag.

gunicorn's master makes the directory before forking (gunicorn_config.on_starting) and names
it in `$MODEL_SERVER_RUN_DIR`, which its workers inherit; an app made in-process without it
gets a directory of its own. No torch here: the master imports this.

- `ForwardLock`: one worker at a time runs a forward pass or loads its model, so each uses
  all the cores without the workers fighting over them; the kernel frees the `flock` if its
  holder dies.
- the ready flag: a file made when the first worker's model is loaded and warmed. A worker
  started later (one replacing a dead worker) answers `/ping` 200 while it loads, because
  the server can answer: its own `/invocations` wait for its model (`LOAD_WAIT`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
import weakref
from pathlib import Path

RUN_DIR_ENV = "MODEL_SERVER_RUN_DIR"
LOCK_FILE = "forward.lock"
READY_FILE = "ready"


def new_run_dir() -> str:
    """A new, empty run directory in the temporary directory; its path."""
    return tempfile.mkdtemp(prefix="image-classifier-server-")


def remove_run_dir(path: str | Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


class RunDir:
    """The run directory `path`; default `$MODEL_SERVER_RUN_DIR`, else a new one of its own,
    removed when this object is collected or the process exits."""

    def __init__(self, path: str | Path | None = None):
        path = path or os.environ.get(RUN_DIR_ENV)
        if path is None:
            path = new_run_dir()
            weakref.finalize(self, remove_run_dir, path)
        self.path = Path(path)

    def lock(self) -> ForwardLock:
        return ForwardLock(self.path / LOCK_FILE)

    @property
    def ready(self) -> bool:
        """A worker of this server has loaded its model."""
        return (self.path / READY_FILE).exists()

    def mark_ready(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)  # in case a /tmp cleaner removed it
        (self.path / READY_FILE).touch()


class ForwardLock:
    """One holder at a time across processes: an exclusive flock on `path`.

    Each instance opens its own descriptor (in the process that first uses it, after
    gunicorn's fork), so two instances in one process exclude each other too.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self._fd: int | None = None

    @contextlib.contextmanager
    def held(self):
        if self._fd is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)  # in case a /tmp cleaner removed it
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
