"""Benchmarks that measure side by side, in one run, on one machine."""

from __future__ import annotations

import importlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

# The server's forward pass before issue 18 (TorchScript, which PyTorch deprecated), kept in the
# repository outside the package as the benchmarks' reference: scripts/reference/.
REFERENCE_DIR = Path(__file__).resolve().parents[3] / "scripts" / "reference"
REFERENCE_MODULE = "torchscript_reference"


def torchscript_reference() -> ModuleType | None:
    """scripts/reference/torchscript_reference.py, imported (its folder put on sys.path), or None
    where this is not a checkout of the repository (an installed package has no scripts/)."""
    if not (REFERENCE_DIR / f"{REFERENCE_MODULE}.py").exists():
        return None
    if str(REFERENCE_DIR) not in sys.path:
        sys.path.append(str(REFERENCE_DIR))
    return importlib.import_module(REFERENCE_MODULE)


def timings(action: Callable[[], object], seconds: float, at_least: int = 5) -> list[float]:
    """Seconds of each call of `action`, called again and again for `seconds` (and `at_least` times)."""
    times, deadline = [], time.perf_counter() + seconds
    while len(times) < at_least or time.perf_counter() < deadline:
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return times
