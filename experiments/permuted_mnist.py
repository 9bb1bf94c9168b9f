"""Permuted-MNIST comparison of every rule with an equal-budget hyperparameter search.

    .venv/bin/python experiments/permuted_mnist.py [--jobs 2] [--quick] [--data-root DIR]

1. Search: for each rule, 4 values of its main hyperparameter (:data:`GRID`), each scored by
   the final average accuracy on a *validation* stream: the same recipe with seed 1 (other
   permutations, other training subsample, other initialisation). Same budget for every rule.
2. Final: each rule with its best value on the seed-0 stream of
   ``configs/permuted_mnist_base.toml`` (same model initialisation, data and batch order for
   all rules), then on the streams of :data:`EXTRA_SEEDS`.

Writes ``results/permuted_mnist_search.json``, ``results/permuted_mnist_seeds.json`` (average
accuracy, forgetting and learning accuracy per seed), ``results/permuted_mnist.json`` (metrics of
every final run), ``results/permuted_mnist.md`` (tables) and ``results/permuted_mnist.png``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from mesu_snn.config import load_config, parse_config  # noqa: E402


class Chosen(str):
    """A fixed hyperparameter that takes the value chosen for rule ``Chosen("name")``."""


#: rule -> (fixed hyperparameters, searched name, 4 values). A ``Chosen(rule)`` value takes that
#: rule's chosen value: EWC regularises SGD (as in Kirkpatrick et al.) and SI Adam (as in
#: Zenke et al.), each at its base optimizer's chosen learning rate, so both are searched after it.
GRID = {
    # memory in samples (batch 16): the searched 3e4..1e6 updates of the committed results x 16
    "mesu": ({"sigma_prior": 0.05}, "memory", [4.8e5, 1.6e6, 4.8e6, 1.6e7]),
    "bgd": ({}, "lr", [1.0, 3.0, 10.0, 30.0]),
    "sgd": ({}, "lr", [0.001, 0.003, 0.01, 0.03]),
    "adam": ({}, "lr", [3e-5, 1e-4, 3e-4, 1e-3]),
    "ewc": ({"lr": Chosen("sgd"), "gamma": 1.0, "fisher_samples": 200}, "ewc_lambda", [3.0, 10.0, 30.0, 100.0]),
    "si": ({"base": "adam", "lr": Chosen("adam"), "xi": 1e-3}, "si_c", [0.1, 0.3, 1.0, 3.0]),
}
#: final runs: the config's seed (0), then these (seed 1 is the validation stream)
EXTRA_SEEDS = [2, 3]


def _derived(rule: str) -> dict:
    """The fixed hyperparameters of ``rule`` that take another rule's chosen value (see GRID)."""
    return {k: v for k, v in GRID[rule][0].items() if isinstance(v, Chosen)}


def _config(base: dict, rule: str, params: dict, seed: int):
    raw = json.loads(json.dumps(base))
    raw["seed"] = seed
    raw["rule"] = {"name": rule, **params}
    return parse_config(raw)


def _run(args):
    base, rule, params, seed, quick = args
    import torch
    torch.set_num_threads(1)
    from mesu_snn.build import build_trainer
    cfg = _config(base, rule, params, seed)
    if quick:
        cfg.stream.n_tasks, cfg.stream.epochs_per_task = 3, 1
    t0 = time.time()
    m = build_trainer(cfg).fit()
    m["wall_s"] = time.time() - t0
    return rule, params, seed, m


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="3 tasks x 1 epoch (a smoke run, not the result)")
    ap.add_argument("--rules", default=",".join(GRID))
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--data-root", help="dataset folder (default: $MESU_SNN_DATA, else data/)")
    args = ap.parse_args(argv)
    base_cfg = load_config(HERE / "configs" / "permuted_mnist_base.toml")
    base = base_cfg.to_dict()
    if args.data_root:                  # else data.root's usual resolution: $MESU_SNN_DATA, then data/
        base["data"]["root"] = str(Path(args.data_root).resolve())
    rules = [r for r in args.rules.split(",") if r]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    search: dict[str, list] = {r: [] for r in rules}
    best: dict[str, dict] = {}

    def fixed(r):
        for k, v in _derived(r).items():
            if v not in best:
                raise SystemExit(f"--rules: {r} takes its {k} from {v}; include {v}")
        return {**GRID[r][0], **{k: best[v][k] for k, v in _derived(r).items()}}
    stages = [[r for r in rules if not _derived(r)], [r for r in rules if _derived(r)]]
    with ProcessPoolExecutor(args.jobs) as ex:
        for stage in stages:
            jobs = [(base, r, {**fixed(r), GRID[r][1]: v}, 1, args.quick) for r in stage for v in GRID[r][2]]
            for rule, params, _, m in ex.map(_run, jobs):
                search[rule].append({"params": params, "validation_average_accuracy": m["average_accuracy"],
                                     "diverged": m["diverged"]})
                print(f"search {rule:5s} {params}: validation avg acc {m['average_accuracy']:.3f}"
                      f"{' (diverged)' if m['diverged'] else ''} ({m['wall_s']:.0f} s)", flush=True)
            best.update({r: max((e for e in search[r] if not e["diverged"]),
                                key=lambda e: e["validation_average_accuracy"])["params"] for r in stage})
        finals, repeats = {}, {r: {} for r in rules}
        seeds = [base_cfg.seed] + [s for s in EXTRA_SEEDS if not args.quick]
        for rule, params, seed, m in ex.map(_run, [(base, r, best[r], s, args.quick) for s in seeds for r in rules]):
            if seed == base_cfg.seed:
                finals[rule] = m
            repeats[rule][seed] = {k: m[k] for k in ("average_accuracy", "forgetting", "learning_accuracy", "diverged")}
            print(f"final  {rule:5s} {params} seed {seed}: test avg acc {m['average_accuracy']:.3f}", flush=True)
    from mesu_snn.runs.plots import plot_comparison
    from mesu_snn.runs.report import markdown_table
    tag = "permuted_mnist" + ("_quick" if args.quick else "")
    (out / f"{tag}_search.json").write_text(json.dumps({"grid": {r: GRID[r] for r in rules}, "search": search,
                                                        "best": best}, indent=2) + "\n")
    (out / f"{tag}.json").write_text(json.dumps(finals, indent=2) + "\n")
    (out / f"{tag}_seeds.json").write_text(json.dumps(repeats, indent=2) + "\n")
    plot_comparison(finals, out / f"{tag}.png", "task-free permuted MNIST (10 tasks): average accuracy on tasks seen")
    lines = [f"# Permuted MNIST, task-free ({'quick smoke run' if args.quick else '10 tasks'})", "",
             f"Command: `.venv/bin/python experiments/permuted_mnist.py{' --quick' if args.quick else ''}` "
             f"({time.time() - t0:.0f} s on this machine, {args.jobs} processes, 1 thread each).", "",
             "Config: `experiments/configs/permuted_mnist_base.toml`; hyperparameters chosen on a seed-1 "
             "validation stream, 4 values per rule (last table); final runs on seed 0 and on the extra seeds.", "",
             "## Final runs (seed 0)", "", markdown_table(finals), "",
             f"## Final runs on seeds {', '.join(map(str, seeds))} (other permutations, subsamples and initialisations)", "",
             "| rule | avg acc per seed | mean ± sd | forgetting mean | learning acc mean |", "|---|---|---|---|---|"]
    for r in rules:
        a = [repeats[r][s]["average_accuracy"] for s in seeds]
        sd = statistics.stdev(a) if len(a) > 1 else 0.0
        f = statistics.mean(repeats[r][s]["forgetting"] for s in seeds)
        la = statistics.mean(repeats[r][s]["learning_accuracy"] for s in seeds)
        per_seed = ", ".join(f"{repeats[r][s]['average_accuracy']:.3f}" + (" (diverged)" if repeats[r][s]["diverged"] else "")
                             for s in seeds)
        lines.append(f"| {r} | {per_seed} | {statistics.mean(a):.3f} ± {sd:.3f} | {f:.3f} | {la:.3f} |")
    lines += ["", "## Search (validation average accuracy, seed 1)", "",
             "| rule | searched | values -> validation avg acc | chosen |", "|---|---|---|---|"]
    for r in rules:
        vals = ", ".join(f"{e['params'][GRID[r][1]]:g}: {e['validation_average_accuracy']:.3f}"
                         f"{' (diverged)' if e['diverged'] else ''}" for e in search[r])
        lines.append(f"| {r} | {GRID[r][1]} | {vals} | {best[r][GRID[r][1]]:g} |")
    (out / f"{tag}.md").write_text("\n".join(lines) + "\n")
    print((out / f"{tag}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
