"""Reformulate a diagnosed prompt, by rules or by an LLM, and keep it only if it asks the same question.

    proposal  = rules.apply_rules(text, flagged spans)          deterministic (rules.toml), or
                chat.complete("rewrite the question ...")       local SmolLM2 or an OpenAI-compatible endpoint
    verdict   = equivalence.check_equivalence(text, proposal)   cosine + same numbers and operations (+ LLM Yes/No)
    used text = proposal if the verdict accepts it, else the original

A proposal equal to the original (no rule matched a flag) is "unchanged", not rejected.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from backend.diagnosis.equivalence import MIN_COSINE, Verdict, check_equivalence
from backend.diagnosis.rules import Rule, apply_rules, rule_hints

LLM_MAX_TOKENS = 96  # a rewritten question is one or two sentences


@dataclass
class Reformulation:
    original: str
    proposed: str
    method: str  # rules | llm
    rules: list[str] = field(default_factory=list)  # rule names applied (rules), or the hints given (llm)
    verdict: Verdict | None = None  # None when nothing changed

    @property
    def changed(self) -> bool:
        return self.proposed != self.original

    @property
    def accepted(self) -> bool:
        return self.changed and self.verdict is not None and self.verdict.accepted

    @property
    def rejected(self) -> bool:
        return self.changed and not self.accepted

    @property
    def text(self) -> str:
        """What the model is run on: the proposal when accepted, else the original."""
        return self.proposed if self.accepted else self.original


def by_rules(text: str, rules: list[Rule], domain: str, spans=None, region: tuple[int, int] | None = None,
             min_cosine: float = MIN_COSINE, embedder=None, chat=None) -> Reformulation:
    """The rules' rewrite at the flagged `spans` (None: at every match), checked for equivalence."""
    rw = apply_rules(text, rules, domain, spans, region)
    verdict = check_equivalence(text, rw.text, domain, min_cosine, embedder, chat) if rw.changed else None
    return Reformulation(text, rw.text, "rules", rw.rule_names, verdict)


def llm_prompt(question: str, flagged: list[str], hints: list[str]) -> list[dict]:
    """The conversation asking for a rewrite of `question` that spells out its flagged tokens."""
    said = ", ".join(f"'{t.strip()}'" for t in flagged if t.strip()) or "some symbols"
    hint = (" Note: " + "; ".join(hints) + ".") if hints else ""
    return [{"role": "system", "content": "You rewrite questions so that they cannot be misread. You keep every "
             "number and every operation, and you never answer the question."},
            {"role": "user", "content": f"In this question, {said} may be misread.{hint} Rewrite the question in plain "
             f"words, keeping every number. Reply with the rewritten question only.\n\nQuestion: {question.strip()}"}]


def first_question(reply: str) -> str:
    """The rewritten question from an LLM reply: its first non-empty line, without a 'Question:' prefix or quotes."""
    for line in str(reply).splitlines():
        line = line.strip().strip('"').strip()
        for prefix in ("Rewritten question:", "Question:", "Rewritten:"):
            if line.lower().startswith(prefix.lower()):
                line = line[len(prefix):].strip()
        if line:
            return line
    return ""


def by_llm(chat, text: str, region: tuple[int, int], flagged: list[str], rules: list[Rule], domain: str,
           spans=None, min_cosine: float = MIN_COSINE, embedder=None, check_chat=None) -> Reformulation:
    """An LLM's rewrite of the region (the question), told what the flagged tokens are (the hints of the rules
    that match them); the rest of `text` is kept."""
    start, end = region
    hints = rule_hints(apply_rules(text, rules, domain, spans, region), rules)
    reply = chat.complete([llm_prompt(text[start:end], flagged, hints)], max_tokens=LLM_MAX_TOKENS)[0]
    question = first_question(reply)
    if not question:  # an empty reply is a rejected proposal (proposed = ""), never used
        return Reformulation(text, "", "llm", hints, Verdict(False, 0.0, None, None, None, ["empty reply"]))
    proposed = text[:start] + question + text[end:]
    verdict = check_equivalence(text, proposed, domain, min_cosine, embedder, check_chat) if proposed != text else None
    return Reformulation(text, proposed, "llm", hints, verdict)
