"""launch/exit_codes.py: errors named in a table become one `error:` line and an exit code; others propagate."""

import pytest
from botocore.exceptions import ClientError, NoCredentialsError

from image_classifier.launch.exit_codes import CLIENT_ERROR, FAILED, LAUNCHER, USAGE, aws_error, exit_on, outcome_of

REFUSED = ClientError({"Error": {"Code": "ValidationException", "Message": "no such\n endpoint"}}, "DescribeEndpoint")


class TooLarge(ValueError):
    pass


def failing(exc: BaseException):
    def main() -> int:
        raise exc
    return main


@pytest.mark.parametrize("exc, code, line", [
    (ValueError("--name takes a name"), USAGE, "error: --name takes a name"),
    (REFUSED, FAILED, "error: An error occurred (ValidationException) when calling the DescribeEndpoint "
                      "operation: no such endpoint"),
    (NoCredentialsError(), FAILED, "error: Unable to locate credentials"),
])
def test_launcher_table(capsys, exc, code, line):
    assert exit_on(LAUNCHER)(failing(exc))() == code
    assert capsys.readouterr().err == line + "\n"


def test_the_most_specific_class_wins_and_a_describe_function_is_used(capsys):
    table = {ValueError: USAGE, TooLarge: 3, CLIENT_ERROR: (FAILED, aws_error)}
    assert outcome_of(TooLarge("big"), table) == (3, str)
    assert exit_on(table)(failing(REFUSED))() == FAILED
    assert capsys.readouterr().err == "error: ValidationException: no such\n endpoint\n"


def test_an_error_not_in_the_table_propagates(capsys):
    with pytest.raises(KeyError):
        exit_on(LAUNCHER)(failing(KeyError("bug")))()
    assert capsys.readouterr().err == ""


def test_the_wrapped_function_keeps_its_result_and_name():
    @exit_on(LAUNCHER)
    def main(argv=None) -> int:
        return 7

    assert main() == 7 and main.__name__ == "main"
