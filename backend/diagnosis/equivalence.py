"""Is a reformulation the same question? Checked before it is used; rejections are counted.

Yang et al. 2025 ask a second LLM. Offline we check:
  - meaning: cosine of the all-MiniLM-L6-v2 embeddings of the two prompts >= `min_cosine`;
  - for math: the same numbers (a multiset: 12, 2.50, 7 ...; "2.50" equals "2.5") and the same
    operations (a multiset of add, sub, mul, div, pow, abs, percent, whether written as a symbol,
    "x" between numbers, or a word: "times", "divided by", "to the power of", "the absolute value of");
  - with an OpenAI-compatible endpoint, also a Yes/No question to that model (the local 135M model
    judges Yes/No at chance on label scoring, README, so it is not asked).
A reformulation that changes a number, drops an operation or drifts in meaning is rejected.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

NUMBER = re.compile(r"(?<![0-9.])[0-9]+(?:\.[0-9]+)?")
NUMBER_WORDS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty".split())}
_OPERAND_L, _OPERAND_R = r"(?<=[0-9)|])\s*", r"\s*(?=[0-9(|])"
OPERATIONS: dict[str, list[str]] = {  # canonical op -> patterns (matched case-insensitively, counted)
    "pow": [_OPERAND_L + r"(?:\^|\*\*)" + _OPERAND_R, r"\bto the power of\b", r"\bsquared\b", r"\bcubed\b"],
    "mul": [_OPERAND_L + r"(?:×|\*(?!\*)|·)" + _OPERAND_R, r"(?<=[0-9)|])(?:\s+x\s+|x(?=[0-9]+\b))(?=[0-9(|])",
            r"\btimes\b", r"\bmultiplied by\b", r"\bproduct of\b"],
    "div": [_OPERAND_L + r"(?:/|÷)" + _OPERAND_R, r"\bdivided by\b", r"\bquotient of\b"],
    "add": [r"\+", r"\bplus\b", r"\bsum of\b", r"\badded to\b"],
    "sub": [_OPERAND_L + r"[-−]" + _OPERAND_R, r"\bminus\b", r"\bsubtract(?:ed)?\b", r"\bdifference (?:of|between)\b"],
    "abs": [r"\|[^|]+\|", r"\babsolute value of\b"],
    "percent": [r"%", r"\bpercent\b"],
}
_COMPILED = {op: [re.compile(p, re.IGNORECASE) for p in pats] for op, pats in OPERATIONS.items()}
MIN_COSINE = 0.6
"""MiniLM's cosine of a short question and its rule rewrite is 0.73-0.99 ("What is 7 x 8?" vs "What is 7 times 8?":
0.73, "2 ^ 5" vs "2 to the power of 5": 0.79, a word problem with "$" and "%" spelled out: 0.99), while another
question of the same form scores 0.42 ("What is 3 plus 4?"). The number and operation checks are the strict part for
math ("What is 7 x 9?": cosine 0.91, rejected for its number); the cosine guards against a reformulator that drifts."""


def numbers(text: str) -> Counter:
    """Multiset of the numbers in `text` (digits, and the number words zero..twenty), as floats."""
    out = Counter(float(m.group()) for m in NUMBER.finditer(text))
    for w in re.findall(r"[A-Za-z]+", text.lower()):
        if w in NUMBER_WORDS:
            out[float(NUMBER_WORDS[w])] += 1
    return out


def operations(text: str) -> Counter:
    """Multiset of the arithmetic operations written in `text`, by canonical name."""
    out: Counter = Counter()
    rest = text
    for op, pats in _COMPILED.items():  # pow before mul: "**" must not count as two multiplications
        for p in pats:
            n = len(p.findall(rest))
            if n:
                out[op] += n
                rest = p.sub(" ", rest)
    return out


@dataclass
class Verdict:
    accepted: bool
    cosine: float
    same_numbers: bool | None  # None when the domain does not check numbers
    same_operations: bool | None
    llm_yes: bool | None = None  # None when no LLM was asked
    reasons: list[str] = field(default_factory=list)  # why it was rejected (empty when accepted)

    def describe(self) -> str:
        parts = [f"cosine {self.cosine:.2f}"]
        if self.same_numbers is not None:
            parts.append("same numbers" if self.same_numbers else "numbers differ")
            parts.append("same operations" if self.same_operations else "operations differ")
        if self.llm_yes is not None:
            parts.append(f"LLM says {'yes' if self.llm_yes else 'no'}")
        return ("accepted: " if self.accepted else "rejected: ") + ", ".join(parts)


def check_equivalence(original: str, reformulated: str, domain: str = "math", min_cosine: float = MIN_COSINE,
                      embedder=None, chat=None) -> Verdict:
    """Whether `reformulated` asks the same as `original` (see the module docstring)."""
    from backend.labels.embeddings import embed

    reasons = []
    if not reformulated.strip():
        return Verdict(False, 0.0, None, None, None, ["empty reformulation"])
    e = embed([original, reformulated], embedder)
    cos = float(e[0] @ e[1])
    if cos < min_cosine:
        reasons.append(f"cosine {cos:.2f} < {min_cosine}")
    same_num = same_ops = None
    if domain == "math":
        a, b = numbers(original), numbers(reformulated)
        same_num = a == b
        if not same_num:
            changed = sorted(set((a - b) | (b - a)))
            reasons.append("numbers differ: " + ", ".join(f"{x:g}" for x in changed[:4]))
        oa, ob = operations(original), operations(reformulated)
        same_ops = oa == ob
        if not same_ops:
            reasons.append(f"operations differ: {dict(oa)} vs {dict(ob)}")
    llm_yes = None
    if chat is not None:
        q = ("Do these two questions ask exactly the same thing, with the same numbers and operations? "
             f"Answer Yes or No.\nQuestion 1: {original}\nQuestion 2: {reformulated}")
        llm_yes = bool(chat.yes_no([[{"role": "user", "content": q}]])[0])
        if not llm_yes:
            reasons.append("the LLM says they differ")
    return Verdict(not reasons, cos, same_num, same_ops, llm_yes, reasons)
