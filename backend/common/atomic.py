"""Write-then-rename helpers, so a killed process never leaves a half-written store.

A write that fails because the disk is full, a file-size limit is reached or the folder is not
writable becomes one `UserError` line naming the destination; the temporary sibling is removed and
the destination is left as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from backend.common.errors import UserError, write_failure


@contextlib.contextmanager
def atomic_path(dest: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling path; on success rename it onto `dest` (file or folder)."""
    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    except OSError as e:
        raise UserError(f"cannot write {dest}: {e.strerror or e}") from None
    target = tmp / dest.name
    try:
        yield target
        replace_path(target, dest)
    except Exception as e:
        why = write_failure(e)
        if why is None:
            raise
        raise UserError(f"cannot write {dest}: {why}; it was left as it was") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def replace_path(src: Path, dest: Path) -> None:
    """Move `src` onto `dest`; an existing folder at `dest` is moved aside first and removed after."""
    if dest.is_dir() and not dest.is_symlink():
        old = dest.with_name(f".{dest.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dest, old)
        os.replace(src, dest)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dest)


def write_json(dest: str | Path, obj) -> None:
    """Atomically write `obj` as indented JSON."""
    with atomic_path(dest) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def read_json(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())
