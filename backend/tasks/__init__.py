"""Multiple-choice tasks scored by log-likelihood, clean and with a dictionary spliced in.

    from backend.tasks.suite import list_tasks, load_task
    from backend.tasks.evaluate import evaluate_tasks
    result = evaluate_tasks(lm, ["arithmetic.2_digit_addition", "math_qa"], dictionary=d, hook="blocks.15.hook_resid_post")
    result.items    # one row per item: choices, log-probs and predictions per condition
    result.summary  # one row per task and condition: accuracy with its bootstrap 95% interval, chance

Modules: schema (BIG-bench JSON task files), bigbench_source (fetch the sdist, generate task JSON),
math_tasks (the default corpus's word problems as numeric multiple choice), prompts (how an item
becomes prompt + continuations), scoring (summed log-probabilities in batched forward passes),
bootstrap (intervals and paired tests), suite (task names), evaluate (the whole evaluation + Parquet).
"""
