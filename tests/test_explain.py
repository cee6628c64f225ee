"""Explanations: the deterministic explainer on planted features, LLM prompts, the OpenAI-compatible
back-end against a local stub (caching and resume), the local back-end on the tiny model, CLI errors."""

from __future__ import annotations

import pytest

from backend.common.errors import UserError
from backend.labels.explain import clean_reply, explain_features, llm_explanation_prompt
from backend.store.label_store import LabelStore
from tests.helpers_labels import make_planted_store
from tests.llm_stub import StubLLM


@pytest.fixture()
def planted(tmp_path):
    return make_planted_store(tmp_path)


def test_deterministic_explanations_name_the_planted_pattern(planted):
    run, d = planted
    r = explain_features(run, d, progress=False)
    assert r["n_features"] == 2 and r["n_dead"] == 0  # feature 2 never fires: not an alive feature
    digits, the = r["explanations"][0], r["explanations"][1]
    assert digits.startswith("digits in numbers (") and "promotes 0, 1, 2" in digits
    assert the.startswith('the token "the"')
    cur = LabelStore(run).current(d).set_index("feature")
    assert cur.loc[0, "text"] == digits and cur.loc[0, "source"] == "auto-deterministic" and cur.loc[0, "version"] == 1
    # a rerun gives the same text and appends nothing
    again = explain_features(run, d, progress=False)
    assert again["n_saved"] == 0 and again["n_unchanged"] == 2
    assert LabelStore(run).history(d, 0).shape[0] == 1


def test_human_labels_are_kept_unless_asked(planted):
    run, d = planted
    LabelStore(run).save(d, 1, "definite article", "ada")
    r = explain_features(run, d, features=[0, 1], progress=False)
    assert r["n_skipped_human"] == 1 and 1 not in r["explanations"]
    assert LabelStore(run).current(d, [1])["text"].tolist() == ["definite article"]
    r = explain_features(run, d, features=[1], overwrite_human=True, progress=False)
    assert r["n_saved"] == 1
    hist = LabelStore(run).history(d, 1)
    assert hist["source"].tolist() == ["auto-deterministic", "human"]  # newest first, the human version kept


def test_llm_prompt_marks_firing_tokens_and_lists_logits(planted):
    from backend.labels import heldout
    from backend.labels.explain import _feature_rows

    run, d = planted
    ctx = heldout.explain_contexts(run, d, 0)
    msgs = llm_explanation_prompt(_feature_rows(run, d, [0])[0], ctx)
    user = msgs[1]["content"]
    assert msgs[0]["role"] == "system" and user.count("Example ") == 8
    assert "<<9>>" in user or "<< 9>>" in user  # the strongest firing is a 9 (value 4.00)
    assert "Activations: 9 4.00" in user
    assert "Top promoted tokens: 0, 1, 2, 5" in user
    assert user.rstrip().endswith("Explanation:")


def test_clean_reply_keeps_one_sentence():
    assert clean_reply('Explanation: "Digits in numbers. They mark amounts."\nmore') == "Digits in numbers."
    assert clean_reply("   ") == "(the model gave no explanation)"
    assert len(clean_reply("word " * 100)) <= 204


def test_openai_backend_through_a_local_stub_caches_and_resumes(planted, monkeypatch):
    run, d = planted
    monkeypatch.setenv("STUB_KEY", "sk-test-123")
    broken = {"on": True}

    def answer(messages):
        return "Explanation: digits of numbers. Extra words." if "<<" in messages[1]["content"] else "?"

    def fail(messages):  # the first run dies on the "the" feature's prompt
        return 400 if broken["on"] and "<< the>>" in messages[1]["content"] else None

    with StubLLM(answer, fail) as stub:
        kw = dict(explainer="openai", llm_base_url=stub.base_url, llm_model="stub-model", llm_api_key_env="STUB_KEY",
                  progress=False)
        with pytest.raises(UserError, match="HTTP 400"):
            explain_features(run, d, **kw)
        first = len(stub.requests)
        assert first == 2
        req = stub.requests[0]
        assert req["path"] == "/v1/chat/completions" and req["headers"]["Authorization"] == "Bearer sk-test-123"
        assert req["body"]["model"] == "stub-model" and req["body"]["temperature"] == 0
        broken["on"] = False
        r = explain_features(run, d, **kw)
        assert len(stub.requests) == first + 1  # feature 0's reply came from the cache: only feature 1 was asked
        assert r["cache_hits"] == 1 and r["explanations"] == {0: "digits of numbers.", 1: "digits of numbers."}
        again = explain_features(run, d, **kw)
        assert len(stub.requests) == first + 1 and again["n_saved"] == 0 and again["cache_hits"] == 2
    cur = LabelStore(run).current(d)
    assert set(cur["source"]) == {"auto-llm"} and "openai:stub-model" in cur["notes"].iloc[0]
    assert list((run / "dictionaries" / d / "explain_cache").rglob("*.json"))


def test_openai_backend_unreachable_is_one_line(planted):
    import socket

    run, d = planted
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    with pytest.raises(UserError, match="cannot reach"):
        explain_features(run, d, explainer="openai", llm_base_url=f"http://127.0.0.1:{port}/v1", progress=False)
    with pytest.raises(UserError, match="needs --llm-base-url"):
        explain_features(run, d, explainer="openai", progress=False)


def test_local_llm_explainer_runs_end_to_end_on_the_tiny_model(planted, tiny_model_dir):
    run, d = planted
    r = explain_features(run, d, explainer="local-llm", llm_model=str(tiny_model_dir), device="cpu", progress=False)
    assert sorted(r["explanations"]) == [0, 1] and all(isinstance(t, str) and t for t in r["explanations"].values())
    cur = LabelStore(run).current(d)
    assert list(cur["source"]) == ["auto-llm", "auto-llm"]
    again = explain_features(run, d, explainer="local-llm", llm_model=str(tiny_model_dir), device="cpu", progress=False)
    assert again["cache_hits"] == 2 and again["n_saved"] == 0  # greedy replies cached: the rerun generates nothing


def test_cli_errors_are_one_line(planted, capsys):
    from backend.cli import main

    run, d = planted
    cases = [
        (["explain", "--run", str(run), "--dict", "nope"], "no dictionary 'nope'"),
        (["explain", "--run", str(run), "--dict", d, "--features", "1,x"], "comma-separated integers"),
        (["explain", "--run", str(run), "--dict", d, "--features", "7"], "no feature 7"),
        (["explain", "--run", str(run), "--dict", d, "--explainer", "openai"], "--llm-base-url"),
        (["score", "--run", str(run), "--dict", d], "no labels to score"),
        (["score", "--run", str(run), "--dict", d, "--threshold", "2"], "--threshold must be in [0, 1]"),
    ]
    for argv, msg in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error: ") and msg in err[-1], (argv, err)
    assert main(["explain", "--run", str(run), "--dict", d, "--top", "1", "--no-index"]) == 0
    out = capsys.readouterr().out
    assert "explained 1 features" in out and "1 new label versions" in out and "index" not in out


@pytest.mark.slow
@pytest.mark.integration
def test_smollm2_explains_the_planted_features(planted):
    """The embedded SmolLM2-135M-Instruct through its chat template, offline (~12 s on 2 busy CPU cores)."""
    run, d = planted
    r = explain_features(run, d, explainer="local-llm", device="cpu", progress=False)
    texts = r["explanations"]
    assert sorted(texts) == [0, 1]
    for t in texts.values():  # the prefilled sentence, completed: not an echo of the instructions
        assert t.startswith("This feature fires on ") and len(t) > len("This feature fires on ") + 3
    assert LabelStore(run).current(d)["notes"].iloc[0] == "explain local-llm (local-llm:smollm2-135m)"
