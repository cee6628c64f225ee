"""A stand-in for the demo build, for the browser test: `python -m tests.fake_builder ROOT [STEP_SECONDS]`.

It reports through the real `backend.common.build_status.BuildReporter` (so the app reads the real status
format) while it writes the fake contract store as `ROOT/demo` in the order the real build does: first the
run (the cache renamed into place), then, a step later, the analysed dictionary (browsable), then its labels.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

from backend.common.build_status import BuildLock, BuildReporter, Step


def main(root: Path, step_s: float) -> None:
    from tests.test_app_pages import FAKE_DICT, FAKE_RUN, make_fake_store

    out = root / "demo"
    staging = root / ".staging"
    make_fake_store(staging)
    steps = [Step("cache", "cache", "cache", prior=10)] + [
        Step(f"{n} {FAKE_DICT}", "dictionary", n, FAKE_DICT, prior=10) for n in ("train", "metrics", "analyze", "explain")]
    with BuildLock(out), BuildReporter(out, steps) as rep:
        rep.start("cache")
        time.sleep(step_s)
        dicts = staging / FAKE_RUN / "dictionaries"
        shutil.move(dicts, staging / "dictionaries")
        os.rename(staging / FAKE_RUN, out)  # the run appears, with no dictionary yet
        rep.finish("cache")
        for n in ("train", "metrics", "analyze"):
            rep.start(f"{n} {FAKE_DICT}")
            time.sleep(step_s)
            rep.finish(f"{n} {FAKE_DICT}")
        os.rename(staging / "dictionaries", out / "dictionaries")  # analysed: browsable
        rep.ready(FAKE_DICT)
        rep.start(f"explain {FAKE_DICT}")
        time.sleep(step_s)
        rep.finish(f"explain {FAKE_DICT}")
        rep.labelled(FAKE_DICT)
    shutil.rmtree(staging, ignore_errors=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 4.0)
