"""A guided tour of a run's features: `<run>/tour.json`, an ordered list of stops a researcher picked for an expert.

    {"stops": [{"dictionary", "feature", "note", "added_by", "added_at"}, ...],
     "history": [{"stops": [...], "replaced_at", "by", "action"}, ...],  # every earlier version, oldest first
     "version": n}

Like labels, a tour is people's work: every change (add, move, remove, edit a note) keeps the version it
replaces in `history`, so nothing is lost, and `restore(run, i)` brings an old version back as a new one.
The file is small and written atomically (write, then rename) under an exclusive `flock`, so two sessions
(Streamlit threads, or two processes) never lose each other's change.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from backend.common.atomic import write_json
from backend.common.errors import UserError
from backend.common.layout import check_dict_name, dictionary_names

TOUR_JSON = "tour.json"
MAX_NOTE = 2000  # characters of a stop's note
MAX_STOPS = 500
MAX_HISTORY = 1000  # versions kept; older ones are dropped first (a tour that changed a thousand times)

_thread_lock = threading.Lock()  # flock is per open file, not per thread: serialise this process's threads too


def tour_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / TOUR_JSON


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def load_tour(run_dir: str | Path) -> dict:
    """The tour of a run ({"stops": [], "history": [], "version": 0} before any stop was added)."""
    p = tour_path(run_dir)
    if not p.is_file():
        return {"stops": [], "history": [], "version": 0}
    try:
        tour = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{p} is not a readable tour file: {e}") from None
    if not isinstance(tour, dict) or not isinstance(tour.get("stops"), list):
        raise UserError(f"{p} is not a tour file (no list of stops)")
    tour.setdefault("history", [])
    tour.setdefault("version", len(tour["history"]))
    return tour


def stops(run_dir: str | Path) -> list[dict]:
    return list(load_tour(run_dir)["stops"])


@contextlib.contextmanager
def _locked(run_dir: str | Path) -> Iterator[None]:
    lock = Path(run_dir) / (TOUR_JSON + ".lock")
    with _thread_lock, open(lock, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _change(run_dir: str | Path, author: str, action: str, edit) -> list[dict]:
    """Apply `edit(stops) -> new stops` and save, keeping the old version in the history; returns the new stops."""
    author = str(author or "").strip()
    if not author:
        raise UserError("say who you are: every change to the tour records its author")
    if not Path(run_dir).is_dir():
        raise UserError(f"run folder not found: {run_dir}")
    with _locked(run_dir):
        tour = load_tour(run_dir)
        new = edit([dict(s) for s in tour["stops"]])
        if len(new) > MAX_STOPS:
            raise UserError(f"a tour holds at most {MAX_STOPS} stops")
        history = tour["history"] + [{"stops": tour["stops"], "replaced_at": _now(), "by": author, "action": action}]
        write_json(tour_path(run_dir), {"stops": new, "history": history[-MAX_HISTORY:],
                                        "version": int(tour["version"]) + 1})
    return new


def _stop_index(stops_: list[dict], index) -> int:
    try:
        i = int(index)
    except (TypeError, ValueError):
        raise UserError(f"stop number must be an integer, got {index!r}") from None
    if not 0 <= i < len(stops_):
        raise UserError(f"the tour has no stop {i + 1} (it has {len(stops_)})")
    return i


def _note(note) -> str:
    note = str(note or "").strip()
    if len(note) > MAX_NOTE:
        raise UserError(f"a note holds at most {MAX_NOTE} characters, got {len(note)}")
    return note


def add_stop(run_dir: str | Path, dictionary: str, feature: int, note: str = "", author: str = "") -> int:
    """Append feature `feature` of `dictionary` to the tour; returns its position (0-based). A feature already
    in the tour is refused with a message (edit its note instead)."""
    check_dict_name(dictionary)
    if dictionary not in dictionary_names(run_dir):
        raise UserError(f"no dictionary {dictionary!r} in {run_dir}")
    try:
        feature = int(feature)
    except (TypeError, ValueError):
        raise UserError(f"feature must be an integer, got {feature!r}") from None
    if feature < 0:
        raise UserError(f"feature must be >= 0, got {feature}")
    note = _note(note)

    def edit(s: list[dict]) -> list[dict]:
        at = next((i for i, x in enumerate(s) if x["dictionary"] == dictionary and int(x["feature"]) == feature), None)
        if at is not None:
            raise UserError(f"feature {feature} of {dictionary} is already stop {at + 1} of the tour")
        return s + [{"dictionary": dictionary, "feature": feature, "note": note, "added_by": str(author).strip(),
                     "added_at": _now()}]

    return len(_change(run_dir, author, f"add {dictionary}/{feature}", edit)) - 1


def move_stop(run_dir: str | Path, index: int, offset: int, author: str) -> list[dict]:
    """Move stop `index` by `offset` places (-1: earlier, +1: later), clamped to the ends."""
    def edit(s: list[dict]) -> list[dict]:
        i = _stop_index(s, index)
        j = min(max(i + int(offset), 0), len(s) - 1)
        s.insert(j, s.pop(i))
        return s

    return _change(run_dir, author, f"move stop {int(index) + 1} by {int(offset):+d}", edit)


def remove_stop(run_dir: str | Path, index: int, author: str) -> list[dict]:
    def edit(s: list[dict]) -> list[dict]:
        s.pop(_stop_index(s, index))
        return s

    return _change(run_dir, author, f"remove stop {int(index) + 1}", edit)


def set_note(run_dir: str | Path, index: int, note: str, author: str) -> list[dict]:
    note = _note(note)

    def edit(s: list[dict]) -> list[dict]:
        s[_stop_index(s, index)]["note"] = note
        return s

    return _change(run_dir, author, f"note of stop {int(index) + 1}", edit)


def restore(run_dir: str | Path, version: int, author: str) -> list[dict]:
    """Make history entry `version` (0 = the oldest) the current tour again (itself a new version)."""
    history = load_tour(run_dir)["history"]
    i = _stop_index(history, version)
    return _change(run_dir, author, f"restore version {i}", lambda s: [dict(x) for x in history[i]["stops"]])
