"""The command line's one error type."""


class UsageError(Exception):
    """A mistake the user can fix; printed without a traceback, exit status 2."""
