"""Replacing a dictionary without losing its labels: archive, then publish.

Labels are keyed by dictionary name in `<run>/labels.duckdb`. A new dictionary made under a name that
has labels (`train --force`, `import`, the demo's rebuild, or a name whose old folder was deleted by
hand) has unrelated features, so the old labels must not attach to it. Before the new folder takes the
name, `archive_dictionary` keeps the old work under `<name>@<UTC time>`:

- in labels.duckdb, every label, score, verdict and proposal of `<name>` is re-keyed to `<name>@<time>` in
  one transaction, and a row of the `archives` table records the move with the SHA-256 of the old
  folder's cfg.json (which dictionary the labels describe);
- the old folder `dictionaries/<name>/`, when there is one, is renamed to `dictionaries/<name>@<time>/`,
  so the old dictionary stays browsable with its labels in the app.

A name without labels is simply replaced: that is what `--force` asks for. `publish_dictionary` then
moves the finished, measured folder onto the name (the old one stays until then).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from backend.common.atomic import replace_path
from backend.common.errors import UserError
from backend.common.layout import CFG_JSON, PARTIAL, dict_dir
from backend.common.names import archive_name
from backend.store.label_store import LabelStore


def cfg_sha256(folder: Path) -> str | None:
    p = Path(folder) / CFG_JSON
    return hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None


def archive_dictionary(run_dir: str | Path, name: str, reason: str) -> str | None:
    """Keep the labels of dictionary `name` (and its folder, if any) under `<name>@<time>`; returns that name, or
    None when `name` has no labels (nothing to keep apart)."""
    store = LabelStore(run_dir)
    if not store.exists() or store.rows_of(name) == 0:
        return None
    folder = dict_dir(run_dir, name)
    target = archive_name(folder)
    store.rename_dictionary(name, target.name, cfg_sha256(folder), reason)
    if folder.exists():
        try:
            os.replace(folder, target)
        except OSError as e:
            store.rename_dictionary(target.name, name, cfg_sha256(folder), f"undone: {e.strerror or e}")
            raise UserError(f"cannot keep the old dictionary {name!r} apart ({e.strerror or e}); nothing was changed") from None
    return target.name


def publish_dictionary(run_dir: str | Path, name: str, staging: Path) -> Path:
    """Make the finished folder `staging` the dictionary `name`: the old one's labels (and folder) are archived
    first when it has any (one line says where), else the old folder is replaced. The build's partial folder
    `<name>.partial/` is removed. Returns the dictionary folder."""
    final = dict_dir(run_dir, name)
    had_folder = final.exists()
    kept = archive_dictionary(run_dir, name, reason=f"replaced by a new dictionary {name!r}")
    if kept:
        what = "the old dictionary and its labels are" if had_folder else "labels of an earlier dictionary of that name are"
        print(f"note: {name!r} had labels: {what} kept as {kept!r}; the new {name!r} starts unlabelled")
    replace_path(Path(staging), final)
    shutil.rmtree(final.with_name(final.name + PARTIAL), ignore_errors=True)
    return final
