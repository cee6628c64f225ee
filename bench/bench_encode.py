"""Encode time per token of every dictionary of a run, relative to the SAE encoder (relu-l1).

    .venv/bin/python -m bench.bench_encode [--run data/demo] [--tokens 8192] [--base relu-l1]

The amortisation-gap methods buy better codes with inference compute: sparse coding iterates per
token, SAE+ITO runs a pursuit over the SAE's decoder. This prints what that costs on the same
held-out tokens, in the same process, one after the other: measured microseconds per token
(best of 3 passes in batches of 1024, after a warm-up batch), analytic encode FLOPs per token,
and both as a ratio to the base SAE encoder.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default="data/demo")
    ap.add_argument("--tokens", type=int, default=8192, help="held-out tokens to encode")
    ap.add_argument("--base", default="relu-l1", help="the dictionary the ratios are relative to")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--out", default=str(HERE / "results" / "encode.json"))
    args = ap.parse_args()

    import numpy as np
    import torch

    from backend.activations.activation_store import ActivationStore
    from backend.common.layout import dict_dir, dictionary_names
    from backend.dictionaries import load_dictionary
    from backend.evaluation.compare import encode_seconds_per_token

    if args.threads:
        torch.set_num_threads(args.threads)
    names = dictionary_names(args.run)
    if args.base not in names:
        sys.exit(f"error: no dictionary {args.base!r} in {args.run} (have: {', '.join(names) or 'none'})")
    x, _ = ActivationStore(args.run).load_split("test", max_tokens=args.tokens)
    x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    rows = {}
    for n in [args.base] + [n for n in names if n != args.base]:
        d = load_dictionary(dict_dir(args.run, n))
        rows[n] = {"kind": d.cfg.get("kind"), "us_per_token": 1e6 * encode_seconds_per_token(d, x, repeats=3),
                   "encode_flops": int(d.flops_per_token()["encode"])}
    base = rows[args.base]
    print(f"{len(x)} held-out tokens of {args.run}, {torch.get_num_threads()} threads; ratios relative to {args.base}")
    print(f"{'dictionary':24s} {'kind':16s} {'us/token':>9s} {'x time':>7s} {'MFLOP/tok':>10s} {'x FLOPs':>8s}")
    for n, r in rows.items():
        r["time_ratio"] = r["us_per_token"] / base["us_per_token"]
        r["flops_ratio"] = r["encode_flops"] / base["encode_flops"]
        print(f"{n:24s} {str(r['kind']):16s} {r['us_per_token']:9.2f} {r['time_ratio']:7.2f} "
              f"{r['encode_flops'] / 1e6:10.2f} {r['flops_ratio']:8.2f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"run": args.run, "tokens": len(x), "threads": torch.get_num_threads(),
                                          "base": args.base, "dictionaries": rows}, indent=2))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
