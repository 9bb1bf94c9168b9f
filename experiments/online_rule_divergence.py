"""Do the chunked and the per-step trace paths of ``mesu_online`` compute the same thing? The
first window's gradient and the drift of μ over the first updates, against chunk = 16, for
chunk = 1, the per-step recurrence without rounding, 32-bit traces, and a control: chunk = 16 with
μ perturbed by 1e-7 (relative) before the first update (pmnist protocol of experiments/online_rule.py,
float32, batch 1, M = 2; ``--protocol nmnist``: its split N-MNIST stream).

    python experiments/online_rule_divergence.py --seed 0 --updates 300     # ~1 min CPU

The per-step recurrence without rounding is the ``trace_bits=32`` engine with its rounding replaced
by the identity (a diagnostic only). Prints a table and writes
experiments/results/online_rule_divergence.json.
"""
from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "experiments"))

CHECKS = (1, 2, 5, 10, 20, 50, 100, 150, 300, 600, 1000)
VARIANTS = ("c16", "c1", "per_step", "tb32", "c16_perturbed")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--protocol", default="pmnist", choices=["pmnist", "nmnist"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--updates", type=int, default=300)
    ap.add_argument("--out", default=str(ROOT / "experiments" / "results" / "online_rule_divergence.json"))
    a = ap.parse_args(argv)
    import torch
    import online_rule as orl
    from mesu_snn.build import build_tasks, build_trainer
    from mesu_snn.config import parse_config
    from mesu_snn.runs.atomic import atomic_write_bytes
    torch.set_num_threads(1)
    args = argparse.Namespace(samples=2, seed=a.seed, train_per_task=max(1, -(-a.updates // 3)), test_per_task=10)
    base = orl.protocol(a.protocol, args)
    rule0 = dict(orl.RULES["mesu_online_symmetric"])
    tasks = build_tasks(parse_config(dict(base, rule=rule0)))

    def trainer(name):
        extra = {"c1": {"chunk": 1}, "per_step": {"trace_bits": 32}, "tb32": {"trace_bits": 32}}.get(name, {})
        t = build_trainer(parse_config(dict(base, rule=dict(rule0, **extra))), tasks=tasks)
        if name == "per_step":
            t.rule.engine._round = lambda x, step: x          # the per-step recurrence, no rounding
        if name == "c16_perturbed":
            g = torch.Generator().manual_seed(99)
            with torch.no_grad():
                for layer in t.model.layers:
                    layer.weight_mu.mul_(1 + 1e-7 * torch.randn(layer.weight_mu.shape, generator=g))
        return t

    def mu(t):
        return torch.cat([p.detach().reshape(-1).clone() for n, p in t.model.named_parameters() if "mu" in n])

    checks = [c for c in CHECKS if c <= a.updates]
    traj, first = {}, {}
    for name in VARIANTS:
        t = trainer(name)
        t._reset_state()
        t.model.train()
        traj[name] = {}
        for u, (x_raw, y) in enumerate(itertools.islice(iter(t.stream), a.updates), start=1):
            if u == 1:                               # the first window's gradient, same weights and draws
                state = t._noise.get_state()
                t.rule.zero_grad()
                t.rule.gradients(t._encoded(x_raw, t._enc), y, 2, t._noise)
                first[name] = torch.cat([p.grad.reshape(-1).clone() for p in t.model.parameters()
                                         if p.grad is not None])
                t._noise.set_state(state)
            t.update = u
            t._train_step(x_raw, y)
            if u in checks:
                traj[name][u] = mu(t)
    ref = traj["c16"]
    rows = {name: {"first_gradient_rel_l2": float((first[name] - first["c16"]).norm() / first["c16"].norm()),
                   "mu_rel_l2": {u: float((traj[name][u] - ref[u]).norm() / ref[u].norm()) for u in checks}}
            for name in VARIANTS[1:]}
    print("first-window gradient, relative L2 difference to chunk=16:")
    for name, r in rows.items():
        print(f"  {name:14s} {r['first_gradient_rel_l2']:.2e}")
    print("relative L2 difference of μ to chunk=16 after u updates:")
    print("  u      " + " ".join(f"{n:>14s}" for n in rows))
    for u in checks:
        print(f"  {u:<6d} " + " ".join(f"{rows[n]['mu_rel_l2'][u]:14.2e}" for n in rows))
    data = {"command": "python experiments/online_rule_divergence.py " + " ".join(argv if argv is not None
                                                                                  else sys.argv[1:]),
            "torch": torch.__version__, "protocol": a.protocol, "seed": a.seed, "updates": a.updates, "rows": rows}
    atomic_write_bytes(Path(a.out), (json.dumps(data, indent=1) + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
