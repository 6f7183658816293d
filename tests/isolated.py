"""Run a test in a fresh interpreter: OpenVINO and NNCF leave threads in the process that loads them.

With an int8 quantization done in pytest's own process, a later test that forks (DataLoader
workers) and then runs torch crashed pytest itself with SIGSEGV (make test, test_distributed,
after tests/benchmarks/test_runtimes.py). Tests that load OpenVINO run through `isolated`.
"""

from __future__ import annotations

import functools
import importlib
import multiprocessing


def _call(module: str, name: str, args: tuple, kwargs: dict) -> None:
    getattr(importlib.import_module(module), name).__wrapped__(*args, **kwargs)


def isolated(test):
    """Decorate a test: its body runs in a spawned process (arguments pickled: plain values and
    paths, no pytest fixtures such as monkeypatch), and what it raises is raised here."""
    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            pool.apply(_call, (test.__module__, test.__qualname__, args, kwargs))
    return wrapper
