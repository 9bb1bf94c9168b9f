"""Do the library's defaults make a good continual learner without tuning? (issue 10, "defaults that work")

A user's own training loop on a task-free permuted-MNIST stream, with the public API only::

    net = ms.SpikingMLP([784, H, 10])               # every other argument at its default
    opt = ms.MESU(net, memory=N)                    # N: the window in samples, the only choice made
    loss = ms.nll_loss(net(x, samples=M), y); loss.backward(); opt.step()

Variants (one process, one thread, run one after the other on the same stream, same order):

* ``defaults``: exactly the above, inputs the pixels in [0, 1] repeated over T steps as current
  (the naive encoding), batch 1;
* ``defaults_std``: the same network and rule, inputs standardised (``ms.encoders.standardize``);
* ``defaults_b16``: the naive inputs at batch 16 (the trainer's default batch);
* ``paper_recipe``: the tuned recipe of ``experiments/snn_comparison.py`` (``init="authors"``,
  ``bias=False``, MESU σ_prior = 1, no clamp, standardised inputs);
* ``adam`` / ``sgd``: the same network trained deterministically (mean mode, M = 1) with
  ``torch.optim.Adam(lr=1e-3)`` / ``SGD(lr=0.01)``, torch's usual defaults, naive inputs.

Score: mean test accuracy over all tasks after the stream, mean of the last 5 (= all for 5 tasks),
learning accuracy (each task right after it was learned). Written after every task to
``experiments/results/defaults_check/<variant>.json``::

    python experiments/defaults_check.py --tasks 5 --train-per-task 5000 --hidden 100
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import mesu_snn as ms  # noqa: E402
from mesu_snn.datasets import load_mnist  # noqa: E402
from mesu_snn.encoders import standardization_stats, standardize  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "defaults_check"
VARIANTS = ["defaults", "defaults_std", "defaults_b16", "paper_recipe", "adam", "sgd"]


def build(variant: str, sizes: list[int], memory: float):
    if variant == "paper_recipe":
        net = ms.SpikingMLP(sizes, bias=False, init="authors")
        return net, ms.MESU(net, memory=memory, sigma_prior=1.0, clamp_grad=None), True
    net = ms.SpikingMLP(sizes)
    if variant in ("adam", "sgd"):
        net.mean_mode()
        mus = [p for n, p in net.named_parameters() if not n.endswith("_sigma")]
        opt = torch.optim.Adam(mus, lr=1e-3) if variant == "adam" else torch.optim.SGD(mus, lr=0.01)
        return net, opt, False
    return net, ms.MESU(net, memory=memory), True


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", nargs="*", default=VARIANTS, choices=VARIANTS)
    ap.add_argument("--tasks", type=int, default=5)
    ap.add_argument("--train-per-task", type=int, default=5000)
    ap.add_argument("--test-per-task", type=int, default=2000)
    ap.add_argument("--hidden", type=int, default=100)
    ap.add_argument("--memory", type=float, default=50_000, help="MESU window N in samples (10 tasks of 5,000)")
    ap.add_argument("--T", type=int, default=10)
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    xtr, ytr = load_mnist(args.data_root, "train")
    xte, yte = load_mnist(args.data_root, "test")
    xtr = xtr.reshape(-1, 784).float() / 255
    xte = xte.reshape(-1, 784).float() / 255
    mean, std = standardization_stats(xtr)
    g = torch.Generator().manual_seed(args.seed)
    perms = [torch.arange(784)] + [torch.randperm(784, generator=g) for _ in range(args.tasks - 1)]
    orders = [torch.randperm(len(xtr), generator=g)[: args.train_per_task] for _ in range(args.tasks)]
    test_idx = torch.arange(args.test_per_task)
    sizes = [784, args.hidden, 10]
    for variant in args.variants:
        torch.manual_seed(args.seed)
        net, opt, bayes = build(variant, sizes, args.memory)
        std_in = variant in ("defaults_std", "paper_recipe")
        batch = 16 if variant == "defaults_b16" else 1
        m = args.samples if bayes else 1

        def enc(x):
            x = standardize(x, mean, std) if std_in else x
            return x.unsqueeze(0).expand(args.T, *x.shape)        # (T, B, 784) current

        def evaluate(k):
            with torch.no_grad():
                x = enc(xte[test_idx][:, perms[k]])
                logp = torch.log_softmax(net(x, samples=m), -1).mean(0)
                return (logp.argmax(-1) == yte[test_idx]).float().mean().item()

        rec = {"variant": variant, "sizes": sizes, "memory": args.memory if bayes else None, "batch": batch,
               "T": args.T, "samples": m, "standardised": std_in, "train_per_task": args.train_per_task,
               "test_per_task": args.test_per_task, "seed": args.seed, "acc": [], "task_seconds": [],
               "machine": f"{platform.node() and 'vm'} {platform.machine()} {torch.get_num_threads()} thread",
               "torch": torch.__version__, "command": " ".join(sys.argv), "done": False}
        for k in range(args.tasks):
            t0 = time.time()
            idx = orders[k]
            try:
                for i in range(0, len(idx), batch):
                    b = idx[i:i + batch]
                    x, y = enc(xtr[b][:, perms[k]]), ytr[b]
                    opt.zero_grad(set_to_none=True)
                    ms.nll_loss(net(x, samples=m), y).backward()
                    opt.step()
            except ms.errors.NonFiniteStepError as e:     # recorded as found, not hidden
                rec["refused"] = {"task": k, "update": i // batch, "error": str(e)}
                (out / f"{variant}.json").write_text(json.dumps(rec, indent=1))
                print(f"{variant:>13} task {k}: step refused at update {i // batch}: {e}", flush=True)
                break
            rec["task_seconds"].append(time.time() - t0)
            rec["acc"].append([evaluate(j) for j in range(k + 1)])
            final = rec["acc"][-1]
            rec["mean_acc"] = sum(final) / len(final)
            rec["last5_mean"] = sum(final[-5:]) / len(final[-5:])
            rec["learning_acc"] = [row[-1] for row in rec["acc"]]
            rec["done"] = k == args.tasks - 1
            tmp = out / f".{variant}.json.tmp"
            tmp.write_text(json.dumps(rec, indent=1))
            tmp.replace(out / f"{variant}.json")
            print(f"{variant:>13} task {k}: acc {[round(a, 3) for a in final]} ({rec['task_seconds'][-1]:.0f} s)",
                  flush=True)


if __name__ == "__main__":
    main()
