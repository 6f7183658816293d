"""What the tuning tests share: a tree of real digits small enough for training jobs of seconds."""

import pytest

from tests.conftest import write_digit_tree
from tests.tuning.postgres import throwaway_server


@pytest.fixture(scope="module")
def tiny_tree(tmp_path_factory):
    """2 classes of real digits: 16 train, 4 valid, 4 test images each."""
    return write_digit_tree(tmp_path_factory.mktemp("digits"), num_classes=2,
                            per_split={"train": 16, "valid": 4, "test": 4})


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL server (`tests.tuning.postgres`): its URL, for SQLAlchemy with psycopg 3."""
    with throwaway_server() as url:
        yield url
