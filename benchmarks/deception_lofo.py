"""Leave-one-family-out model selection for the deception probe.

For each method x C x hook, fit on two of the built-in recipe's three families (instructed,
false_statement, concealment) and score the third; the configuration with the best mean of those
three AUROCs is chosen, refitted on all three, and only then scored on the role-play lies.
(The role-play AUROC of every configuration is also written, for information; choosing by it
would be selection on the test set.)

Run: python benchmarks/deception_lofo.py [--out FILE]
"""
import itertools
import json
import sys
from pathlib import Path

import numpy as np

from circuits import load_model
from probe.activation_set import ActivationSet
from probe.datasets import recipe
from probe.metrics import auroc
from probe.probes import make_probe

cache = str(Path.home()/".cache/coalign/acts")
model = load_model()
hooks = [f"blocks.{i}.hook_resid_post" for i in range(4, 28, 2)]
fams = {f: recipe(f"deception/{f}") for f in ("instructed", "false_statement", "concealment")}
acts = {f: ActivationSet.from_dataset(model, d, hooks, select="response_mean", cache_dir=cache, progress=False) for f, d in fams.items()}
rp = ActivationSet.from_dataset(model, recipe("roleplay_lies"), hooks, select="response_mean", cache_dir=cache, progress=False)
cands = [("logistic", {"C": c}) for c in (0.001, 0.01, 0.1, 1.0)] + [("mass_mean", {}), ("mass_mean_cov", {})]
rows = []
for (m, kw), h in itertools.product(cands, hooks):
    lofo = []
    for f in fams:
        tr = [g for g in fams if g != f]
        X = np.vstack([acts[g].X[h] for g in tr]); y = np.concatenate([acts[g].y for g in tr])
        p = make_probe(m, **kw).fit(X, y)
        lofo.append(auroc(acts[f].y, p.decision_function(acts[f].X[h])))
    X = np.vstack([acts[g].X[h] for g in fams]); y = np.concatenate([acts[g].y for g in fams])
    p = make_probe(m, **kw).fit(X, y)
    r = auroc(rp.y, p.decision_function(rp.X[h]))
    rows.append(dict(method=m, **kw, hook=h, lofo=lofo, lofo_mean=float(np.mean(lofo)), lofo_min=float(np.min(lofo)), roleplay=r))
    print(json.dumps(rows[-1]), flush=True)
best = max(rows, key=lambda r: r["lofo_mean"])
print("CHOSEN by lofo_mean:", json.dumps(best))
best = max(rows, key=lambda r: r["lofo_min"])
print("CHOSEN by lofo_min:", json.dumps(best))
if len(sys.argv) > 2 and sys.argv[1] == "--out":
    json.dump(rows, open(sys.argv[2], "w"), indent=1)
