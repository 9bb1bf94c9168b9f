"""``mesu-snn demo [--out DIR] [--force]``: the README's main job, offline in about a minute.

A Bayesian spiking MLP learns a stream of permuted-digits tasks (scikit-learn's embedded 8×8
digits; task k shows every image under its own fixed pixel permutation) with no task
boundaries: the learner only ever sees (x, y) mini-batches. MESU is compared with SGD and BGD
on the same network initialisation, data and sample order; after the stream a results table
is printed and every rule's run directory (metrics.json, log.csv, plots, checkpoint) is
written under ``DIR/<rule>``, with ``DIR/comparison.png`` and ``DIR/results.md``.

Hyperparameters (:data:`DEMO_RULES`) come from the equal-budget search of
``experiments/demo_search.py`` (4 values of each rule's main hyperparameter, scored on the
same stream with seed 1; table in ``experiments/results/demo_search.md``).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

#: rule -> hyperparameters used by the demo
DEMO_RULES = {
    # memory in samples: 4.8e6 = the searched 3e5 updates x batch 16 (N counted updates before issue 10)
    "mesu": {"memory": 4_800_000.0, "sigma_prior": 0.1},
    "sgd": {"lr": 0.03},
    "bgd": {"lr": 3.0},
}


def demo_config(rule: str, seed: int = 0, n_tasks: int = 5, epochs_per_task: int = 3):
    """The demo's RunConfig for ``rule`` (one of :data:`DEMO_RULES`)."""
    from ..config import parse_config
    return parse_config({
        "seed": seed,
        "data": {"dataset": "digits"},
        "stream": {"kind": "permuted", "n_tasks": n_tasks, "epochs_per_task": epochs_per_task, "batch_size": 16},
        "encoder": {"kind": "current", "num_steps": 10, "gain": 2.0},
        "model": {"kind": "mlp", "hidden": [128], "readout": "membrane", "sigma_init": 0.5},
        "rule": {"name": rule, **DEMO_RULES[rule]},
        "schedule": {"train_samples": 4, "eval_samples": 8, "eval_every": 25, "checkpoint_every": 200,
                     "threads": 1},
    })


def register(sub) -> None:
    p = sub.add_parser("demo", help="MESU vs SGD vs BGD on a task-free permuted-digits stream (offline, ~1 min)",
                       description=__doc__.split("\n\n")[0].replace("``", ""))
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tasks", type=int, default=5, help="number of permuted tasks (default 5)")
    p.add_argument("--epochs", type=int, default=3, help="passes over each task's data (default 3)")
    p.add_argument("--rules", default=",".join(DEMO_RULES), help="comma-separated subset of mesu,sgd,bgd")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..build import build_tasks
    from ..runs import build_run
    from ..runs.atomic import atomic_write_text
    from ..errors import CLIError
    from ..config import dump_toml
    from ..runs.plots import plot_comparison, write_run_plots
    from ..runs.report import format_table, markdown_table
    from ..runs.layout import create_run_dir

    rules = [r.strip() for r in args.rules.split(",") if r.strip()]
    bad = [r for r in rules if r not in DEMO_RULES]
    if bad or not rules:
        raise CLIError(f"--rules: unknown rule(s) {bad or args.rules!r}; choose from {', '.join(DEMO_RULES)}")
    if args.tasks < 1 or args.epochs < 1:
        raise CLIError("--tasks and --epochs must be >= 1")
    if args.seed < 0:
        raise CLIError("--seed must be >= 0")
    import torch
    out = create_run_dir(args.out, force=args.force, resumable=False)
    torch.set_num_threads(1)     # these small networks run fastest single-threaded on CPU
    t0 = time.time()
    print(f"Task-free permuted-digits stream: {args.tasks} tasks x {args.epochs} epochs, "
          f"SpikingMLP 64-128-10, T=10; rules: {', '.join(rules)}")
    tasks = None
    results = {}
    for rule in rules:
        cfg = demo_config(rule, args.seed, args.tasks, args.epochs)
        tasks = build_tasks(cfg) if tasks is None else tasks       # same data for every rule
        rdir = create_run_dir(out / rule)
        (rdir / "config.toml").write_text(dump_toml(cfg))
        trainer = build_run(cfg, rdir, progress=not args.quiet, tasks=tasks, desc=f"{rule:>4}")
        results[rule] = trainer.fit()
        write_run_plots(rdir, results[rule])
    plot_comparison(results, out / "comparison.png", "task-free permuted digits: average accuracy on tasks seen")
    table = format_table(results)
    atomic_write_text(out / "results.md", markdown_table(results) + "\n")
    atomic_write_text(out / "summary.json", json.dumps(
        {r: {k: m[k] for k in ("average_accuracy", "backward_transfer", "forgetting", "learning_accuracy",
                               "average_accuracy_last_k", "rule_hyperparameters")} for r, m in results.items()},
        indent=2) + "\n")
    print()
    print(table)
    print(f"\n{len(rules)} runs in {time.time() - t0:.0f} s; results in {out}/ (comparison.png, results.md, <rule>/)")
    return 0
