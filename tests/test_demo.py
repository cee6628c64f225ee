"""`python -m backend demo --kinds`: which dictionaries the demo builds, and bad input."""

from __future__ import annotations

import pytest

from backend.cli import main
from backend.common.errors import UserError
from backend.pipeline import DEMO_KINDS, parse_kinds


def test_default_builds_every_kind_topk_first():
    """topk first: the best dictionary for browsing is browsable first (issue 14); sae-ito right after its base."""
    assert parse_kinds("all") == DEMO_KINDS == parse_kinds(None)
    assert DEMO_KINDS == ("topk", "relu-l1", "sae-ito", "mlp", "sparse-coding")


def test_sae_ito_brings_its_base():
    assert parse_kinds("sae-ito") == ("relu-l1", "sae-ito")
    assert parse_kinds("relu-l1,topk") == ("topk", "relu-l1")  # always in build order
    assert parse_kinds("topk") == ("topk",)


def test_unknown_kind_is_one_line(tmp_path, capsys):
    with pytest.raises(UserError, match="unknown demo kind 'bogus'"):
        parse_kinds("relu-l1,bogus")
    assert main(["demo", "--out", str(tmp_path / "d"), "--kinds", "bogus"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown demo kind") and err.count("\n") == 1
    assert not (tmp_path / "d").exists()  # nothing started
