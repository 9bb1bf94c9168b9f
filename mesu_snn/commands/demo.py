"""``mesu-snn demo``: a short MESU training run of a Bayesian spiking MLP on the embedded
digits dataset (scikit-learn's 8×8 digits), with a progress bar and the test accuracy.

(The continual-learning demo replaces this once the trainer exists.)
"""
from __future__ import annotations

import time

import torch
from tqdm import tqdm


def register(sub) -> None:
    p = sub.add_parser("demo", help="short MESU run on the embedded digits dataset")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args) -> int:
    import mesu_snn as ms
    from sklearn.datasets import load_digits

    if args.epochs < 1:
        raise ValueError(f"--epochs must be >= 1, got {args.epochs}")
    torch.manual_seed(args.seed)
    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32) / 16.0
    y = torch.tensor(d.target)
    perm = torch.randperm(len(x))
    x, y = x[perm], y[perm]
    n_train = int(0.75 * len(x))
    steps, batch, samples = 10, 16, 4
    encode = lambda v: 2.0 * v.unsqueeze(0).expand(steps, *v.shape)      # constant current, (T, B, 64)
    net = ms.SpikingMLP([64, 128, 10], beta=0.9)
    opt = ms.MESU(net, memory=100_000, sigma_prior=0.1)
    t0 = time.time()
    bar = tqdm(range(args.epochs), desc="MESU on digits", unit="epoch")
    for _ in bar:
        order = torch.randperm(n_train)
        for i in range(0, n_train, batch):
            idx = order[i:i + batch]
            loss = ms.nll_loss(net(encode(x[idx]), samples=samples), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            logp = ms.predictive_log_probs(net(encode(x[n_train:]), samples=8))
            acc = (logp.argmax(1) == y[n_train:]).float().mean().item()
        bar.set_postfix(test_acc=f"{acc:.3f}")
    print(f"test accuracy {acc:.3f} after {args.epochs} epochs ({time.time() - t0:.1f} s)")
    return 0
