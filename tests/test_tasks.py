"""The task suite: BIG-bench JSON loading, prompts, packed log-likelihood scoring, splice control,
bootstrap intervals, math items, BIG-bench query recording, and the CLI's bad inputs."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch

from backend.cli import main as cli_main
from backend.common.errors import UserError
from backend.tasks import bootstrap, prompts, scoring
from backend.tasks.schema import load_task_file, parse_task, task_to_json

FIXTURE = {
    "name": "tiny_fixture",
    "description": "three questions",
    "example_input_prefix": "Q: ",
    "example_output_prefix": "\nA: ",
    "examples": [
        {"input": "the cat sat on the", "target_scores": {"mat": 1, "rug": 0, "sky": 0}},
        {"input": "a quiet river ran past the old", "target_scores": {"mill": 1.0, "dog": 0.0}},
        {"input": "the cat sat on the", "target_scores": {"mat": 1, "rug": 0, "sky": 0}},  # a duplicate: dropped
        {"input": "x = [ 1 , 2 , 3 ] ; y =", "target_scores": {"sum": 1, "len": 1, "print": 0, "def": 0}},
    ],
}


def run_cli(*args):
    """The CLI in this process (no torch import per call): (exit status, stdout, stderr)."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def assert_one_line_error(res, *needles):
    code, _, err = res
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1, err
    for n in needles:
        assert n in lines[0], lines[0]


def write(tmp_path, data, name="task.json"):
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else json.dumps(data))
    return p


# ------------------------------------------------------------------------------------------- loader


def test_loader_reads_choices_targets_and_format(tmp_path):
    t = load_task_file(write(tmp_path, FIXTURE))
    assert t.name == "tiny_fixture"
    assert len(t.items) == 3  # the duplicate example is dropped, as BIG-bench does
    assert t.items[0].choices == ("mat", "rug", "sky") and t.items[0].target == 0
    assert t.items[1].choices == ("mill", "dog") and t.items[1].correct == (0,)
    assert t.items[2].correct == (0, 1)  # two choices share the top score
    assert t.chance == pytest.approx((1 / 3 + 1 / 2 + 2 / 4) / 3)
    assert t.fmt["example_input_prefix"] == "Q: " and t.fmt["choice_prefix"] == "\n  choice: "  # file value, default
    again = parse_task(task_to_json(t))
    assert [it.choices for it in again.items] == [it.choices for it in t.items]


@pytest.mark.parametrize("text, needle", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "JSON object"),
    (json.dumps({"name": "x"}), "no 'examples'"),
    (json.dumps({"name": "x", "examples": [{"input": "q", "target": "a"}]}), "generative task"),
    (json.dumps({"name": "x", "examples": [{"input": "q", "target_scores": {"a": 1, "b": 1}}]}), "no correct choice"),
    (json.dumps({"name": "x", "examples": [{"input": "q", "target_scores": {"a": "yes", "b": 0}}]}), "non-numeric"),
    (json.dumps({"name": "x", "examples": [{"input": 3, "target_scores": {"a": 1, "b": 0}}]}), "no string 'input'"),
    (json.dumps({"name": "x", "append_choices_to_input": "yes", "examples": [{"input": "q", "target_scores": {"a": 1, "b": 0}}]}),
     "must be a bool"),
])
def test_malformed_task_files_give_one_clear_error(tmp_path, text, needle):
    with pytest.raises(UserError, match=needle):
        load_task_file(write(tmp_path, text))


def test_missing_task_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_task_file(tmp_path / "nope.json")


# ------------------------------------------------------------------------------------------ prompts


def test_bigbench_format_matches_bigbench_and_moves_the_space():
    t = parse_task({"name": "t", "examples": [{"input": "What is 1 plus 1?", "target_scores": {"2": 1, "3": 0}}]})
    prompt, conts = prompts.render(t, t.items[0], "bigbench")
    order = np.random.RandomState(42).permutation(["2", "3"])  # json_task.default_format_fn
    assert prompt == f"\nQ: What is 1 plus 1?\n  choice: {order[0]}\n  choice: {order[1]}\nA:"
    assert conts == [" 2", " 3"]
    prompt, conts = prompts.render(t, t.items[0], "qa")
    assert prompt == "Question: What is 1 plus 1?\nAnswer:" and conts == [" 2", " 3"]
    assert prompts.split_whitespace("line\n", ["a"]) == ("line\n", ["a"])
    with pytest.raises(UserError, match="unknown prompt format"):
        prompts.render(t, t.items[0], "haiku")


# ------------------------------------------------------------------------------------------ scoring


@pytest.fixture(scope="module")
def tiny_lm(tiny_model_dir):
    from backend.model.loading import load_model

    return load_model(str(tiny_model_dir), device="cpu")


def encode(lm, prompt, conts, max_len=256):
    return scoring.encode_item(lm.tokenizer, prompt, conts, where="t", vocab_size=lm.model.config.vocab_size, max_len=max_len)


def manual_logprob(model, prompt_ids, cont_ids):
    lp = torch.log_softmax(model(input_ids=torch.tensor([prompt_ids + cont_ids])).logits[0].float(), -1)
    return sum(float(lp[len(prompt_ids) - 1 + k, t]) for k, t in enumerate(cont_ids))


@torch.no_grad()
def test_packed_scores_equal_one_forward_per_choice(tiny_lm):
    items = [encode(tiny_lm, "the cat sat on the", [" mat", " rug and the dog", " sky"]),
             encode(tiny_lm, "a quiet river", [" ran past the old mill", " sat"]),
             encode(tiny_lm, "for i in range (", [" 10 ) :", " x"])]
    assert items[0].prompt[0] == tiny_lm.tokenizer.bos_token_id  # BOS prepended as the cache does
    scores = scoring.score_items(tiny_lm.model, items, batch_tokens=24)  # several batches
    for it, sc in zip(items, scores):
        manual = [manual_logprob(tiny_lm.model, it.prompt, c) for c in it.choices]
        np.testing.assert_allclose(sc.logprob, manual, atol=1e-4)
        assert sc.n_tokens.tolist() == [len(c) for c in it.choices]
    assert scores[0].n_tokens.tolist() == [1, 4, 1]


def planted_lm(tiny_lm, word):
    """A copy of the tiny model whose every next-token prediction is `word` (zero unembedding + a bias)."""
    import copy

    lm = copy.deepcopy(tiny_lm)
    vocab, d = lm.model.lm_head.weight.shape
    head = torch.nn.Linear(d, vocab, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[lm.tokenizer.convert_tokens_to_ids(word)] = 12.0
    lm.model.lm_head = head
    return lm


def test_planted_choice_wins_and_evaluation_reports_it(tiny_lm, tmp_path):
    from backend.tasks.evaluate import evaluate_tasks

    lm = planted_lm(tiny_lm, "mat")
    task = load_task_file(write(tmp_path, {"name": "planted", "example_input_prefix": "", "example_output_prefix": " ",
                                           "append_choices_to_input": False, "examples": [
        {"input": "the cat sat on the", "target_scores": {"rug": 0, "mat": 1}},
        {"input": "she read the", "target_scores": {"mat": 1, "letter": 0, "drawer": 0}},
        {"input": "the dog sat on the", "target_scores": {"rug": 1, "mat": 0}}]}))
    r = evaluate_tasks(lm, [task], prompt_format="bigbench")
    assert r.items["pred_clean"].tolist() == [1, 0, 1]  # "mat" wherever it is
    assert r.items["correct_clean"].tolist() == [True, True, False]
    lp = r.items["logprob_clean"][0]
    log_z = float(torch.logsumexp(torch.tensor([12.0] + [0.0] * (lm.model.config.vocab_size - 1)), 0))
    assert lp[1] == pytest.approx(12.0 - log_z, abs=1e-4) and lp[0] == pytest.approx(-log_z, abs=1e-4)
    s = r.summary.set_index("condition").loc["clean"]
    assert s["accuracy"] == pytest.approx(2 / 3) and s["chance"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 2) / 3)


def test_splice_with_error_term_equals_clean(tiny_lm, tmp_path):
    from backend.dictionaries import ReluL1SAE
    from backend.tasks.evaluate import evaluate_tasks

    d = ReluL1SAE({"d_in": tiny_lm.model.config.hidden_size, "d_sae": 32})
    d.init_weights_(generator=torch.Generator().manual_seed(0))
    task = load_task_file(write(tmp_path, FIXTURE))
    r = evaluate_tasks(tiny_lm, [task], dictionary=d, hook="blocks.1.hook_resid_post", prompt_format="qa")
    clean, err, spliced = (np.concatenate(r.items[f"logprob_{c}"].to_list()) for c in ("clean", "spliced_error", "spliced"))
    np.testing.assert_allclose(err, clean, atol=1e-4)  # x' = x_hat + (x - x_hat) = x
    assert np.abs(spliced - clean).max() > 1e-3  # a random dictionary changes the model without its error term
    assert set(r.summary["condition"]) == {"clean", "spliced", "spliced_error"}
    row = r.summary.set_index("condition").loc["spliced_error"]
    assert row["diff"] == 0 and row["mcnemar_p"] == 1.0


def test_item_longer_than_context_and_unknown_target_token(tiny_lm):
    with pytest.raises(UserError, match="more than the model's context length 256"):
        encode(tiny_lm, " ".join(["the cat sat"] * 100), [" mat"])
    with pytest.raises(UserError, match="not in the model's vocabulary"):
        encode(tiny_lm, "the cat sat on the", [" mat", " zebra"])


# ---------------------------------------------------------------------------------------- bootstrap


def test_bootstrap_interval_on_known_cases():
    assert bootstrap.bootstrap_ci(np.ones(50)) == (1.0, 1.0, 1.0)
    c = np.array([1, 0] * 100)  # accuracy 0.5 over 200 items: normal approximation 0.5 +- 1.96 * 0.035
    mean, lo, hi = bootstrap.bootstrap_ci(c, n_resamples=4000)
    assert mean == 0.5 and lo == pytest.approx(0.5 - 0.0693, abs=0.012) and hi == pytest.approx(0.5 + 0.0693, abs=0.012)
    assert bootstrap.bootstrap_ci(c) == bootstrap.bootstrap_ci(c)  # seeded


def test_paired_bootstrap_and_mcnemar():
    a = np.array([1] * 60 + [0] * 40)
    same = bootstrap.paired_bootstrap(a, a)
    assert same["diff"] == 0 and same["diff_low"] == 0 and same["diff_high"] == 0 and same["mcnemar_p"] == 1.0
    b = a.copy()
    b[:10] = 0  # 10 items lost, none gained
    p = bootstrap.paired_bootstrap(a, b)
    assert p["diff"] == pytest.approx(-0.1) and p["diff_high"] < 0 and p["ratio"] == pytest.approx(50 / 60)
    assert p["mcnemar_p"] == pytest.approx(2 * 0.5 ** 10) and (p["n_a_only"], p["n_b_only"]) == (10, 0)
    m = bootstrap.macro_bootstrap([(a, b), (np.ones(10), np.ones(10))])
    assert m["a"] == pytest.approx((0.6 + 1) / 2) and m["b"] == pytest.approx((0.5 + 1) / 2)


# -------------------------------------------------------------------------------------- math tasks


def test_math_tasks_are_seeded_numeric_multiple_choice():
    from backend.tasks.math_tasks import make_math_task, symbolic_question

    qa, again = make_math_task("math_qa", n=50), make_math_task("math_qa", n=50)
    assert [it.input for it in qa.items] == [it.input for it in again.items]
    sym = make_math_task("math_symbols", n=50)
    for it in qa.items + sym.items:
        assert len(it.choices) == 4 and len(set(it.choices)) == 4 and it.scores.count(1.0) == 1
    for it in sym.items:
        expr = it.input.removeprefix("What is ").removesuffix("?")
        assert "×" not in expr and eval(expr.replace("x", "*")) == pytest.approx(float(it.choices[it.target]))
    assert symbolic_question("20 - (3 × 4 + 2 × 1.5) = 5") == ("What is 20 - (3 x 4 + 2 x 1.5)?", "5")
    assert symbolic_question("2 × 3 = 7") is None  # an equation that does not check is skipped


# ------------------------------------------------------------------------------- BIG-bench sources


def test_recorded_task_checkers():
    from backend.tasks.bigbench_record import CHECKERS

    wol = CHECKERS["web_of_lies"]
    assert wol("Question: Ka lies. Sal says Ka lies. Does Sal tell the truth?\nAnswer: ", ["Yes", "No"]) == "Yes"
    assert wol("Question: Ka tells the truth. Sal says Ka lies. Does Sal tell the truth?\nAnswer: ", ["Yes", "No"]) == "No"
    assert CHECKERS["boolean_expressions"]("True is True . not ( True and False ) is ", ["True", "False"]) == "True"
    with pytest.raises(ValueError):
        CHECKERS["boolean_expressions"]("__import__('os') is ", ["True", "False"])
    assert CHECKERS["dynamic_counting"]("( [ ] < > ( )", [")", "]", ">", "}"]) == ")"


def test_sdist_download_failure_is_one_clear_error(tmp_path, monkeypatch):
    from backend.tasks import bigbench_source

    def offline(*a, **k):
        return subprocess.CompletedProcess(a, 1, "", "ERROR: Could not find a version that satisfies the requirement")

    monkeypatch.setattr(bigbench_source.subprocess, "run", offline)
    with pytest.raises(UserError, match="PyPI must be reachable once"):
        bigbench_source.fetch_sdist(tmp_path)
    (tmp_path / bigbench_source.SDIST).write_bytes(b"not the sdist")
    with pytest.raises(UserError, match="sha256"):
        bigbench_source.fetch_sdist(tmp_path)


def test_unknown_task_needs_no_network():
    from backend.tasks.suite import load_task

    with pytest.raises(UserError, match="unknown task 'no_such_task'"):
        load_task("no_such_task")


# -------------------------------------------------------------------------------------------- CLI


def test_cli_bad_inputs(tmp_path, tiny_model_dir):
    assert_one_line_error(run_cli("tasks", "eval", "--model", tiny_model_dir, "--task", "no_such_task"), "unknown task")
    long = write(tmp_path, {"name": "long", "examples": [{"input": " ".join(["the cat sat"] * 100),
                                                          "target_scores": {"mat": 1, "rug": 0}}]}, "long.json")
    assert_one_line_error(run_cli("tasks", "eval", "--model", tiny_model_dir, "--task-file", long), "task long item 0", "context length")
    oov = write(tmp_path, {"name": "oov", "examples": [{"input": "the cat sat on the", "target_scores": {"mat": 1, "zebra": 0}}]},
                "oov.json")
    assert_one_line_error(run_cli("tasks", "eval", "--model", tiny_model_dir, "--task-file", oov), "'zebra'", "vocabulary")
    assert_one_line_error(run_cli("tasks", "eval", "--model", tiny_model_dir, "--task-file", write(tmp_path, "{", "bad.json")),
                          "not valid JSON")
    with pytest.raises(SystemExit) as e:  # a choice outside --format's Literal: argparse refuses it before any work
        run_cli("tasks", "eval", "--model", tiny_model_dir, "--task", "math_qa", "--format", "haiku")
    assert e.value.code == 2


def test_cli_eval_writes_parquet_under_the_run(tiny_run, tmp_path):
    from backend.dictionaries import ReluL1SAE, save_dictionary
    from backend.tasks.evaluate import results_dir

    d = ReluL1SAE({"d_in": 64, "d_sae": 32, "hook_name": "blocks.1.hook_resid_post"})
    d.init_weights_(generator=torch.Generator().manual_seed(0))
    save_dictionary(d, tiny_run / "dictionaries" / "rand")
    task = write(tmp_path, FIXTURE)
    code, out, err = run_cli("tasks", "eval", "--run", tiny_run, "--dict", "rand", "--task-file", task, "--format", "qa")
    assert code == 0, err
    assert "retained" in out and "tiny_fixture" in out
    folder = results_dir("x", tiny_run, "rand")
    assert folder == tiny_run / "tasks" / "rand"
    df = pd.read_parquet(folder / "tiny_fixture.parquet")
    assert len(df) == 3 and df["prompt_format"].unique().tolist() == ["qa"]
    assert {"logprob_clean", "pred_spliced", "correct_norm_spliced_error", "n_tokens"} <= set(df.columns)
    from backend.tasks.evaluate import read_results

    back = read_results(folder)
    assert back.items["logprob_clean"].map(len).tolist() == df["logprob_clean"].map(len).tolist()
    assert set(back.summary["condition"]) == {"clean", "spliced", "spliced_error"}
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["config"]["dictionary"] == "rand" and summary["config"]["hook"] == "blocks.1.hook_resid_post"


def test_cli_refuses_a_dictionary_of_another_model_or_hook(tiny_run, tmp_path):
    from backend.dictionaries import ReluL1SAE, save_dictionary
    from tests.tiny import make_tiny_model

    other = make_tiny_model(tmp_path / "other", seed=1)
    assert_one_line_error(run_cli("tasks", "eval", "--run", tiny_run, "--model", other, "--task", "math_qa"),
                          "not the run's model")
    d = ReluL1SAE({"d_in": 64, "d_sae": 32, "hook_name": "blocks.0.hook_resid_post"})
    save_dictionary(d, tiny_run / "dictionaries" / "wrong-hook")
    assert_one_line_error(run_cli("tasks", "eval", "--run", tiny_run, "--dict", "wrong-hook", "--task", "math_qa"),
                          "blocks.0.hook_resid_post")


# ------------------------------------------------------------------------------ real model (slow)


@pytest.mark.slow
@pytest.mark.integration
@torch.no_grad()
def test_real_model_scores_math_items_clean_and_spliced():
    from backend.dictionaries import ReluL1SAE
    from backend.model.loading import load_model
    from backend.tasks.evaluate import evaluate_tasks, format_summary
    from backend.tasks.suite import load_task, split_items

    lm = load_model("smollm2-135m", device="cpu")
    tasks = [split_items(load_task(n), 4) for n in ("math_qa", "math_symbols")]
    d = ReluL1SAE({"d_in": 576, "d_sae": 256})
    d.init_weights_(generator=torch.Generator().manual_seed(0))
    r = evaluate_tasks(lm, tasks, dictionary=d, hook="blocks.15.hook_resid_post")
    assert len(r.items) == 8 and r.items["n_choices"].eq(4).all()
    clean = np.concatenate(r.items["logprob_clean"].to_list())
    np.testing.assert_allclose(np.concatenate(r.items["logprob_spliced_error"].to_list()), clean, atol=2e-3)
    assert np.all(clean < 0) and np.abs(np.concatenate(r.items["logprob_spliced"].to_list()) - clean).max() > 0.1
    # the packed pass equals a plain forward of prompt + choice on the real model too
    it, task = tasks[0].items[0], tasks[0]
    prompt, conts = prompts.render(task, it, "bigbench")
    enc = scoring.encode_item(lm.tokenizer, prompt, conts, where="t", vocab_size=49152, max_len=8192)
    manual = [manual_logprob(lm.model, enc.prompt, c) for c in enc.choices]
    np.testing.assert_allclose(r.items["logprob_clean"][0], manual, atol=2e-3)
    assert "math_symbols" in format_summary(r.summary)


def test_cli_unknown_task_as_a_process():
    from tests.test_cli_errors import assert_one_line_error as assert_process_error
    from tests.test_cli_errors import run_cli as run_process

    assert_process_error(run_process("tasks", "eval", "--task", "no_such_task"), "unknown task 'no_such_task'")
