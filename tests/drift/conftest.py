"""The AWS emulator of the launcher tests, reused (not copied) for the S3 capture tests."""

from tests.launch.conftest import aws, moto_url  # noqa: F401  (fixtures: pytest finds them by name here)
