"""How a long build (the demo store) reports while it runs: a status file, a pid lock, a log.

A build of the run folder `<out>` keeps its bookkeeping beside the run, in `<out>.build/`:

    status.json   what the build is doing, written atomically every couple of seconds (below)
    lock          the pid of the one process building `<out>` (created with O_EXCL; stale once that pid is dead)
    build.log     stdout and stderr of a build started in the background

Beside the run, not inside it: the run folder appears only when `cache` renames `<out>.partial` onto it,
and the app has to show the build from its first second (and `cache` refuses an `<out>` that holds
anything but a run).

status.json: `out`, `pid`, `started`, `updated` (unix seconds), `log`, `state` (running | done | failed),
`error`, `step` (the running step's key), `stage` (corpus | model | cache | dictionary | compare), `dictionary`,
`step_name` (train | metrics | analyze | explain | index | score), `step_progress` (0..1 or null), `progress`
(0..1, over the whole build), `eta_seconds`, `ready` (dictionaries whose analysis is written: browsable),
`labelled` (dictionaries explained), `steps` (every step: key, stage, name, dictionary, prior, state, seconds).
`read_status` adds `alive` and turns a running build whose process is gone into `state` "stopped".

Progress inside a step comes from the tqdm bar the step already draws (cache, train, analyze, explain,
score all have one): a reporter thread reads the newest live bar's n / total. The estimate of the time
left is measured, not guessed: each step has a prior cost (seconds on an idle 2-core machine), the
steps done so far give the ratio of measured to prior time (this machine's speed today), the running
step's own rate gives its remainder once a tenth of it is done.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from backend.common.atomic import read_json, write_json
from backend.common.errors import UserError

BUILD_SUFFIX = ".build"
STATUS, LOCK, LOG = "status.json", "lock", "build.log"
REPORT_EVERY_S = 2.0  # how often the reporter thread rewrites status.json (the Overview polls about as often)
MIN_FRACTION = 0.1  # a step's own rate is trusted once this fraction of it is done


def build_dir(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + BUILD_SUFFIX)


def status_path(out: str | Path) -> Path:
    return build_dir(out) / STATUS


def log_path(out: str | Path) -> Path:
    return build_dir(out) / LOG


def pid_alive(pid) -> bool:
    """Whether process `pid` exists (and, where /proc tells, is not a zombie)."""
    try:
        pid = int(pid)
        os.kill(pid, 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


# --------------------------------------------------------------------------- the lock: one build at a time


def lock_holder(out: str | Path) -> int | None:
    """The pid of the live process building `out`, or None (no lock, or a stale one)."""
    try:
        pid = int((build_dir(out) / LOCK).read_text().strip() or 0)
    except (OSError, ValueError):
        return None
    return pid if pid and pid_alive(pid) else None


class BuildLock:
    """`with BuildLock(out):` holds `<out>.build/lock` for this process, or raises UserError naming the holder.

    The lock file is created with O_EXCL (atomic); a lock left by a dead process (a killed build) is stale
    and taken over, so a killed build never blocks the next one.
    """

    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.path = build_dir(out) / LOCK
        self.held = False

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = lock_holder(self.out)
                if holder is not None and holder != os.getpid():
                    raise UserError(f"a build of {self.out} is already running (pid {holder}); "
                                    f"its log: {log_path(self.out)}") from None
                try:
                    self.path.unlink()  # stale: its process is gone
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as fh:
                fh.write(f"{os.getpid()}\n")
            self.held = True
            return
        raise UserError(f"cannot take the build lock {self.path}")

    def release(self) -> None:
        if self.held:
            try:
                if self.path.read_text().strip() == str(os.getpid()):
                    self.path.unlink()
            except OSError:
                pass
            self.held = False

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


# --------------------------------------------------------------------------- steps and the estimate of time left


@dataclass
class Step:
    """One step of a build: `prior` is its expected seconds on an idle 2-core machine (only ratios matter)."""

    key: str
    stage: str
    name: str
    dictionary: str | None = None
    prior: float = 1.0
    state: str = "pending"  # pending | running | done | skipped | failed
    seconds: float | None = None
    started: float | None = None


def estimate(steps: list[Step], now: float, fraction: float | None) -> tuple[float, float | None]:
    """(progress 0..1, seconds left or None) of a build whose running step is `fraction` done (None: unknown).

    Work is counted in prior seconds. speed = measured / prior over the steps that ran to the end (1 before any
    has); the running step's remainder is its own elapsed * (1 - f) / f once f >= MIN_FRACTION, else its
    prior * speed less its elapsed time; each pending step costs prior * speed.
    """
    total = sum(s.prior for s in steps) or 1.0
    ran = [s for s in steps if s.state == "done" and s.seconds is not None and s.prior > 0]
    speed = (sum(s.seconds for s in ran) / sum(s.prior for s in ran)) if ran else 1.0
    done_work, left = 0.0, 0.0
    for s in steps:
        if s.state in ("done", "skipped"):
            done_work += s.prior
        elif s.state == "running":
            elapsed = max(0.0, now - (s.started or now))
            expected = s.prior * speed
            f = min(max(fraction, 0.0), 1.0) if fraction is not None else None
            if f is not None and f >= MIN_FRACTION:
                left += elapsed * (1 - f) / f
            else:  # too early to trust its own rate (or it has no bar): its prior, never less than a tenth of it
                left += max(expected - elapsed, 0.1 * expected)
                if f is None:
                    f = min(elapsed / expected, 0.9) if expected > 0 else 0.0
            done_work += s.prior * f
        elif s.state == "pending":
            left += s.prior * speed
    if any(s.state == "failed" for s in steps):
        return done_work / total, None
    return min(done_work / total, 1.0), left


def live_fraction(since: float) -> float | None:
    """n / total of the newest live tqdm bar started after `since` (the running step's own bar), or None."""
    best, best_t = None, since
    # tqdm keeps its live bars in a class-level WeakSet and offers no public registry; read it, and report no
    # in-step progress (the estimate falls back to the step's prior) should a tqdm release drop it
    for bar in list(getattr(tqdm, "_instances", ())):
        total, start = getattr(bar, "total", None), getattr(bar, "start_t", 0.0)
        if total and not getattr(bar, "disable", False) and start >= best_t:
            best, best_t = min(float(bar.n) / float(total), 1.0), start
    return best


# --------------------------------------------------------------------------- the reporter


class BuildReporter:
    """Writes `<out>.build/status.json` for a build of `steps`: on every step change and every REPORT_EVERY_S.

        with BuildReporter(out, steps) as rep:
            rep.start("cache"); ...; rep.finish("cache")       # or rep.skip("cache") when its output exists
            rep.ready("topk")                                  # analysed: browsable
    A failure inside the `with` is recorded (state failed, error) and re-raised.
    """

    def __init__(self, out: str | Path, steps: list[Step], log: str | Path | None = None):
        self.out, self.path = Path(out), status_path(out)
        self.steps = {s.key: s for s in steps}
        self.log = str(log) if log else None
        self.started = time.time()
        self.state, self.error = "running", None
        self.current: str | None = None
        self.ready_dicts: list[str] = []
        self.labelled_dicts: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # step transitions
    def start(self, key: str) -> None:
        with self._lock:
            s = self.steps[key]
            s.state, s.started, self.current = "running", time.time(), key
        self.write()

    def finish(self, key: str) -> None:
        with self._lock:
            s = self.steps[key]
            s.state, s.seconds = "done", round(time.time() - (s.started or time.time()), 1)
            self.current = None
        self.write()

    def skip(self, key: str) -> None:
        with self._lock:
            self.steps[key].state = "skipped"
        self.write()

    def ready(self, dictionary: str) -> None:
        with self._lock:
            if dictionary not in self.ready_dicts:
                self.ready_dicts.append(dictionary)
        self.write()

    def labelled(self, dictionary: str) -> None:
        with self._lock:
            if dictionary not in self.labelled_dicts:
                self.labelled_dicts.append(dictionary)
        self.write()

    def snapshot(self) -> dict:
        now = time.time()
        cur = self.steps.get(self.current) if self.current else None
        frac = live_fraction(cur.started) if cur and cur.started else None
        progress, eta = estimate(list(self.steps.values()), now, frac)
        if self.state == "done":
            progress, eta = 1.0, 0.0
        return {
            "out": str(self.out), "pid": os.getpid(), "started": self.started, "updated": now, "log": self.log,
            "state": self.state, "error": self.error, "step": cur.key if cur else None,
            "stage": cur.stage if cur else None, "dictionary": cur.dictionary if cur else None,
            "step_name": cur.name if cur else None, "step_progress": frac,
            "progress": round(progress, 4), "eta_seconds": None if eta is None else round(eta, 1),
            "ready": list(self.ready_dicts), "labelled": list(self.labelled_dicts),
            "steps": [asdict(s) for s in self.steps.values()],
        }

    def write(self) -> None:
        with self._lock:
            snap = self.snapshot()
            try:
                write_json(self.path, snap)
            except OSError:
                pass  # a status file is a courtesy: never let it stop the build

    # the thread and the context manager
    def _loop(self) -> None:
        while not self._stop.wait(REPORT_EVERY_S):
            self.write()

    def __enter__(self):
        self.write()
        self._thread = threading.Thread(target=self._loop, name="build-status", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            if exc is None:
                self.state = "done"
            else:
                self.state = "failed"
                self.error = "interrupted" if isinstance(exc, KeyboardInterrupt) else (str(exc) or type(exc).__name__)
                if self.current:
                    self.steps[self.current].state = "failed"
        self.write()
        return False


# --------------------------------------------------------------------------- reading (the app)


def read_status(out: str | Path) -> dict | None:
    """status.json of the build of `out` plus `alive`; a "running" build whose process is gone reads
    "stopped" (killed: the next build resumes it). None when `out` was never built this way."""
    p = status_path(out)
    try:
        st = read_json(p)
    except (OSError, ValueError):
        return None
    st["alive"] = pid_alive(st.get("pid"))
    if st.get("state") == "running" and not st["alive"]:
        st["state"] = "stopped"
    return st


def find_builds(root: str | Path) -> list[Path]:
    """Run folders under `root` (one level) that have a build status, newest status first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p.parent for p in root.glob(f"*{BUILD_SUFFIX}/{STATUS}")]
    found.sort(key=lambda p: -(p / STATUS).stat().st_mtime)
    return [p.with_name(p.name[: -len(BUILD_SUFFIX)]) for p in found]
