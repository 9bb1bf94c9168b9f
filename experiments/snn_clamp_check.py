"""Evidence for MESU's default gradient clamp (rules/mesu.py DEFAULT_CLAMP_GRAD): a spiking
784-50-10 network with the authors' initialisation (σ₀ = 2/√fan_in), standardised MNIST as a
constant input current for T steps, batch 1, MESU N = 300,000 samples, σ_prior = 1, trained
with and without the clamp on the same images, noise and initialisation.

Records, per clamp value, the first update at which some σ ≤ 0 or a gradient is non-finite, the
minimum σ over time, and the running training accuracy.

    python experiments/snn_clamp_check.py --steps 3000 --out experiments/results/snn_clamp_check.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import mesu_snn as ms  # noqa: E402
from mesu_snn.datasets import load_mnist  # noqa: E402
from mesu_snn.encoders import current_encode, standardization_stats, standardize  # noqa: E402
from mesu_snn.seeding import derive_seed  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paper_pmnist import data_root  # noqa: E402


def one(clamp, steps, T, seed, xs, ys, readout="membrane", gain=1.0, batch=1):
    torch.manual_seed(derive_seed(seed, "model") % 2**63)
    net = ms.SpikingMLP([784, 50, 10], init="authors", readout=readout)
    opt = ms.MESU(net, memory=300_000, sigma_prior=1.0, clamp_grad=clamp, on_nonfinite="skip")
    g = torch.Generator().manual_seed(derive_seed(seed, "noise") % 2**63)
    first_bad, min_sigma, correct = None, [], 0
    t0 = time.perf_counter()
    for i in range(steps):
        x = current_encode(xs[i * batch:(i + 1) * batch] * gain, T)     # (T, B, 784) signed current
        y = ys[i * batch:(i + 1) * batch]
        out = net(x, samples=10, generator=g)
        loss = ms.nll_loss(out, y)
        opt.zero_grad()
        loss.backward()
        skipped = opt.skipped_steps
        opt.step(batch_size=batch)
        correct += int((out.detach().log_softmax(-1).mean(0).argmax(-1) == y).sum())
        smin = min(float(s.detach().min()) for _, _, s in ms.bayesian_pairs(net))
        if (i + 1) % 50 == 0 or i < 50:
            min_sigma.append([i + 1, smin])
        if first_bad is None and (smin <= 0 or opt.skipped_steps > skipped or not torch.isfinite(loss)):
            first_bad = {"update": i + 1, "min_sigma": smin, "nonfinite_grad": opt.skipped_steps > skipped}
            min_sigma.append([i + 1, smin])
            break
    return {"clamp_grad": clamp, "first_bad_update": first_bad, "updates_run": i + 1,
            "readout": readout, "gain": gain, "batch_size": batch, "T": T,
            "running_train_acc": correct / ((i + 1) * batch), "min_sigma_trace": min_sigma,
            "ms_per_update": (time.perf_counter() - t0) / (i + 1) * 1e3}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--T", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--clamps", default="none,0.5")
    ap.add_argument("--variants", default="membrane:1:1",
                    help="comma-separated readout:gain:batch, e.g. membrane:1:1,count:2:1,membrane:1:16")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    xtr, ytr = load_mnist(data_root(), "train")
    mean, std = standardization_stats(xtr)
    variants = [(r, float(gn), int(b)) for r, gn, b in (v.split(":") for v in a.variants.split(","))]
    nmax = a.steps * max(b for _, _, b in variants)
    order = torch.randperm(len(ytr), generator=torch.Generator().manual_seed(a.seed))[:nmax]
    xs, ys = standardize(xtr[order], mean, std).reshape(-1, 784), ytr[order]
    res = {"protocol": "SpikingMLP 784-50-10, init='authors', standardized current, T steps, batch 1, "
                       "MESU N=300000 samples, sigma_prior=1, M=10", "T": a.T, "seed": a.seed, "runs": []}
    prev = Path(a.out)
    if prev.exists():
        res["runs"] = json.loads(prev.read_text()).get("runs", [])
    for readout, gain, batch in variants:
        for c in a.clamps.split(","):
            clamp = None if c == "none" else float(c)
            r = one(clamp, a.steps, a.T, a.seed, xs, ys, readout, gain, batch)
            res["runs"].append(r)
            print(json.dumps({k: v for k, v in r.items() if k != "min_sigma_trace"}), flush=True)
            Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
