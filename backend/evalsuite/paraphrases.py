"""Math word problems written several ways with the same numbers: the stability part's paraphrases.

Each family draws its quantities once and renders them with `WORDINGS` different templates (same numbers,
same question, other words and order), in the style of the default corpus's problems
(backend/corpus/default_corpus.py MATH_TEMPLATES). A text is framed as the corpus frames a problem,
"Question: ...\\nAnswer:", so its last token is where the answer would be predicted (the "answer position").
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

NAMES = ["Maria", "Tom", "Aisha", "Kenji", "Lena", "Omar", "Grace", "Diego", "Fatima", "Jonas"]
ITEMS = [("notebook", "notebooks"), ("pen", "pens"), ("apple", "apples"), ("ticket", "tickets"), ("mug", "mugs")]
THINGS = ["marbles", "stickers", "stamps", "cards", "shells", "coins"]
VEHICLES = ["train", "cyclist", "car", "boat", "bus"]
PLACES = ["garden", "room", "playground", "field", "yard"]


@dataclass(frozen=True)
class Problem:
    family: str
    wordings: tuple[str, ...]  # the same problem, each wording a full text ending at the answer position


def frame(question: str) -> str:
    return f"Question: {question}\nAnswer:"


def _shopping(r: random.Random) -> list[str]:
    name, (one, many) = r.choice(NAMES), r.choice(ITEMS)
    n, p = r.randint(3, 9), r.randint(2, 15)
    return [f"{name} buys {n} {many} at ${p} each. How much does {name} spend?",
            f"Each {one} costs ${p}. If {name} purchases {n} {many}, what is the total cost?",
            f"{name} wants {n} {many}, and one {one} is priced at ${p}. How much money does {name} need?",
            f"What do {n} {many} cost in total when a single {one} sells for ${p}? {name} is paying."]


def _distance(r: random.Random) -> list[str]:
    v, s, t = r.choice(VEHICLES), r.choice([12, 15, 40, 60, 80, 90]), r.randint(2, 6)
    return [f"A {v} travels at {s} km per hour for {t} hours. How far does it go?",
            f"Moving at a steady {s} kilometers an hour, a {v} keeps going for {t} hours. What distance does it cover?",
            f"How many kilometers does a {v} cover in {t} hours if its speed is {s} km per hour?",
            f"For {t} hours a {v} holds a speed of {s} km per hour. Find the distance it travels."]


def _remaining(r: random.Random) -> list[str]:
    name, things = r.choice(NAMES), r.choice(THINGS)
    a, b = r.randint(30, 90), r.randint(5, 29)
    return [f"{name} has {a} {things} and gives away {b}. How many {things} are left?",
            f"{name} started with {a} {things}, then gave {b} {things} to a friend. How many does {name} have now?",
            f"If {name} owns {a} {things} and loses {b} of them, how many {things} remain?",
            f"Starting from {a} {things}, {name} hands out {b}. What number of {things} is left?"]


def _discount(r: random.Random) -> list[str]:
    item, price, pct = r.choice(["jacket", "lamp", "chair", "guitar", "backpack"]), r.randint(2, 15) * 20, r.choice([10, 20, 25, 50])
    return [f"A {item} costs ${price}. It is on sale for {pct}% off. What is the sale price?",
            f"The price of a {item} is ${price}, and the shop takes {pct}% off. How much does it cost now?",
            f"With a discount of {pct}%, what does a ${price} {item} sell for?",
            f"A shop marks down a {item} by {pct}% from its price of ${price}. What is the new price?"]


def _fill(r: random.Random) -> list[str]:
    rate, minutes = r.randint(3, 30), r.randint(4, 40)
    cap = rate * minutes
    return [f"A pump adds {rate} liters of water per minute to an empty tank that holds {cap} liters. "
            "How many minutes until it is full?",
            f"An empty tank holds {cap} liters, and water flows in at {rate} liters a minute. How long does it take to fill?",
            f"How many minutes does it take to fill a {cap} liter tank from empty at {rate} liters per minute?",
            f"Water enters an empty {cap}-liter tank at a rate of {rate} liters each minute. When is the tank full?"]


def _rectangle(r: random.Random) -> list[str]:
    w, h, what = r.randint(3, 30), r.randint(2, 20), r.choice(PLACES)
    return [f"A rectangular {what} is {w} m long and {h} m wide. What is its area?",
            f"What is the area of a {what} shaped like a rectangle, {w} meters by {h} meters?",
            f"A {what} has the shape of a rectangle with a length of {w} m and a width of {h} m. Find its area.",
            f"The {what} is rectangular: {h} m wide and {w} m long. How many square meters is it?"]


FAMILIES: dict[str, Callable[[random.Random], list[str]]] = {
    "shopping": _shopping, "distance": _distance, "remaining": _remaining, "discount": _discount,
    "fill": _fill, "rectangle": _rectangle,
}
WORDINGS = 4


def paraphrase_problems(per_family: int = 6, seed: int = 0) -> list[Problem]:
    """`per_family` problems of each family, each in all its wordings, seeded."""
    r = random.Random(f"paraphrases:{seed}")
    out = []
    for family, make in FAMILIES.items():
        for _ in range(per_family):
            out.append(Problem(family, tuple(frame(q) for q in make(r))))
    return out


def llm_paraphrases(problems: list[Problem], chat, n: int = 2) -> list[Problem]:
    """The problems with `n` more wordings each from an LLM back-end (backend.labels.llm.make_chat); a reply that
    drops a number of the question is discarded (a paraphrase must keep the problem)."""
    import re

    first = [p.wordings[0].removeprefix("Question: ").removesuffix("\nAnswer:") for p in problems]
    convs = [[{"role": "user", "content": "Rewrite this math word problem with different wording. Keep every number "
               f"and the question. Reply with the rewritten problem only.\n\n{q}"}] for q in first for _ in range(n)]
    replies = chat.complete(convs, max_tokens=120)
    out = []
    for i, p in enumerate(problems):
        numbers = set(re.findall(r"\d+", first[i]))
        extra = []
        for reply in replies[i * n:(i + 1) * n]:
            text = " ".join(reply.strip().split())
            if text and numbers <= set(re.findall(r"\d+", text)):
                extra.append(frame(text))
        out.append(Problem(p.family, p.wordings + tuple(extra)))
    return out
