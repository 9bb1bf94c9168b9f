"""MESU as an online local rule (eligibility traces) vs MESU with BPTT vs SGD on the same
eligibility gradient, on the same task-free streams, batch 1, same seeds.

    python experiments/online_rule.py                       # both protocols, ~10-15 min CPU
    python experiments/online_rule.py --protocols pmnist --train-per-task 300 --out /tmp/x.json
    python experiments/online_rule.py --protocols pmnist --rules mesu_online_symmetric_fp8 \
        mesu_online_symmetric_fp12 --out experiments/results/online_rule_fixed_point.json
    python experiments/online_rule.py --protocols pmnist --rules mesu_online_symmetric \
        mesu_online_symmetric_tb8 mesu_online_symmetric_tb12 mesu_online_symmetric_tb16 \
        mesu_online_symmetric_fp8_tb8 --out experiments/results/online_rule_trace_bits.json

Protocols (built through the library's config -> trainer path, so every rule sees the same
network initialisation, the same samples in the same order and the same evaluation):

* ``pmnist``: permuted MNIST, 3 tasks, ``--train-per-task`` images each (one pass), batch 1,
  standardised currents, T = 10, LIF 784-100-10, membrane readout, the authors' init
  (the settings of experiments/paper_pmnist.py's SNN runs, N = 1e4, σ_prior = 1, but with the
  default gradient clamp 0.5: without it BPTT-MESU's gradient went non-finite in task 1 here).
* ``nmnist``: split N-MNIST (NMNIST-small, the first saccade), 5 tasks of two digits, event
  frames T = 5, LIF 2312-128-10, batch 1, one pass; scored task-incrementally.

Rules: ``mesu`` (BPTT), ``mesu_online`` with symmetric and with random feedback, ``sgd_online``
(symmetric). Hyperparameters are not tuned for the online rules (the BPTT settings are reused).
Results are written after every run to ``--out`` (default experiments/results/online_rule.json).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RULES = {
    "mesu_bptt": {"name": "mesu", "memory": 10000.0, "sigma_prior": 1.0},
    "mesu_online_symmetric": {"name": "mesu_online", "memory": 10000.0, "sigma_prior": 1.0,
                              "feedback": "symmetric"},
    "mesu_online_random": {"name": "mesu_online", "memory": 10000.0, "sigma_prior": 1.0,
                           "feedback": "random", "feedback_seed": 0},
    "sgd_online_symmetric": {"name": "sgd_online", "lr": 0.01, "feedback": "symmetric"},
    # the fixed-point variant (not in the default list): μ, σ on b-bit grids, stochastic rounding
    "mesu_online_symmetric_fp8": {"name": "mesu_online", "memory": 10000.0, "sigma_prior": 1.0,
                                  "feedback": "symmetric", "fixed_point_bits": 8},
    "mesu_online_symmetric_fp12": {"name": "mesu_online", "memory": 10000.0, "sigma_prior": 1.0,
                                   "feedback": "symmetric", "fixed_point_bits": 12},
    # fixed-point traces (x̄, ē on b-bit grids, stochastic rounding, a static worst-case scale per layer)
    **{f"mesu_online_symmetric_tb{b}": {"name": "mesu_online", "memory": 10000.0, "sigma_prior": 1.0,
                                        "feedback": "symmetric", "trace_bits": b} for b in (8, 12, 16, 32)},
    # the float traces' recurrence with another chunk (same maths, other round-off: a control draw)
    **{f"mesu_online_symmetric_c{c}": {"name": "mesu_online", "memory": 10000.0, "sigma_prior": 1.0,
                                       "feedback": "symmetric", "chunk": c} for c in (1, 4)},
    # diagnostic: the per-step trace recurrence of the fixed-point path with its rounding off (the
    # trace_bits=32 engine, rounding replaced by the identity; float traces, the per-step path)
    "mesu_online_symmetric_per_step_float": {"name": "mesu_online", "memory": 10000.0, "sigma_prior": 1.0,
                                             "feedback": "symmetric", "trace_bits": 32, "_no_rounding": True},
    # 32-bit traces with another rounding stream (the stream is seeded from feedback_seed, which the
    # symmetric feedback does not use otherwise): a fresh draw of the same configuration
    "mesu_online_symmetric_tb32_fs1": {"name": "mesu_online", "memory": 10000.0, "sigma_prior": 1.0,
                                       "feedback": "symmetric", "trace_bits": 32, "feedback_seed": 1},
    # everything fixed point: μ, σ and the traces on 8-bit (12-bit) grids
    **{f"mesu_online_symmetric_fp{b}_tb{b}": {"name": "mesu_online", "memory": 10000.0, "sigma_prior": 1.0,
                                              "feedback": "symmetric", "fixed_point_bits": b, "trace_bits": b}
       for b in (8, 12)},
}
DEFAULT_RULES = ["mesu_bptt", "mesu_online_symmetric", "mesu_online_random", "sgd_online_symmetric"]


def _data_root() -> str:
    env = os.environ.get("MESU_SNN_DATA")
    return env if env else str(ROOT.parent / "shared" / "data")


def protocol(name: str, args) -> dict:
    common_sched = {"train_samples": args.samples, "eval_samples": 8, "eval_every": 0, "checkpoint_every": 0,
                    "eval_average": "log_probs", "ood": False, "threads": 1}
    if name == "pmnist":
        return {"seed": args.seed,
                "data": {"dataset": "mnist", "root": _data_root(), "train_per_task": args.train_per_task,
                         "test_per_task": args.test_per_task},
                "stream": {"kind": "permuted", "n_tasks": 3, "batch_size": 1, "epochs_per_task": 1},
                "encoder": {"kind": "standardized", "num_steps": 10, "gain": 1.0},
                "model": {"kind": "mlp", "hidden": [100], "readout": "membrane", "init": "authors"},
                "schedule": common_sched}
    if name == "nmnist":
        return {"seed": args.seed,
                "data": {"dataset": "nmnist", "root": _data_root(), "first_saccade_only": True},
                "stream": {"kind": "split", "classes_per_task": 2, "batch_size": 1, "epochs_per_task": 1},
                "encoder": {"kind": "frames", "num_steps": 5, "gain": 2.0, "duration_us": 100000.0},
                "model": {"kind": "mlp", "hidden": [128], "readout": "membrane", "init": "authors"},
                "schedule": common_sched}
    raise ValueError(f"unknown protocol {name!r}")


def _write(path: Path, data: dict) -> None:
    from mesu_snn.runs.atomic import atomic_write_bytes
    atomic_write_bytes(path, (json.dumps(data, indent=1) + "\n").encode())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--protocols", nargs="+", default=["pmnist", "nmnist"])
    ap.add_argument("--rules", nargs="+", default=DEFAULT_RULES, choices=list(RULES))
    ap.add_argument("--train-per-task", type=int, default=1500)
    ap.add_argument("--test-per-task", type=int, default=1000)
    ap.add_argument("--samples", type=int, default=2, help="M, Monte-Carlo samples per update (Bayesian rules)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "experiments" / "results" / "online_rule.json"))
    a = ap.parse_args(argv)
    import torch
    from mesu_snn.build import build_tasks, build_trainer
    from mesu_snn.config import parse_config
    torch.set_num_threads(1)
    out = Path(a.out)
    data = {"command": "python experiments/online_rule.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "torch": torch.__version__, "machine": f"{os.cpu_count()} CPUs", "runs": {}}
    for proto in a.protocols:
        base = protocol(proto, a)
        tasks = None
        for rule in a.rules:
            rule_cfg = dict(RULES[rule])
            no_rounding = rule_cfg.pop("_no_rounding", False)
            raw = dict(base, rule=rule_cfg)
            cfg = parse_config(raw)
            tasks = build_tasks(cfg) if tasks is None else tasks
            t0 = time.time()
            try:
                trainer = build_trainer(cfg, tasks=tasks)
                if no_rounding:
                    trainer.rule.engine._round = lambda t, step: t
                m = trainer.fit()
            except (FloatingPointError, RuntimeError) as e:     # a diverged run is a result too
                data["runs"][f"{proto}/{rule}"] = {"error": f"{type(e).__name__}: {e}", "rule_config": RULES[rule]}
                print(f"{proto:7s} {rule:24s} failed: {e}", flush=True)
                _write(out, data)
                continue
            wall = time.time() - t0
            keep = {k: m[k] for k in ("average_accuracy", "learning_accuracy", "forgetting", "backward_transfer",
                                     "accuracy_matrix", "updates") if k in m}
            keep.update(wall_s=wall, ms_per_update=1e3 * wall / m["updates"], rule_config=RULES[rule],
                        protocol=raw)
            data["runs"][f"{proto}/{rule}"] = keep
            print(f"{proto:7s} {rule:24s} avg acc {m['average_accuracy']:.3f}  learning acc "
                  f"{m['learning_accuracy']:.3f}  {wall:.0f} s", flush=True)
            _write(out, data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
