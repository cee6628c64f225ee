"""User-facing errors.

A `UserError` is a problem the user can fix (bad path, unknown model, layer out of range, a corrupt
or truncated file, a full disk). The CLI prints its message as one line and exits with status 2, the
app shows it as one message; never a traceback. Anything else is a bug and keeps its traceback.

Failed writes arrive as many types (OSError from Python and NumPy, Arrow's and DuckDB's IO errors,
safetensors' SafetensorError, torch's RuntimeError); `write_failure` recognises them by errno or by
the operating system's words, so every writer can turn them into one line.
"""

from __future__ import annotations

import errno
import re

WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}
WRITE_WORDS = ("no space left", "file too large", "disk quota", "read-only file system", "permission denied",
               "filetoolarge", "storagefull", "file write failed")
SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")  # NumPy's fwrite that stopped early (no errno)


class UserError(Exception):
    """A problem with the user's input or environment, reported as one line."""


def first_line(e: BaseException) -> str:
    """The first non-empty line of an exception's message (its type name when it has none)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return lines[0] if lines else type(e).__name__


def write_failure(e: BaseException) -> str | None:
    """Why a write failed, in the system's words ("No space left on device"), when `e` is a failed write
    (disk full, file-size limit, quota, read-only or forbidden); None for any other error."""
    if isinstance(e, OSError) and e.errno in WRITE_ERRNOS:
        return e.strerror or first_line(e)
    text = str(e).lower()
    if SHORT_WRITE.search(text):
        return f"short write ({SHORT_WRITE.search(text).group(0)}): the disk is full or a file-size limit was reached"
    for words in WRITE_WORDS:
        if words in text:
            return {"filetoolarge": "file too large", "storagefull": "no space left on device"}.get(words, words).capitalize()
    return None
