"""Equal-budget search behind ``mesu-snn demo``'s hyperparameters (permuted digits).

    .venv/bin/python experiments/demo_search.py

For MESU, SGD and BGD, 4 values of the main hyperparameter, each scored by the final average
accuracy on the demo's stream with seed 1 (validation; the demo itself runs seed 0). Writes
``results/demo_search.md`` and ``results/demo_search.json``.
"""
from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

GRID = {
    # memory in samples (batch 16): the searched 1e4..3e5 updates of the committed results x 16
    "mesu": ({"sigma_prior": 0.1}, "memory", [1.6e5, 4.8e5, 1.6e6, 4.8e6]),
    "sgd": ({}, "lr", [0.003, 0.01, 0.03, 0.1]),
    "bgd": ({}, "lr", [3.0, 10.0, 30.0, 100.0]),
}


def _run(job):
    rule, params = job
    import torch
    torch.set_num_threads(1)
    from mesu_snn.build import build_trainer
    from mesu_snn.commands import demo
    demo.DEMO_RULES[rule] = params
    m = build_trainer(demo.demo_config(rule, seed=1)).fit()
    return rule, params, m["average_accuracy"]


def main() -> int:
    t0 = time.time()
    jobs = [(r, {**fixed, name: v}) for r, (fixed, name, vals) in GRID.items() for v in vals]
    res: dict[str, list] = {r: [] for r in GRID}
    with ProcessPoolExecutor(2) as ex:
        for rule, params, acc in ex.map(_run, jobs):
            res[rule].append({"params": params, "validation_average_accuracy": acc})
            print(f"{rule:5s} {params}: {acc:.3f}", flush=True)
    best = {r: max(v, key=lambda e: e["validation_average_accuracy"])["params"] for r, v in res.items()}
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "demo_search.json").write_text(json.dumps({"search": res, "best": best}, indent=2) + "\n")
    lines = ["# Demo hyperparameters: equal-budget search on permuted digits (validation seed 1)", "",
             f"Command: `.venv/bin/python experiments/demo_search.py` ({time.time() - t0:.0f} s, 2 processes).", "",
             "| rule | searched | values -> validation avg acc | chosen |", "|---|---|---|---|"]
    for r, (fixed, name, _) in GRID.items():
        vals = ", ".join(f"{e['params'][name]:g}: {e['validation_average_accuracy']:.3f}" for e in res[r])
        lines.append(f"| {r} | {name} (fixed {fixed}) | {vals} | {best[r][name]:g} |")
    (out / "demo_search.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
