"""Config dataclasses that tests/test_config_cli.py reads from source: each construct the option generator knows."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

from backend.labels.llm import DEFAULT_KEY_ENV
from backend.store.label_io import Format

SIZES = (4, 8)
Mode = Literal["fast", "exact"]


@dataclass
class Base:
    width: int = 16
    """Width of the base."""
    rate: float = 1 / 32
    """A rate (an expression)."""


@dataclass
class Sample(Base):
    """A subclass: its fields follow the base's, an override keeps the base's place and docstring."""

    tags: ClassVar[tuple] = ("not", "a", "field")
    key_env: str = DEFAULT_KEY_ENV
    """A constant imported from another module."""
    mode: Mode = "fast"
    """A local Literal alias."""
    fmt: Format = "csv"
    """An imported Literal alias."""
    sizes: list[int] = field(default_factory=lambda: list(SIZES), metadata={"flag": "size"})
    """A list under another flag name."""
    pair: tuple[float, float] = field(default=(0.5, 2.0), metadata={"metavar": "LO,HI"})
    """A pair."""
    on: bool = True
    """On unless --no-on."""
    off: bool = False
    """Off unless --off."""
    maybe: int | None = None
    """None = decided later."""
    names: list[str] = field(default_factory=list)
    """A list that starts empty."""
    width: int = 32
    hidden: object = field(default=None, metadata={"cli": False})
    """Not an option."""
