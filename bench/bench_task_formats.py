"""Choose the prompt format and the default suite on held-out items, never on evaluated ones.

For every task and prompt format (bigbench | qa | chat), the clean accuracy of the model on the
task's dev slice (the last 40 items of its seeded shuffle; suite.split_items), with its bootstrap
95% interval and chance. The format with the best mean accuracy over tasks is the default
(prompts.DEFAULT_FORMAT), and a task joins the default suite when its dev accuracy in that format
is above chance. Also prints wall and CPU seconds per format, to size the suite.

    python -m bench.bench_task_formats [--tasks all] [--formats bigbench,qa,chat] [--out bench/results/task_formats.parquet]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from backend.model.loading import load_model
from backend.tasks.evaluate import evaluate_tasks
from backend.tasks.suite import load_task, split_items, task_names


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tasks", default="all", help="comma-separated task names or all")
    ap.add_argument("--formats", default="bigbench,qa,chat")
    ap.add_argument("--out", default="bench/results/task_formats.parquet")
    a = ap.parse_args()

    lm = load_model(a.model, "cpu")
    names = task_names() if a.tasks == "all" else a.tasks.split(",")
    tasks = [split_items(load_task(n), split="dev") for n in names]
    rows = []
    for fmt in a.formats.split(","):
        cpu0, t0 = time.process_time(), time.perf_counter()
        for task in tasks:  # one task at a time, so a long run shows its progress
            r = evaluate_tasks(lm, [task], prompt_format=fmt)
            s = r.summary[r.summary["condition"] == "clean"].assign(format=fmt)
            rows.append(s)
            print(f"  {fmt:<9}{task.name:<36}{s['accuracy'].iloc[0]:.3f} [{s['acc_low'].iloc[0]:.3f}, "
                  f"{s['acc_high'].iloc[0]:.3f}] chance {s['chance'].iloc[0]:.3f}", flush=True)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
        print(f"{fmt}: {wall:.0f} s wall, {cpu:.0f} CPU-s, {len(tasks)} tasks", flush=True)
    table = pd.concat(rows, ignore_index=True)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(a.out, index=False)
    table = table[table["task"] != "all tasks"]
    wide = table.pivot_table(index="task", columns="format", values="accuracy", sort=False)
    wide.insert(0, "chance", table.groupby("task", sort=False)["chance"].first())
    wide.insert(0, "n", table.groupby("task", sort=False)["n_items"].first())
    pd.set_option("display.width", 200)
    print(wide.round(3).to_string())
    for fmt in a.formats.split(","):
        sub = table[table["format"] == fmt]
        above = sub[sub["acc_low"] > sub["chance"]]["task"].tolist()
        print(f"{fmt}: mean accuracy {sub['accuracy'].mean():.3f} (chance {sub['chance'].mean():.3f}); "
              f"interval above chance on {len(above)} of {len(sub)}: {', '.join(above)}")


if __name__ == "__main__":
    main()
