"""The diagnosis's rewrite rules (every rule of rules.toml by its examples), the equivalence check and the
symbol-arithmetic task."""

from __future__ import annotations

import re

import pytest

from backend.common.errors import UserError
from backend.diagnosis.equivalence import check_equivalence, numbers, operations
from backend.diagnosis.rules import apply_rules, load_rules

RULES = load_rules()


def _spans(text: str, flagged: str | None):
    if flagged is None:
        return None
    i = text.index(flagged)
    return [(i, i + len(flagged))]


@pytest.mark.parametrize("rule", RULES, ids=[r.name for r in RULES])
def test_every_rule_rewrites_its_examples(rule):
    assert rule.examples, f"rule {rule.name} has no example: add one to rules.toml"
    assert any(len(ex) > 1 and ex[0] != ex[1] for ex in rule.examples), f"rule {rule.name} has no example that rewrites"
    for ex in rule.examples:
        text, expected = ex[0], ex[1]
        out = apply_rules(text, [rule], rule.domain, _spans(text, ex[2] if len(ex) > 2 else None))
        assert out.text == expected, f"{rule.name}: {text!r} -> {out.text!r}, expected {expected!r}"
        assert out.changed == (text != expected)
        assert all(a[0] == rule.name for a in out.applied)


def test_rules_rewrite_only_at_flagged_tokens():
    text = "What is 3 x 4 + 12 / 6?"
    at_x = apply_rules(text, RULES, "math", _spans(text, " x"))
    assert at_x.text == "What is 3 times 4 + 12 / 6?" and at_x.rule_names == ["times"]
    at_div = apply_rules(text, RULES, "math", _spans(text, "/"))
    assert at_div.text == "What is 3 x 4 + 12 divided by 6?"
    assert apply_rules(text, RULES, "math", _spans(text, "What")).text == text  # a flag no rule matches
    assert apply_rules(text, RULES, "math", []).text == text  # no flags, no rewrite
    assert apply_rules(text, RULES, "math", None).text == "What is 3 times 4 + 12 divided by 6?"  # every match
    assert apply_rules(text, RULES, "code", None).text == text  # no rule serves another domain


def test_rules_stay_in_the_region_and_first_rule_wins():
    text = "Q: 2 x 3\nchoice: 4 x 5"
    assert apply_rules(text, RULES, "math", None, region=(0, 8)).text == "Q: 2 times 3\nchoice: 4 x 5"
    # "**" is a power, not two multiplications: power comes first in the table
    assert apply_rules("2 ** 3", RULES, "math").text == "2 to the power of 3"
    # |a - b| x c: the absolute value, then the product, both rewritten in one pass
    assert apply_rules("|4 - 9| x 3", RULES, "math").text == "the absolute value of (4 - 9) times 3"


def test_user_rules_come_first_and_bad_files_are_one_line_errors(tmp_path):
    extra = tmp_path / "mine.toml"
    extra.write_text('[[rule]]\nname = "mod"\ndomain = "math"\npattern = \'(?<=[0-9])\\s*%\\s*(?=[0-9])\'\n'
                     'replace = " modulo "\nexamples = [["7 % 3", "7 modulo 3"]]\n')
    rules = load_rules(extra)
    assert rules[0].name == "mod" and len(rules) == len(RULES) + 1
    assert apply_rules("7 % 3", rules, "math").text == "7 modulo 3"  # before the built-in percent rule
    for body, msg in [('[[rule]]\nname = "x"\ndomain = "math"\npattern = "("\nreplace = ""\n', "bad pattern"),
                      ('[[rule]]\nname = "times"\ndomain = "math"\npattern = "a"\nreplace = "b"\n', "unique"),
                      ('[[rule]]\nname = "y"\ndomain = "math"\nkind = "swap"\npattern = "a"\nreplace = "b"\n', "kind"),
                      ("rule = 3\n", "no [[rule]]"), ("[[rule\n", "not valid TOML")]:
        extra.write_text(body)
        with pytest.raises(UserError, match=re.escape(msg)):
            load_rules(extra)
    with pytest.raises(UserError, match="not found"):
        load_rules(tmp_path / "missing.toml")


def test_numbers_and_operations():
    assert numbers("Pay $2.50 for 3 pens, 2.5 each, and twelve more") == {2.5: 2, 3.0: 1, 12.0: 1}
    assert operations("20 - (3 x 4 + 2 x 1.5)") == {"sub": 1, "mul": 2, "add": 1}
    assert operations("20 minus (3 times 4 plus 2 times 1.5)") == {"sub": 1, "mul": 2, "add": 1}
    assert operations("2 ** 3 and 2 ^ 3 and 2 to the power of 3") == {"pow": 3}
    assert operations("|3 - 11| and the absolute value of (3 - 11)") == {"abs": 2, "sub": 2}
    assert operations("a well-known x-ray, 0x1F") == {}  # hyphens and hex are not operations


def test_equivalence_accepts_spelled_out_operators_and_rejects_a_changed_number():
    ok = check_equivalence("What is 7 x 8?", "What is 7 times 8?")
    assert ok.accepted and ok.same_numbers and ok.same_operations and ok.cosine > 0.6
    changed = check_equivalence("What is 7 x 8?", "What is 7 times 9?")
    assert not changed.accepted and changed.same_numbers is False
    assert any("numbers differ" in r and "8" in r and "9" in r for r in changed.reasons)
    dropped = check_equivalence("What is |3 - 11|?", "What is 3 - 11?")
    assert not dropped.accepted and dropped.same_operations is False
    other = check_equivalence("What is 7 x 8?", "Name a famous whale in a novel.", domain="fiction")
    assert not other.accepted and other.same_numbers is None and other.cosine < 0.6
    assert not check_equivalence("What is 7 x 8?", "  ").accepted


def test_math_operators_task_answers_are_right():
    from backend.tasks.suite import load_task

    task = load_task("math_operators")
    assert len(task.items) == 600 and task.chance == pytest.approx(0.25)
    kinds = set()
    for it in task.items:
        q = it.input.removeprefix("What is ").removesuffix("?")
        expr = re.sub(r"\|([^|]+)\|", r"abs(\1)", q).replace("^", "**").replace(" x ", " * ").replace("/", "//")
        assert int(it.choices[it.target]) == eval(expr)  # noqa: S307 - our own generated arithmetic
        assert len(set(it.choices)) == 4
        kinds.update(s for s in ("x", "/", "^", "|") if s in q)
    assert kinds == {"x", "/", "^", "|"}
    assert [it.input for it in load_task("math_operators").items[:20]] == [it.input for it in task.items[:20]]  # seeded


def test_the_answer_chart_keeps_numeric_choices_as_categories():
    from explorer.diagnose_view import probs_chart

    fig = probs_chart(["2", "6", "-2", "3"], {"original": [0.5, 0.2, 0.2, 0.1]}, correct=[0])
    assert fig.layout.xaxis.type == "category"  # else plotly makes a number axis and drops the "✓ 2" bar
    assert list(fig.data[0].x) == ["✓ 2", "6", "-2", "3"]
