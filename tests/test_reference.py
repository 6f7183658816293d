"""Tests for the generated reference pages: the committed ones match the schemas, and they say what they must."""

from __future__ import annotations

from pathlib import Path

import pytest

from image_classifier import reference
from image_classifier.sagemaker_env import ServerSettings
from image_classifier.training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("relative", list(reference.pages()))
def test_committed_page_is_up_to_date(relative):
    path = ROOT / relative
    committed = path.read_text(encoding="utf-8") if path.is_file() else None
    assert committed == reference.pages()[relative], \
        f"{relative} differs from the schema: run `{reference.COMMAND}` to regenerate"


def test_each_hyperparameter_has_a_row_with_its_dashed_name_and_a_description():
    page = reference.hyperparameters_page()
    for name in TrainConfig.field_names():
        assert f"| `{name}` |" in page
    assert all(field.description for field in TrainConfig.model_fields.values())


def test_each_server_variable_has_a_row_and_a_description():
    page = reference.environment_page()
    for field in ServerSettings.model_fields.values():
        assert f"| `{field.validation_alias}` |" in page and field.description


@pytest.mark.parametrize("row", [
    "| `optimizer` | choice | `adam` | one of adam, adamw, sgd |",
    "| `dropout` | float | `0.0` | a number in [0, 1) | probability |",
    "| `batch-size` | int | `32` | a whole number >= 1 | images |",
    "| `head-hidden` | str | `\"\"` |",
    "| `amp` | bool | `true` | true or false |",
])
def test_hyperparameter_rows(row):
    assert row in reference.hyperparameters_page()


@pytest.mark.parametrize("row", [
    "| `SAGEMAKER_MAX_PAYLOAD_IN_MB` | float | `6` | a number > 0 | MB (10^6 bytes) |",
    "| `MODEL_SERVER_MAX_IMAGE_PIXELS` | int | unset | a whole number >= 1 | pixels |",
    "| `SAGEMAKER_BIND_TO_PORT` | int | `8080` | a whole number in [1, 65535] | TCP port |",
])
def test_environment_rows(row):
    assert row in reference.environment_page()


def test_pages_name_the_command_that_regenerates_them():
    for text in reference.pages().values():
        assert text.startswith("# ") and f"run `{reference.COMMAND}` to regenerate" in text


def test_main_writes_the_pages_and_check_reports_drift(tmp_path):
    (tmp_path / "docs").mkdir()
    assert reference.main(["--root", str(tmp_path), "--check"]) == 1
    assert reference.main(["--root", str(tmp_path)]) == 0
    assert reference.main(["--root", str(tmp_path), "--check"]) == 0
    page = tmp_path / reference.HYPERPARAMETERS_PAGE
    page.write_text(page.read_text() + "edited\n")
    assert reference.main(["--root", str(tmp_path), "--check"]) == 1


def test_main_refuses_a_folder_without_docs(tmp_path):
    with pytest.raises(SystemExit):
        reference.main(["--root", str(tmp_path)])
