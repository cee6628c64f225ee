"""The default corpus's math word problems as numeric multiple-choice tasks.

The problems come from the same seeded templates that write the corpus's `math` source
(`backend.corpus.default_corpus.MATH_TEMPLATES`: shopping, distance, fill, discount, growth,
percent-of, remaining, sharing, average, ratio, interest, rectangle, work-together), drawn with a
seed of their own, so the task items are new problems of the kinds the corpus holds.

    math_qa       "Maria buys 3 pens at $2 each ... How much change does Maria get?"  -> "$4"
                  the worked answer's text, numbers and units as the corpus writes them
    math_symbols  the problem's equation with its result asked for and the operators written as
                  ASCII symbols (x for ×, / for ÷): "What is 20 - (3 x 4 + 2 x 1.5)?" -> "5"

Each item has the right answer and 3 distractors (chance 1/4): numbers of the question and
those the solution passes through on the way (the classic lures) and near misses (±1, ±2, ±10,
twice the answer), written in the answer's own format; for answers with two numbers
("3 each, 2 left over") one of them is changed. Choices are in a seeded random order.
"""

from __future__ import annotations

import random
import re

from backend.corpus.default_corpus import MATH_TEMPLATES
from backend.tasks.schema import Item, Task

SEED = 11  # issue 11: the tasks' own seed, distinct from the corpus's (so items are not corpus documents)
N_GENERATED = 600  # items generated per task; the suite takes a seeded subset
N_DISTRACTORS = 3
NUM_RE = re.compile(r"[0-9]+(?:\.[0-9]+)?")
SYMBOLS = {"×": "x", "÷": "/", "−": "-"}  # math_symbols: the corpus's operators -> ASCII symbols


def _fmt_like(x: float, like: str) -> str:
    """x written as the corpus writes numbers: integers bare, others with `like`'s decimals ("2.50") or trimmed."""
    if float(x).is_integer():
        return str(int(x))
    if "." in like:
        return f"{x:.{len(like.split('.')[1])}f}"
    return f"{x:.6f}".rstrip("0").rstrip(".")


def _candidates(value: float, lures: list[float]) -> list[float]:
    near = [value + d for d in (1, -1, 2, -2, 10, -10)] + [value * 2]
    return [c for c in lures + near if c > 0 and abs(c - value) > 1e-9]


def distractors(answer: str, lures: list[float], r: random.Random, k: int = N_DISTRACTORS) -> list[str]:
    """k distinct wrong answers: `answer` with one of its numbers replaced by a lure or a near miss."""
    spans = list(NUM_RE.finditer(answer))
    out: list[str] = []
    for _ in range(200):
        if len(out) == k:
            break
        m = r.choice(spans)
        value = float(m.group())
        pool = _candidates(value, lures)
        like = "0.00" if answer[:m.start()].endswith("$") else m.group()  # money: $2.50, as _money writes it
        cand = answer[:m.start()] + _fmt_like(r.choice(pool), like) + answer[m.end():]
        if cand != answer and cand not in out:
            out.append(cand)
    return out


def _lures(question: str, steps: list[str]) -> list[float]:
    """Numbers a wrong solution would stop at: the question's numbers and the steps' intermediate results."""
    results = re.findall(r"=\s*([0-9]+(?:\.[0-9]+)?)", " ".join(steps))
    return [float(x) for x in NUM_RE.findall(question) + results]


def _item(i: int, question: str, answer: str, lures: list[float], r: random.Random) -> Item | None:
    wrong = distractors(answer, lures, r)
    if len(wrong) < N_DISTRACTORS:
        return None
    choices = [answer] + wrong
    r.shuffle(choices)
    return Item(i, question, tuple(choices), tuple(1.0 if c == answer else 0.0 for c in choices))


def symbolic_question(eq: str) -> tuple[str, str] | None:
    """("What is <lhs>?", rhs) from an `Equation:` line, operators as ASCII symbols; None if it does not check."""
    lhs, _, rhs = eq.split(";")[0].rpartition("=")
    lhs, rhs = lhs.strip(), rhs.strip()
    for sym, ascii_sym in SYMBOLS.items():
        lhs = lhs.replace(sym, ascii_sym)
    if not NUM_RE.fullmatch(rhs) or not re.fullmatch(r"[0-9. ()+\-x/]+", lhs):
        return None
    value = eval(lhs.replace("x", "*"), {"__builtins__": {}}, {})  # noqa: S307 - digits, spaces and + - * / ( ) only
    return (f"What is {lhs}?", rhs) if abs(value - float(rhs)) < 1e-6 else None


def operator_question(r: random.Random) -> tuple[str, int, list[int]]:
    """(question, answer, lures) of one math_operators item: one of x, /, ^, |a - b|, or |a - b| x c."""
    kind = r.choice(("times", "divided", "power", "abs", "abs_times"))
    if kind == "times":
        a, b = r.randint(3, 19), r.randint(3, 12)
        return f"What is {a} x {b}?", a * b, [a + b, a * (b + 1), (a - 1) * b, a * b + 10]
    if kind == "divided":
        b, q = r.randint(2, 12), r.randint(2, 15)
        return f"What is {b * q} / {b}?", q, [b * q - b, q + 1, q - 1, b]
    if kind == "power":
        base, e = r.choice([(b, e) for b in range(2, 10) for e in range(2, 5) if b ** e <= 10_000])
        return f"What is {base} ^ {e}?", base ** e, [base * e, base + e, base ** (e - 1), e ** base]
    a, b = sorted(r.sample(range(1, 31), 2))
    if kind == "abs":
        return f"What is |{a} - {b}|?", b - a, [a - b, a + b, b - a + 1, b - a - 1]
    c = r.randint(2, 9)
    return f"What is |{a} - {b}| x {c}?", (b - a) * c, [(a - b) * c, b - a + c, (b - a) * (c + 1), a - b * c]


def _operator_item(i: int, r: random.Random) -> tuple[str, Item | None]:
    q, ans, lures = operator_question(r)
    wrong = list(dict.fromkeys(str(x) for x in lures if x != ans))[:N_DISTRACTORS]
    if len(wrong) < N_DISTRACTORS:
        return q, None
    choices = [str(ans)] + wrong
    r.shuffle(choices)
    return q, Item(i, q, tuple(choices), tuple(1.0 if c == str(ans) else 0.0 for c in choices))


def make_math_task(name: str, n: int = N_GENERATED, seed: int = SEED) -> Task:
    """`math_qa`, `math_symbols` or `math_operators`: n seeded items (duplicate questions skipped)."""
    if name not in ("math_qa", "math_symbols", "math_operators"):
        raise ValueError(name)
    if name == "math_operators":
        return _operator_task(n, seed)
    r = random.Random(f"{seed}:{name}")
    items: list[Item] = []
    seen: set[str] = set()
    while len(items) < n:
        q, steps, eq, ans = r.choice(MATH_TEMPLATES)(r)
        lures = _lures(q, steps)
        if name == "math_symbols":
            sym = symbolic_question(eq)
            if sym is None:
                continue
            q, ans = sym
        if q in seen:
            continue
        item = _item(len(items), q, ans, lures, r)
        if item is not None:
            seen.add(q)
            items.append(item)
    desc = ("word problems of the default corpus's templates, numeric choices" if name == "math_qa"
            else "the word problems' equations, operators as ASCII symbols (x /), numeric choices")
    return Task(name, items, desc, source=f"backend.corpus.default_corpus.MATH_TEMPLATES, seed {seed}")


def _operator_task(n: int, seed: int) -> Task:
    r = random.Random(f"{seed}:math_operators")
    items: list[Item] = []
    seen: set[str] = set()
    for _ in range(50 * n):  # the question space is finite (~11k): stop rather than loop forever
        if len(items) == n:
            break
        q, item = _operator_item(len(items), r)
        if item is not None and q not in seen:
            seen.add(q)
            items.append(item)
    return Task("math_operators", items, "project-made symbol arithmetic (x / ^ |a - b|), numeric choices with "
                "misreadings among the distractors; not BIG-bench", source=f"backend.tasks.math_tasks.operator_question, seed {seed}")
