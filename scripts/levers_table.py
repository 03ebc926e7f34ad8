"""Markdown table of the levers rows (scripts/levers_fit.py output), in the order they were run.

    python scripts/levers_table.py docs/results/levers_rows.jsonl
"""
import json
import sys

import numpy as np

rows = [json.loads(line) for line in open(sys.argv[1])]
last = {r["row"]: r for r in rows}  # a rerun row replaces the earlier one
anchor = last.get("anchor")
print("| row | features | head | dim | test SRCC | test PLCC | SRCC per split (seed0..4) | ΔSRCC vs anchor (mean ± std) | Δ per split | fit s/split |")
print("|---|---|---|---|---|---|---|---|---|---|")
seen = set()
for r in rows:
    if r["row"] in seen:
        continue
    seen.add(r["row"])
    r = last[r["row"]]
    sp = list(r["splits"])
    sr = np.array([r["splits"][s]["srcc"] for s in sp])
    pl = np.array([r["splits"][s]["plcc"] for s in sp])
    c = r["config"]
    head = c.get("head", "ridge")
    opts = [k for k in ("standardise", "block", "logstd") if c.get(k)]
    if head in ("mlp", "ridge+mlp"):
        opts += [f"{c.get('loss', 'mse')}", f"{c.get('n_seeds', 1)} seed(s)", f"{c.get('epochs', 150)} ep"]
    head = head + (" (" + ", ".join(opts) + ")" if opts else "")
    sd = (lambda v: v.std(ddof=1)) if len(sp) > 1 else (lambda v: 0.0)
    a = np.array([anchor["splits"][s]["srcc"] for s in sp]) if anchor else sr * np.nan
    d = sr - a
    fit = np.mean([r["splits"][s]["fit_s"] for s in sp])
    print(f"| {r['row']} | `{r['features']}` | {head} | {r['dim']} | {sr.mean():.3f} ± {sd(sr):.3f} | "
          f"{pl.mean():.3f} ± {sd(pl):.3f} | {' / '.join(f'{v:.3f}' for v in sr)} | "
          f"{d.mean():+.3f} ± {sd(d):.3f} | {' / '.join(f'{v:+.3f}' for v in d)} | {fit:.1f} |")
