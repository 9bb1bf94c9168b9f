"""Streaming MESU (batch 1) with the input layer's two estimators: does "local" train like "weights"?

scikit-learn's digits (1347 train / 450 test, 8×8), SpikingMLP 64-50-10 (membrane readout), T = 10,
M = 10, one MESU update per image (memory N = 1e5, σ_prior = 0.1, clamp 0.5), 2 passes, seeds 0-2.
Two encodings: constant current 2·x (time-constant input: the local estimator's rank-1 path) and
Bernoulli rate coding (spikes with p = x per step: the full T × T path). Reports test accuracy (8
samples, predictive average) and the mean σ of the input layer (×√fan_in) after training, per
estimator, with the wall time of training (a loaded shared machine: indicative only).

    python experiments/estimator_digits.py          # writes experiments/results/estimator_digits.{json,md}
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import mesu_snn as ms  # noqa: E402

OUT = Path(__file__).resolve().parent / "results"


def encoders():
    return {
        "current": lambda v, g: 2.0 * v.unsqueeze(0).expand(10, *v.shape),
        "rate": lambda v, g: (torch.rand(10, *v.shape, generator=g) < v).float(),
    }


def run(estimator: str, encoding: str, seed: int, passes: int = 2) -> dict:
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    n_train = 1347
    enc = encoders()[encoding]
    torch.manual_seed(seed)
    net = ms.SpikingMLP([64, 50, 10], beta=0.9, estimator=estimator)
    opt = ms.MESU(net, memory=100_000, sigma_prior=0.1)
    g = torch.Generator().manual_seed(100 + seed)      # data order and noise: the same stream for both estimators
    ge = torch.Generator().manual_seed(200 + seed)     # encoding
    t0 = time.perf_counter()
    for _ in range(passes):
        for i in torch.randperm(n_train, generator=g).tolist():
            loss = ms.nll_loss(net(enc(x[i:i + 1], ge), samples=10, generator=g), y[i:i + 1])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    elapsed = time.perf_counter() - t0
    net.layers[0].estimator = "weights"                # evaluation at batch 450: the shared-draw path
    with torch.no_grad():
        out = net(enc(x[n_train:], torch.Generator().manual_seed(7)), samples=8,
                  generator=torch.Generator().manual_seed(8))
    acc = (ms.predictive_log_probs(out).argmax(1) == y[n_train:]).float().mean().item()
    sig = (net.layers[0].weight_sigma.detach() * 64 ** 0.5).mean().item()
    return dict(estimator=estimator, encoding=encoding, seed=seed, test_acc=round(acc, 4),
                sigma0_mean_x_sqrt_fan_in=round(sig, 4), train_s=round(elapsed, 1))


def main() -> int:
    torch.set_num_threads(1)
    rows = []
    for encoding in ("current", "rate"):
        for seed in range(3):
            for est in ("weights", "local"):
                r = run(est, encoding, seed)
                print(json.dumps(r), flush=True)
                rows.append(r)
    OUT.mkdir(exist_ok=True)
    cmd = "python experiments/estimator_digits.py"
    (OUT / "estimator_digits.json").write_text(json.dumps(dict(command=cmd, rows=rows), indent=1) + "\n")
    lines = [f"Command: `{cmd}` (1 thread, shared 2-core VM under load: times indicative only)", "",
             "| encoding | estimator | test acc. (3 seeds) | mean | mean σ₀·√64 | train s (mean) |", "|---|---|---|---|---|---|"]
    for encoding in ("current", "rate"):
        for est in ("weights", "local"):
            rs = [r for r in rows if r["encoding"] == encoding and r["estimator"] == est]
            accs = [r["test_acc"] for r in rs]
            lines.append(f"| {encoding} | {est} | {', '.join(f'{a:.3f}' for a in accs)} | {statistics.mean(accs):.3f} | "
                         f"{statistics.mean(r['sigma0_mean_x_sqrt_fan_in'] for r in rs):.4f} | "
                         f"{statistics.mean(r['train_s'] for r in rs):.1f} |")
    (OUT / "estimator_digits.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
