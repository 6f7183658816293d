"""The README and the documentation site: the site builds strictly, every page is in the navigation, the
README stays short, its relative links resolve and it states the test command CI runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 250
# [text](target) and ![alt](target); the target ends at whitespace or the closing parenthesis
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|#)", re.IGNORECASE)


class _TolerantLoader(yaml.SafeLoader):
    """A safe loader that reads mkdocs.yml's `!!python/name:...` and `!ENV` tags as None."""


_TolerantLoader.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)
_TolerantLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def nav_pages(nav: list | dict | str | None) -> set[str]:
    """Every page path (relative to docs_dir) named anywhere in a mkdocs `nav` tree."""
    if isinstance(nav, str):
        return set() if _EXTERNAL.match(nav) else {nav}
    if isinstance(nav, dict):
        return set().union(*(nav_pages(value) for value in nav.values())) if nav else set()
    if isinstance(nav, list):
        return set().union(*(nav_pages(item) for item in nav)) if nav else set()
    return set()


def pages_missing_from_nav(docs_dir: Path, nav: list) -> list[str]:
    """The .md files under `docs_dir` (POSIX paths relative to it) that `nav` does not name."""
    listed = nav_pages(nav)
    pages = sorted(p.relative_to(docs_dir).as_posix() for p in docs_dir.rglob("*.md"))
    return [page for page in pages if page not in listed]


def broken_relative_links(markdown: str, base: Path) -> list[str]:
    """The relative link targets in `markdown` that name no existing file or folder under `base`."""
    broken = []
    for target in _LINK.findall(markdown):
        if _EXTERNAL.match(target):
            continue
        path = target.split("#", 1)[0].split("?", 1)[0]
        if not (base / path).exists():
            broken.append(target)
    return broken


def ci_test_command(ci_script: str) -> str:
    """The `make ...` command a CI script runs (its first line that starts with `make`).

    Raises:
        AssertionError: the script runs no make command.
    """
    for line in ci_script.splitlines():
        command = line.split("#", 1)[0].strip()
        if re.match(r"^make(\s|$)", command):
            return command
    raise AssertionError("the CI script runs no `make` command: the README's test command must be what CI runs")


def states_command(markdown: str, command: str) -> bool:
    """Whether `markdown` gives `command` as inline code or as a line of its own (in a code block)."""
    return f"`{command}`" in markdown or re.search(rf"^{re.escape(command)}(\s|$)", markdown, re.MULTILINE) is not None


def mkdocs_build(project: Path, site_dir: Path) -> subprocess.CompletedProcess:
    """`mkdocs build --strict` of the project at `project` into `site_dir`."""
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site_dir)],
        check=False, cwd=project, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})


def load_mkdocs_config(path: Path) -> dict:
    """mkdocs.yml as a dict (python and environment tags read as None)."""
    return yaml.load(path.read_text(), Loader=_TolerantLoader)


# ---- the repository's own documentation


def test_site_builds_strictly(tmp_path):
    result = mkdocs_build(ROOT, tmp_path / "site")
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    assert (tmp_path / "site" / "index.html").is_file()


def test_every_page_is_in_the_navigation():
    config = load_mkdocs_config(ROOT / "mkdocs.yml")
    docs_dir = ROOT / config.get("docs_dir", "docs")
    assert config.get("nav"), "mkdocs.yml has no nav: list every page there"
    missing = pages_missing_from_nav(docs_dir, config["nav"])
    assert not missing, f"pages under {docs_dir.name}/ that mkdocs.yml's nav does not list: {missing}"


def test_nav_names_only_pages_that_exist():
    config = load_mkdocs_config(ROOT / "mkdocs.yml")
    docs_dir = ROOT / config.get("docs_dir", "docs")
    absent = sorted(page for page in nav_pages(config["nav"]) if not (docs_dir / page).is_file())
    assert not absent, f"mkdocs.yml's nav names pages that do not exist: {absent}"


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): move the details to a page under docs/")


def test_readme_relative_links_resolve():
    broken = broken_relative_links((ROOT / "README.md").read_text(), ROOT)
    assert not broken, f"README.md links to files that do not exist: {broken}"


def test_readme_states_the_test_command_ci_runs():
    command = ci_test_command((ROOT / ".ci" / "run").read_text())
    assert states_command((ROOT / "README.md").read_text(), command), (
        f".ci/run runs `{command}`, which README.md does not state: keep the README's test command and CI's the same")


# ---- the checks themselves catch what they are for


def test_strict_build_fails_on_a_broken_link(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text("# Home\n\nSee [a page that is not there](missing.md).\n")
    (tmp_path / "mkdocs.yml").write_text("site_name: t\nstrict: true\nnav:\n  - index.md\n")
    assert mkdocs_build(tmp_path, tmp_path / "site").returncode != 0


def test_a_page_missing_from_the_nav_is_reported(tmp_path):
    (tmp_path / "guide").mkdir()
    for page in ("index.md", "guide/a.md", "guide/b.md"):
        (tmp_path / page).write_text("# page\n")
    nav = yaml.load("- Home: index.md\n- Guide:\n    - guide/a.md\n    - Site: https://example.com/\n",
                    Loader=_TolerantLoader)
    assert pages_missing_from_nav(tmp_path, nav) == ["guide/b.md"]


def test_the_loader_reads_python_tags():
    config = yaml.load("a: !!python/name:material.extensions.emoji.twemoji\nb: !ENV [X, 1]\nnav: [index.md]\n",
                       Loader=_TolerantLoader)
    assert config == {"a": None, "b": None, "nav": ["index.md"]}


@pytest.mark.parametrize("markdown, broken", [
    ("[ok](README.md) [ok too](docs/) ![img](docs/images/explain-gradcam.png)", []),
    ("[gone](docs/no-such-page.md#part) [web](https://example.com/x.md) [here](#layout)",
     ["docs/no-such-page.md#part"]),
    ('![gone](missing.png "a title")', ["missing.png"]),
])
def test_broken_relative_links_are_found(markdown, broken):
    assert broken_relative_links(markdown, ROOT) == broken


@pytest.mark.parametrize("script, command", [
    ("#!/bin/bash\nset -e\n# make sure\nmake test\nscripts/container_test.sh\n", "make test"),
    ("make test-quick  # fast\n", "make test-quick"),
])
def test_ci_test_command(script, command):
    assert ci_test_command(script) == command


@pytest.mark.parametrize("markdown, stated", [
    ("```bash\nmake test   # the suite\n```", True),
    ("Run `make test` first.", True),
    ("`make test-quick` skips the slow ones\nmake test-quick\n", False),
    ("make tests\n", False),
])
def test_states_command(markdown, stated):
    assert states_command(markdown, "make test") is stated


def test_ci_without_a_make_command_fails():
    with pytest.raises(AssertionError, match="no `make` command"):
        ci_test_command("pytest\n")
