"""User-facing errors.

A `UserError` is a mistake the user can fix (bad path, unknown model, layer out of range).
The CLI prints its message as one line and exits non-zero, never with a traceback;
anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input, reported as one line."""
