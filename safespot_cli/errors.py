"""The command line's one error type, and the one way to turn a library's error into it."""

from collections.abc import Iterator
from contextlib import contextmanager


class UsageError(Exception):
    """A mistake the user can fix; printed without a traceback, exit status 2."""


@contextmanager
def usage_errors(*kinds: type[BaseException], prefix: str = "") -> Iterator[None]:
    """Inside, an error of these kinds is the user's to fix: a UsageError with its message."""
    try:
        yield
    except kinds as e:
        raise UsageError(f"{prefix}{e}") from e
