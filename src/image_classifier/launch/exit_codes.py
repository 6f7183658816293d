"""One place where the errors of a launcher or of a CLI command become an `error:` line and an exit code.

A user's mistake (a bad argument, a request AWS refuses, missing credentials) ends the command
with one line on stderr, `error: <what went wrong and how to mend it>`, and an exit code; never
with a traceback. Each command names the errors it expects in a table, error class → exit code
(or → (exit code, how to describe it)); classes may be named by their dotted path, e.g.
`"botocore.exceptions.ClientError"`, so that this module imports neither boto3 nor requests.
An error the table does not name still ends in a traceback: it is a bug.

Example:
    @exit_on(LAUNCHER)
    def main(argv=None) -> int: ...
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Mapping

FAILED = 1  # AWS, a server or the file system refused
USAGE = 2  # bad arguments, as argparse's own refusals
INTERRUPTED = 130  # Ctrl-C, 128 + SIGINT

CLIENT_ERROR = "botocore.exceptions.ClientError"  # AWS answered with an error
BOTOCORE_ERROR = "botocore.exceptions.BotoCoreError"  # no credentials, no region, no connection, ...

Describe = Callable[[BaseException], str]
Outcome = int | tuple[int, Describe]
Table = Mapping[type | str, Outcome]


def one_line(exc: BaseException) -> str:
    """`str(exc)` with its runs of whitespace (newlines included) made single spaces."""
    return " ".join(str(exc).split())


def aws_error(exc: BaseException) -> str:
    """`Code: Message` of a botocore ClientError (its `response["Error"]`)."""
    error = getattr(exc, "response", {}).get("Error", {})
    return f"{error.get('Code', 'error')}: {error.get('Message', exc)}"


# what every launcher expects: its own ValueErrors are bad arguments, AWS's refusals are failures
LAUNCHER: Table = {ValueError: USAGE, CLIENT_ERROR: (FAILED, one_line), BOTOCORE_ERROR: (FAILED, one_line)}


def _dotted(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def outcome_of(exc: BaseException, table: Table) -> tuple[int, Describe] | None:
    """The (exit code, describe) `table` gives `exc`: the entry of its most specific class, or None.

    The classes of `exc` are tried from its own up its MRO, so an entry for a subclass (e.g.
    invoke's PayloadTooLarge) wins over one for its base (ValueError).
    """
    for cls in type(exc).__mro__:
        for key in (cls, _dotted(cls)):
            if key in table:
                found = table[key]
                return found if isinstance(found, tuple) else (found, str)
    return None


def exit_on(table: Table) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """A decorator: the wrapped function's errors named in `table` print `error: ...` on stderr and
    return their exit code; others propagate.

    Args:
        table: error class (or its dotted path) → exit code, or → (exit code, a function that
            describes the error in one line; default `str`).

    Returns:
        the decorator; the wrapped function returns an `int` exit code either way.
    """
    def decorate(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def guarded(*args, **kwargs) -> int:
            try:
                return main(*args, **kwargs)
            except Exception as exc:
                found = outcome_of(exc, table)
                if found is None:
                    raise
                code, describe = found
                print(f"error: {describe(exc)}", file=sys.stderr)
                return code
        return guarded
    return decorate
