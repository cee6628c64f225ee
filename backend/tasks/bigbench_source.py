"""BIG-bench tasks from the PyPI sdist `bigbench==0.0.1` (Apache-2.0), generated at set-up.

PyPI serves no `bigbench==1.0.0` and the 0.0.1 sdist holds no task JSON files: it carries the API
and the programmatic tasks (Python). Two kinds of them give multiple-choice items without the
network or extra packages, and we generate those with their own fixed seeds:

    arithmetic/generate_examples.py   the script that wrote BIG-bench's arithmetic/*/task.json
                                      (seed 42; "What is 12 plus 7?" with the answer, 3-4 wrong
                                      numbers, "banana" and "house"); run as it is, 19 subtasks
    boolean_expressions, web_of_lies, dynamic_counting
                                      programmatic tasks whose queries are recorded
                                      (bigbench_record.py) and checked by an oracle run

Set-up: `python -m backend tasks fetch` (also done lazily on first use) runs
`pip download --no-deps --no-binary :all: bigbench==0.0.1` into data/tasks/, checks the
tarball's sha256, extracts only the files listed in `MEMBERS` into a temporary folder, runs the
generators there in child processes and writes BIG-bench JSON task files under
data/tasks/bigbench/<task>/task.json (arithmetic: arithmetic/<subtask>/task.json). Nothing of it
is committed. BIG-bench's metaphor and figure-of-speech tasks are JSON-only and not in the sdist.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from backend.common.atomic import atomic_path, write_json
from backend.common.errors import UserError
from backend.common.layout import DATA_DIR, REPO_ROOT

TASKS_DIR = Path(os.environ.get("FEATURE_EXPLORER_TASKS", DATA_DIR / "tasks"))
SDIST = "bigbench-0.0.1.tar.gz"
SDIST_SPEC = "bigbench==0.0.1"
SDIST_SHA256 = "b9e26039040dff2815f2fa5dc20ca0c8dc02052cecded82ad7eb17dbd9e8f182"
PROGRAMMATIC = ("boolean_expressions", "web_of_lies", "dynamic_counting")
ARITHMETIC_SCRIPT = "bigbench/benchmark_tasks/arithmetic/generate_examples.py"
MEMBERS = ["bigbench/__init__.py", "bigbench/api/__init__.py", "bigbench/api/task.py", "bigbench/api/model.py",
           "bigbench/benchmark_tasks/__init__.py", ARITHMETIC_SCRIPT,
           *(f"bigbench/benchmark_tasks/{t}/task.py" for t in PROGRAMMATIC)]
MANIFEST = "manifest.json"
ARITHMETIC = tuple(f"arithmetic.{d}_digit_{op}" for d in range(1, 6)
                   for op in ("addition", "subtraction", "multiplication", "division"))
KNOWN_TASKS = ARITHMETIC + PROGRAMMATIC  # what generate_bigbench_tasks writes (known before it runs)


def bigbench_dir(root: Path | None = None) -> Path:
    return Path(root or TASKS_DIR) / "bigbench"


def fetch_sdist(root: Path | None = None) -> Path:
    """The sdist tarball under data/tasks/, downloaded with pip once (sha256 checked every time)."""
    root = Path(root or TASKS_DIR)
    dest = root / SDIST
    if not dest.is_file():
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".pip-download.", dir=root) as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--disable-pip-version-check",
                   "-q", SDIST_SPEC, "-d", tmp]
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            except (OSError, subprocess.TimeoutExpired) as e:
                raise UserError(f"cannot download {SDIST_SPEC} ({type(e).__name__}); PyPI must be reachable once, "
                                f"or put {SDIST} in {root}") from None
            got = Path(tmp) / SDIST
            if proc.returncode != 0 or not got.is_file():
                err = " ".join((proc.stderr or proc.stdout or "").split())[-200:]
                raise UserError(f"cannot download {SDIST_SPEC} (pip exit {proc.returncode}: {err or 'no output'}); "
                                f"PyPI must be reachable once, or put {SDIST} in {root}")
            _check_sha256(got)
            os.replace(got, dest)
    _check_sha256(dest)
    return dest


def _check_sha256(path: Path) -> None:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        raise UserError(f"{path} has sha256 {digest[:12]}..., expected {SDIST_SHA256[:12]}...; delete it and fetch again")


def extract_members(tarball: Path, dest: Path) -> Path:
    """Extract only MEMBERS (as regular files, by their fixed names) into dest; returns the sdist root there."""
    root = dest / "bigbench-0.0.1"
    with tarfile.open(tarball, "r:gz") as tf:
        for name in MEMBERS:
            try:
                member = tf.getmember(f"bigbench-0.0.1/{name}")
            except KeyError:
                raise UserError(f"{tarball} lacks {name}: not the bigbench 0.0.1 sdist") from None
            if not member.isfile():
                raise UserError(f"{tarball}: {name} is not a regular file")
            out = root / name
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(tf.extractfile(member).read())
    return root


def _run(cmd: list[str], cwd: Path, pythonpath: Path, what: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(pythonpath), str(REPO_ROOT)]), "PYTHONHASHSEED": "0"}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        last = (proc.stderr or proc.stdout or "").strip().splitlines()[-1:] or ["no output"]
        raise UserError(f"generating BIG-bench {what} failed: {last[0]}")


def generate_bigbench_tasks(root: Path | None = None, force: bool = False) -> Path:
    """Write data/tasks/bigbench/ (task JSON files + manifest.json) once; returns that folder."""
    out = bigbench_dir(root)
    if (out / MANIFEST).is_file() and not force:
        return out
    tarball = fetch_sdist(root)
    with tempfile.TemporaryDirectory(prefix="bigbench-gen.") as tmp, atomic_path(out) as staged:
        sdist = extract_members(tarball, Path(tmp))
        work = Path(tmp) / "arithmetic"
        work.mkdir()
        _run([sys.executable, str(sdist / ARITHMETIC_SCRIPT)], work, sdist, "arithmetic")
        tasks = {}
        for task_json in sorted(work.glob("*/task.json")):
            dest = staged / "arithmetic" / task_json.parent.name / "task.json"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(task_json, dest)
            tasks[f"arithmetic.{task_json.parent.name}"] = str(dest.relative_to(staged))
        for name in PROGRAMMATIC:
            dest = staged / name / "task.json"
            dest.parent.mkdir(parents=True)
            _run([sys.executable, "-m", "backend.tasks.bigbench_record", name, str(dest)], Path(tmp), sdist, name)
            tasks[name] = str(dest.relative_to(staged))
        write_json(staged / MANIFEST, {"sdist": SDIST_SPEC, "sha256": SDIST_SHA256, "licence": "Apache-2.0",
                                       "generated_with": sys.version.split()[0], "tasks": tasks})
    return out


def bigbench_tasks(root: Path | None = None, fetch: bool = True) -> dict[str, Path]:
    """{task name: task.json path} of the generated BIG-bench tasks (generating them first if `fetch`)."""
    out = bigbench_dir(root)
    if not (out / MANIFEST).is_file():
        if not fetch:
            return {}
        generate_bigbench_tasks(root)
    manifest = json.loads((out / MANIFEST).read_text())
    return {name: out / rel for name, rel in manifest["tasks"].items()}
