"""Deterministic reformulation: the rewrite rules of `rules.toml`, applied where a token was flagged.

A rule is a regular expression and what its match becomes ("replace") or what is appended after the
diagnosed region ("annotate"). `apply_rules(text, rules, domain, spans)` rewrites only the matches that
overlap a flagged token's characters (`spans`); with `spans=None` every match is rewritten, which is
the "same rules on every prompt" control of the experiment. All matches are found on the original
text first; where two overlap, the rule earlier in the table wins; replacements are made right to
left, so the offsets of the flags stay valid.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from backend.common.errors import UserError

RULES_FILE = Path(__file__).with_name("rules.toml")
KINDS = ("replace", "annotate")


@dataclass(frozen=True)
class Rule:
    name: str
    domain: str  # expected domain it serves, or "any"
    kind: str  # replace | annotate
    pattern: re.Pattern
    replace: str
    description: str = ""
    examples: tuple = ()  # ((input, expected[, flagged substring]), ...)

    def serves(self, domain: str) -> bool:
        return self.domain in (domain, "any")


@dataclass
class Rewrite:
    """A rewritten text and what was changed: (rule, start, end, old text, new text) in original offsets."""

    original: str
    text: str
    applied: list[tuple[str, int, int, str, str]] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return self.text != self.original

    @property
    def rule_names(self) -> list[str]:
        return [a[0] for a in self.applied]


def _rule(row: dict, where: str) -> Rule:
    for key in ("name", "domain", "pattern", "replace"):
        if not isinstance(row.get(key), str):
            raise UserError(f"{where}: every [[rule]] needs a string {key!r}")
    kind = row.get("kind", "replace")
    if kind not in KINDS:
        raise UserError(f"{where}: rule {row['name']!r} has kind {kind!r}; expected one of {', '.join(KINDS)}")
    try:
        pat = re.compile(row["pattern"])
    except re.error as e:
        raise UserError(f"{where}: rule {row['name']!r} has a bad pattern: {e}") from None
    examples = tuple(tuple(e) for e in row.get("examples", ()))
    return Rule(row["name"], row["domain"], kind, pat, row["replace"], str(row.get("description", "")), examples)


def load_rules(path: str | Path | None = None, with_defaults: bool = True) -> list[Rule]:
    """The rules of `path` (first) followed by the package's table; names must be unique."""
    files = ([Path(path)] if path else []) + ([RULES_FILE] if with_defaults or not path else [])
    rules: list[Rule] = []
    for f in files:
        if not f.is_file():
            raise UserError(f"rules file not found: {f}")
        try:
            data = tomllib.loads(f.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise UserError(f"{f} is not valid TOML: {e}") from None
        rows = data.get("rule")
        if not isinstance(rows, list) or not rows:
            raise UserError(f"{f}: no [[rule]] tables")
        rules += [_rule(r, str(f)) for r in rows]
    names = [r.name for r in rules]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UserError(f"rule names must be unique; repeated: {', '.join(dup)}")
    return rules


def _overlaps(a: int, b: int, spans) -> bool:
    return any(s < b and a < e for s, e in spans)


def find_matches(text: str, rules: list[Rule], domain: str, spans=None, region: tuple[int, int] | None = None):
    """[(rule, match)] of the rules serving `domain` inside `region`, overlapping `spans` (None: all), non-overlapping."""
    lo, hi = region if region is not None else (0, len(text))
    chosen: list[tuple[Rule, re.Match]] = []
    taken: list[tuple[int, int]] = []
    for rule in rules:
        if not rule.serves(domain):
            continue
        for m in rule.pattern.finditer(text, lo, hi):
            a, b = m.span()
            if b == a and rule.kind == "annotate":
                continue
            hit = (a, max(b, a + 1))  # an empty match (an insertion point) tests the character after it
            if spans is not None and not _overlaps(*hit, spans) and not _overlaps(a - 1, a, spans):
                continue
            if _overlaps(*hit, taken):
                continue
            chosen.append((rule, m))
            taken.append(hit)
    return sorted(chosen, key=lambda rm: rm[1].start())


def apply_rules(text: str, rules: list[Rule], domain: str, spans=None, region: tuple[int, int] | None = None) -> Rewrite:
    """Rewrite `text` with the rules serving `domain` at the flagged `spans` (None: at every match)."""
    lo, hi = region if region is not None else (0, len(text))
    matches = find_matches(text, rules, domain, spans, (lo, hi))
    out, applied, notes = text, [], []
    for rule, m in reversed(matches):
        a, b = m.span()
        if rule.kind == "annotate":
            note = rule.replace.replace("{word}", m.group(0))
            if note not in notes:
                notes.insert(0, note)
                applied.insert(0, (rule.name, a, b, m.group(0), note))
            continue
        new = m.expand(rule.replace)
        out = out[:a] + new + out[b:]
        applied.insert(0, (rule.name, a, b, m.group(0), new))
    if notes:
        shift = len(out) - len(text)
        end = hi + shift
        out = out[:end] + "".join(notes) + out[end:]
    return Rewrite(text, out, applied)


def rule_hints(rewrite: Rewrite, rules: list[Rule]) -> list[str]:
    """The descriptions of the rules a rewrite used (what an LLM reformulator is told about the flags)."""
    by = {r.name: r.description for r in rules}
    return list(dict.fromkeys(by[n] for n in rewrite.rule_names if by.get(n)))
