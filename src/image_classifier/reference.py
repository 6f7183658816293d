"""The documentation's reference pages, generated from the configuration schemas.

`docs/reference/hyperparameters.md` comes from `training.config.TrainConfig` and
`docs/reference/environment.md` from `sagemaker_env.ServerSettings` (and the training job's
variables, `sagemaker_env.LAYOUT_VARIABLES`). After changing either, regenerate them from the
repository root with `python -m image_classifier.reference`; tests/test_reference.py fails while
a committed page differs.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from image_classifier import sagemaker_env
from image_classifier.schema import markdown_table
from image_classifier.training.config import TrainConfig

logger = logging.getLogger(__name__)

COMMAND = "python -m image_classifier.reference"
HYPERPARAMETERS_PAGE = Path("docs/reference/hyperparameters.md")
ENVIRONMENT_PAGE = Path("docs/reference/environment.md")


def _generated(source: str) -> str:
    return f"*Generated from `{source}`: do not edit; run `{COMMAND}` to regenerate.*\n"


def hyperparameters_page() -> str:
    """`docs/reference/hyperparameters.md`: every hyperparameter of a training job, as Markdown."""
    return "\n".join([
        "# Hyperparameters", "", _generated("image_classifier.training.config.TrainConfig"),
        "A training job's hyperparameters, as `hyperparameters.json` holds them. Every value is a string; "
        "the SageMaker Python SDK v2's JSON-encoded strings (`\"\\\"resnet50\\\"\"`) work too. Names are "
        "written with dashes (`batch-size`) or underscores (`batch_size`), choices in any case; an unknown "
        "name or a value out of range fails the job with a message that names it.", "",
        markdown_table(TrainConfig, lambda name: name.replace("_", "-"))])


def environment_page() -> str:
    """`docs/reference/environment.md`: the environment variables the containers read, as Markdown."""
    settings = sagemaker_env.ServerSettings
    layout = ["| name | default | description |", "| --- | --- | --- |"]
    layout += [f"| `{name}` | `{default}` | {text} |" if default != "unset" else f"| `{name}` | unset | {text} |"
               for name, (default, text) in sagemaker_env.LAYOUT_VARIABLES.items()]
    return "\n".join([
        "# Environment variables", "", _generated("image_classifier.sagemaker_env"),
        "## Model server", "",
        "Set in the model's `Environment` (CreateModel) or with `docker run -e`. An unset or empty variable "
        "keeps its default; a value that does not parse or is out of range stops the server at start with a "
        "message that names the variable.", "",
        markdown_table(settings, lambda name: str(settings.model_fields[name].validation_alias)),
        "## Training job", "",
        "SageMaker writes the job's settings as files under `/opt/ml/input/config`; these variables relocate "
        "or complement them for local runs.", "",
        "\n".join(layout) + "\n"])


def pages() -> dict[Path, str]:
    """Each reference page's path (relative to the repository root) and its Markdown text."""
    return {HYPERPARAMETERS_PAGE: hyperparameters_page(), ENVIRONMENT_PAGE: environment_page()}


def main(argv: list[str] | None = None) -> int:
    """Write the reference pages under `--root` (default: the current folder); 0 on success.

    With `--check`, write nothing and return 1 when a page differs from its generated text.
    """
    parser = argparse.ArgumentParser(prog=f"python -m {__name__}", description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="the repository root (default: here)")
    parser.add_argument("--check", action="store_true", help="only report pages that differ; exit 1 if any")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not (args.root / "docs").is_dir():
        parser.error(f"{args.root} has no docs/ folder: run this from the repository root, or pass --root")
    stale = []
    for relative, text in pages().items():
        path = args.root / relative
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            continue
        stale.append(relative)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            logger.info("wrote %s", relative)
    if args.check and stale:
        logger.error("out of date: %s; run `%s` to regenerate", ", ".join(map(str, stale)), COMMAND)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
