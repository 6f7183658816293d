"""The failure contract: the reason's form, the exit codes, who writes output/failure."""

from __future__ import annotations

import pytest

from image_classifier.sagemaker_env import SageMakerEnv
from image_classifier.training.failure import (
    EXIT_FAILURE,
    EXIT_SIGTERM,
    MAX_FAILURE_REASON,
    TrainingInterrupted,
    clear_failure,
    exit_code,
    failure_reason,
    write_failure,
)


@pytest.mark.parametrize("exc, expected", [
    (ValueError("bad lr"), "ValueError: bad lr"),
    (RuntimeError("two\nlines  and\tspaces"), "RuntimeError: two lines and spaces"),
])
def test_the_reason_is_one_paragraph(exc, expected):
    assert failure_reason(exc) == expected


def test_a_long_reason_is_cut_to_what_sagemaker_keeps():
    reason = failure_reason(ValueError("x" * 5000))
    assert len(reason) == MAX_FAILURE_REASON and reason.endswith("...")


@pytest.mark.parametrize("exc, code", [(TrainingInterrupted("stopped"), EXIT_SIGTERM), (ValueError(), EXIT_FAILURE)])
def test_exit_codes(exc, code):
    assert exit_code(exc) == code


def test_the_first_writer_keeps_its_reason_and_others_overwrite(tmp_path):
    env = SageMakerEnv(base_dir=tmp_path)
    write_failure(env, "the cause", first=True)
    write_failure(env, "a consequence", first=True)
    assert env.failure_path.read_text() == "the cause"
    write_failure(env, "this run's reason")
    assert env.failure_path.read_text() == "this run's reason"
    clear_failure(env)
    clear_failure(env)  # none left: no error
    assert not env.failure_path.exists()
