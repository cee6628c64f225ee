"""Names that become paths, and the paths a command writes to: validated here, in one place.

A dictionary name becomes the folder `<run>/dictionaries/<name>/` and the key of its labels in
`labels.duckdb`, so it must be one plain folder name: not empty, no path separator, no NUL or other
control character, not `.`/`..` or hidden (a leading dot marks our temporary folders), not ending in
`.partial` (a folder being built), at most `NAME_MAX` characters. `@` is reserved for archived
dictionaries (`<name>@<UTC time>`, see `archive_name`): a new name may not contain it, an existing
one may. `layout.dict_dir` checks every name it turns into a path.

An output path (`cache --out`, `labels export --out`, ...) is checked before any slow work (the
model load, the training): its nearest existing ancestor must be a writable folder, not a file.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from backend.common.errors import UserError

PARTIAL = ".partial"  # suffix of a folder being built
ARCHIVE_MARK = "@"  # <name>@<time>: an archived dictionary (or run) kept instead of being replaced
NAME_MAX = 100  # characters; far below every file system's limit on one path component


def check_name(name, what: str = "dictionary name", new: bool = True) -> str:
    """`name` if it is one plain folder name (module doc), else a one-line UserError. `new=False` also accepts
    an archived name (with `@`), for reading."""
    if not isinstance(name, str):
        raise UserError(f"{what} must be text, not {type(name).__name__}")
    if not name:
        raise UserError(f"{what} is empty")
    problem = None
    if "/" in name or "\\" in name:
        problem = "it has a path separator (give a plain name, not a path)"
    elif any(ord(c) < 32 or ord(c) == 127 for c in name):
        problem = "it has a control character"
    elif name.startswith("."):
        problem = "it starts with a dot (hidden and temporary folders do)"
    elif name.endswith(PARTIAL):
        problem = f"it ends in {PARTIAL} (folders being built do)"
    elif name != name.strip():
        problem = "it starts or ends with a space"
    elif len(name) > NAME_MAX:
        problem = f"it is longer than {NAME_MAX} characters"
    elif new and ARCHIVE_MARK in name:
        problem = f"{ARCHIVE_MARK!r} is reserved for archived dictionaries"
    if problem:
        raise UserError(f"bad {what} {name!r}: {problem}")
    return name


def check_dict_name(name, new: bool = True) -> str:
    """A dictionary name (module doc); `new=True` for a dictionary about to be made."""
    return check_name(name, "dictionary name", new=new)


def archive_name(folder: Path) -> Path:
    """A free sibling `<name>@<UTC time>` of `folder` to keep it under instead of replacing it."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out, i = folder.with_name(f"{folder.name}{ARCHIVE_MARK}{stamp}"), 2
    while out.exists():
        out, i = folder.with_name(f"{folder.name}{ARCHIVE_MARK}{stamp}-{i}"), i + 1
    return out


def check_output(path, what: str = "--out", folder: bool = True) -> Path:
    """The path a command will create (a folder, or a file with `folder=False`), checked before any slow work:
    not empty, not an existing thing of the other kind, and under a folder this process may write in."""
    if path is None or str(path) == "":
        raise UserError(f"{what} is empty")
    p = Path(path).expanduser()
    if p.exists() and p.is_dir() != folder:
        raise UserError(f"{what} {p} exists and is a {'file' if folder else 'folder'}; give a {'folder' if folder else 'file'} path")
    parent = p.parent  # where temporary siblings and the final rename happen
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"cannot create {what} {p}: {parent} is a file, not a folder")
    for place in (parent, p) if p.is_dir() else (parent,):  # an existing folder is also written into
        if not os.access(place, os.W_OK | os.X_OK):
            raise UserError(f"cannot write {what} {p}: no permission to write in {place}")
    return p
