"""User-facing errors.

A `SpecdraftError` is a mistake the user can fix (bad name, bad argument, missing file). The CLI
prints its message on one line and exits with code 2, without a traceback; library callers get
an ordinary exception. Anything else escaping is a bug in specdraft.
"""


class SpecdraftError(Exception):
    """An error caused by input or environment, with a message saying what to do."""
