"""A throwaway PostgreSQL server for the tests: its own cluster (initdb) in a temporary folder, on a free port.

It needs Debian's `postgresql` package (`.ci/run` installs it); no system service is used. PostgreSQL
refuses to run as root, so as root the cluster belongs to the package's `postgres` user (`runuser`).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

USER = "tuner"          # the cluster's superuser; trust authentication on loopback, no password
DATABASE = "postgres"   # the database initdb makes
SERVER_USER = "postgres"  # who runs the server when the tests run as root (the Debian package's user)


def bindir() -> Path | None:
    """Where initdb and pg_ctl are: `pg_config --bindir`, else the newest /usr/lib/postgresql/*/bin."""
    if shutil.which("pg_config"):
        found = Path(subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True).stdout.strip())
        if (found / "initdb").is_file():
            return found
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name))
    return Path(candidates[-1]) if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def throwaway_server() -> Iterator[str]:
    """Run a fresh PostgreSQL cluster while inside; yields its URL for SQLAlchemy (psycopg 3 driver).

    Raises:
        RuntimeError: PostgreSQL's server binaries are not installed, initdb failed, or the server did not
            start (the message has their output).
    """
    binaries = bindir()
    if binaries is None:
        raise RuntimeError("PostgreSQL is not installed: apt-get install postgresql (.ci/run does)")
    as_root = os.geteuid() == 0
    prefix = ["runuser", "-u", SERVER_USER, "--"] if as_root else []
    # not under pytest's tmp_path: its folders are 0700 root's, which the postgres user cannot enter
    folder = Path(tempfile.mkdtemp(prefix="ic-postgres-"))
    if as_root:
        shutil.chown(folder, SERVER_USER)
    data, port = folder / "data", _free_port()
    try:
        made = subprocess.run([*prefix, binaries / "initdb", "-D", data, "-U", USER, "--auth=trust", "-E", "UTF8",
                               "--no-sync"], capture_output=True, text=True)
        if made.returncode != 0:
            raise RuntimeError(f"initdb failed: {made.stdout}{made.stderr}")
        # fsync off: a test database need not survive a power cut
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        started = subprocess.run([*prefix, binaries / "pg_ctl", "-D", data, "-l", folder / "server.log", "-w",
                                  "-o", options, "start"], capture_output=True, text=True)
        if started.returncode != 0:
            log = (folder / "server.log").read_text() if (folder / "server.log").is_file() else ""
            raise RuntimeError(f"PostgreSQL did not start: {started.stdout}{started.stderr}{log}")
        try:
            yield f"postgresql+psycopg://{USER}@127.0.0.1:{port}/{DATABASE}"
        finally:
            subprocess.run([*prefix, binaries / "pg_ctl", "-D", data, "-m", "immediate", "stop"],
                           capture_output=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
