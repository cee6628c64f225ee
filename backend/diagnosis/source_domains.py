"""The domains a corpus source belongs to: one table, read by the feature domains (domains.py) and by the
calibration of flag thresholds on held-out text (calibrate.py)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Domain:
    """A group of corpus sources, and a description the embedding model compares labels with."""

    name: str
    sources: tuple[str, ...]  # exact source names, or "prefix*"
    description: str


DOMAIN_TABLE: tuple[Domain, ...] = (
    Domain("math", ("math",), "arithmetic and math word problems: numbers, equations, plus, minus, times, divided by, "
           "percent, dollars, answers"),
    Domain("code", ("python-stdlib", "code"), "Python source code: def, return, import, self, variables, brackets, "
           "operators, strings, comments"),
    Domain("fiction", ("moby-dick", "brown:fiction", "brown:mystery", "brown:science_fiction", "brown:adventure",
                       "brown:romance", "brown:humor", "fiction"),
           "a story or a novel: characters, dialogue, he said, the sea, ships, whales, narrative"),
    Domain("speech", ("sotu", "speech"), "a political speech: the nation, Congress, the people, government, "
           "the economy, our country"),
    Domain("prose", ("brown:*", "prose"), "non-fiction prose: news, reviews, essays, religion, science, "
           "government reports, hobbies"),
)
"""The default corpus's sources (README: default corpus) and the tiny test corpus's genres in five domains.
The first match wins, so the Brown fiction genres go to fiction before `brown:*` sends the rest to prose.
A source no row matches is its own domain (a user's corpus: its genre names are the domains)."""


def source_domain(source: str, table: tuple[Domain, ...] = DOMAIN_TABLE) -> str:
    """The domain of a corpus source (its own name when no row of the table matches)."""
    for d in table:
        for s in d.sources:
            if source == s or (s.endswith("*") and source.startswith(s[:-1])):
                return d.name
    return source


def description(domain: str, table: tuple[Domain, ...] = DOMAIN_TABLE) -> str:
    return next((d.description for d in table if d.name == domain), domain)
