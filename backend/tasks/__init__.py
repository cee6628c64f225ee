"""Multiple-choice tasks scored by log-likelihood, clean and with a dictionary spliced in.

    from backend.tasks.suite import load_task, split_items
    from backend.tasks.evaluate import evaluate_tasks
    tasks = [split_items(load_task(name), 50) for name in ("arithmetic.3_digit_addition", "math_qa")]
    result = evaluate_tasks(lm, tasks, dictionary=d, hook="blocks.15.hook_resid_post")  # lm: a LoadedModel
    result.items    # one row per item: choices, log-probs and predictions per condition
    result.summary  # one row per task and condition: accuracy with its bootstrap 95% interval, chance

Modules: schema (BIG-bench JSON task files), bigbench_source (fetch the sdist, generate task JSON),
math_tasks (the default corpus's word problems as numeric multiple choice), prompts (how an item
becomes prompt + continuations), scoring (summed log-probabilities in batched forward passes),
bootstrap (intervals and paired tests), suite (task names), evaluate (the whole evaluation + Parquet).
"""
