"""The house rules CI enforces: import layers (import-linter), no import cycle, ruff, short functions.

The contracts are in pyproject.toml ([tool.importlinter], [tool.ruff]); these tests run the
tools as a developer would (`lint-imports`, `ruff check`) so that `make test` fails on a break.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import grimp
import networkx as nx

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "image_classifier"
MAX_FUNCTION_LINES = 80  # issue 17: a function that does not fit on a screen does more than one thing


def _tool(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_import_layers_hold():
    result = subprocess.run([str(Path(sys.executable).with_name("lint-imports")), "--no-cache"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_no_import_cycle_between_modules():
    """Every import counts, a function's late import too: a cycle is a cycle however it is hidden."""
    graph = grimp.build_graph("image_classifier", include_external_packages=False)
    edges = [(module, imported) for module in graph.modules
             for imported in graph.find_modules_directly_imported_by(module)]
    cycles = list(nx.simple_cycles(nx.DiGraph(edges)))
    assert cycles == [], "\n".join(" -> ".join([*cycle, cycle[0]]) for cycle in cycles)


def test_ruff_is_clean():
    result = _tool("ruff", "check", "--no-cache", "src", "tests", "scripts")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]


def test_no_function_in_src_is_over_80_lines():
    long = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {lines} lines")
    assert long == [], "\n".join(long)


def test_no_torchscript_in_src():
    """PyTorch deprecated TorchScript; the server runs OpenVINO (issue 18). The benchmarks' reference
    keeps it outside the package, in scripts/reference/torchscript_reference.py."""
    users = [str(path.relative_to(SRC)) for path in SRC.rglob("*.py") if "torch.jit" in path.read_text()]
    assert users == []
