"""The MESU paper's permuted-MNIST protocol without spikes (Bonnet et al., arXiv 2504.13569,
Fig./Table on permuted MNIST; authors' code kellian-cottart/mesu-pmnist,
configurations/pmnist/mlp-bayesian-mesu.json), run with the library's public API:

* network ``ms.BayesMLP([784, 50, 10], activation="relu", bias=False, init="authors")``:
  μ ~ U(±4/√784), σ₀ = 2/√784, no bias;
* inputs: pixels/255 standardised with the training set's scalar mean/std (0.1307, 0.3081),
  the same permutation applied to train and test images of a task (every task permuted);
* batch 1, one epoch of all 60,000 training images per task, shuffled per task (seeded),
  task-free (the rule never hears of boundaries);
* M = 10 weight samples per update and at test; the test prediction is the argmax of the
  sample-mean log-softmax (the authors' convention) over all 10,000 test images of every task
  seen so far, after each task;
* MESU: N = 300,000 samples (batch 1, so also 300,000 updates), σ_prior = 1, μ_prior = 0,
  lr_μ = lr_σ = 1, no gradient clamp. BGD (FOO-VB diagonal in the authors' code): lr 1, no clamp.

MESU and BGD runs use the hand-written whole step (:class:`mesu_snn.rules.StreamingStep`, as the
trainer does; ``--no-whole-step`` for the autograd step): one step equals the autograd one to
rounding (about 1e-8), but a spiking network's thresholds amplify rounding, so two runs of the two
paths part ways after about a hundred updates (max |Δμ| 0.013 at update 100, 0.03 at 1,000,
measured) and agree only statistically. ``--checkpoint`` saves the state after every task and
``--resume`` continues it, e.g. with a larger ``--tasks``.

One process per (rule, seed), one thread: ``--threads 1`` so that two runs share the two cores.
Results are written after every task to ``--out`` (JSON): the accuracy matrix
``acc[i][j]`` = accuracy on task j after training task i (j ≤ i), σ statistics per layer,
ms per update.

    python experiments/paper_pmnist.py --rule mesu --seed 0 --tasks 200 \\
        --out experiments/results/paper_pmnist/mesu_seed0.json
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import mesu_snn as ms  # noqa: E402
from mesu_snn.datasets import load_mnist  # noqa: E402
from mesu_snn.encoders import current_encode, standardization_stats, standardize  # noqa: E402
from mesu_snn.metrics import accuracy  # noqa: E402
from mesu_snn.seeding import derive_seed  # noqa: E402
from mesu_snn.errors import FileFormatError  # noqa: E402
from mesu_snn.rules.streaming_step import whole_step_for  # noqa: E402
from mesu_snn.runs import atomic_write_text, load_checkpoint, save_checkpoint  # noqa: E402

#: The paper's numbers (200 tasks, 5 seeds): last-task accuracy, mean of the last 5 tasks.
# The paper's table. Its "mean of the last 5 tasks" (mesu_last5_mean, foovb_last5_mean) is a stream average:
# the mean over t = 5..200 of the accuracy on the 5 tasks before t, right after task t (the authors'
# figure-pmnist-tradeoff.ipynb, cells 9-11; paper_table_last5() in paper_pmnist_report.py computes it). The
# last-5 mean after the whole stream is another number: 91.34 in the same notebook (mesu_last5_after_stream).
PAPER = {"mesu_last_task": 94.68, "mesu_last_task_std": 0.14, "mesu_last5_mean": 88.75,
         "foovb_last_task": 68.80, "foovb_last5_mean": 77.69, "sgd_last_task": 93.10,
         "mesu_last5_after_stream": 91.34}

RULE_HP = {
    "mesu": dict(memory=300_000, sigma_prior=1.0, mu_prior=0.0, lr_mu=1.0, lr_sigma=1.0, clamp_grad=None),
    "bgd": dict(lr=1.0),
    "sgd": dict(lr=0.01),
    "adam": dict(lr=1e-3),
    "ewc": dict(lr=0.01, ewc_lambda=100.0, gamma=1.0, fisher_samples=200),
    "si": dict(lr=0.01, si_c=0.1),
}


def _parse_hp(items: list[str]) -> dict:
    """``["lr=0.1", "base=adam"]`` -> {"lr": 0.1, "base": "adam"} (numbers where they parse)."""
    out = {}
    for it in items or []:
        key, sep, val = it.partition("=")
        if not sep:
            raise SystemExit(f"--hp expects key=value, got {it!r}")
        try:
            out[key] = int(val) if val.lstrip("-").isdigit() else float(val)
        except ValueError:
            out[key] = None if val.lower() == "none" else val
    return out


def _parse_layer_hp(items: list[str]) -> dict | None:
    """``["layers.1:memory=150000", "layers.0:memory=1e6,lr_mu=0.5"]`` -> the rule's ``per_layer``
    ({pattern: {key: number}}), None for none."""
    if not items:
        return None
    out: dict[str, dict] = {}
    for it in items:
        pat, sep, rest = it.partition(":")
        if not sep or not pat or not rest:
            raise SystemExit(f"--layer-hp expects LAYER:key=value[,key=value], got {it!r}")
        out.setdefault(pat, {}).update(_parse_hp(rest.split(",")))
    return out


def data_root() -> str:
    env = os.environ.get("MESU_SNN_DATA")
    if env:
        return env
    here = Path(__file__).resolve().parents[1]
    for cand in (here.parent / "shared" / "data", Path("/work/shared/data")):
        if (cand / "MNIST" / "raw").exists():
            return str(cand)
    return str(here.parent / "shared" / "data")


def load_standardised(root: str):
    xtr, ytr = load_mnist(root, "train")
    xte, yte = load_mnist(root, "test")
    mean, std = standardization_stats(xtr)
    return (standardize(xtr, mean, std).reshape(-1, 784), ytr,
            standardize(xte, mean, std).reshape(-1, 784), yte, (mean, std))


def permutations(n_tasks: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(derive_seed(seed, "permutations") % 2**63)
    return [torch.randperm(784, generator=g) for _ in range(n_tasks)]


class Inputs:
    """(B, 784) standardised images -> the model's input: as is (ANN) or a constant current
    for T steps, (T, B, 784) (spiking)."""

    def __init__(self, T: int | None, gain: float = 1.0):
        self.T, self.gain = T, gain

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.T is None else current_encode(x * self.gain, self.T)


@torch.no_grad()
def evaluate(net: torch.nn.Module, xte: torch.Tensor, yte: torch.Tensor, perms, samples: int,
             average: str, chunk: int = 2000, encode=lambda x: x) -> list[float]:
    """Test accuracy (0..1) of every task in ``perms``: M weight draws per chunk of images."""
    accs = []
    for p in perms:
        correct = 0.0
        for i in range(0, len(yte), chunk):
            xb, yb = xte[i:i + chunk][:, p], yte[i:i + chunk]
            correct += accuracy(net(encode(xb), samples=samples), yb, average=average) * len(yb)
        accs.append(correct / len(yte))
    return accs


def make_net(model: str, hidden: list[int], init: str, readout: str, estimator: str, seed: int) -> torch.nn.Module:
    """The run's network, initialised from its seed: BayesMLP ReLU (ann) or SpikingMLP (snn), no bias."""
    torch.manual_seed(derive_seed(seed, "model") % 2**63)
    if model == "ann":
        return ms.BayesMLP([784, *hidden, 10], activation="relu", bias=False, init=init)
    return ms.SpikingMLP([784, *hidden, 10], bias=False, init=init, readout=readout, estimator=estimator)


def sigma_stats(net) -> dict:
    out = {}
    for name, mu, s in ms.bayesian_pairs(net):
        s = s.detach()
        prec = 1.0 / s.double() ** 2
        out[name] = {"sigma_mean": float(s.mean()), "sigma_median": float(s.median()),
                     "sigma_min": float(s.min()), "precision_median": float(prec.median()),
                     "mu_abs_mean": float(mu.detach().abs().mean())}
    return out


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                              capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    xtr, ytr, xte, yte, stats = load_standardised(args.data_root)
    if args.validation:
        # Tuning stream: the last 10,000 training images are the test set, the first 50,000
        # train; the test set is never touched, and --seed must differ from the final runs'.
        xte, yte, xtr, ytr = xtr[50_000:], ytr[50_000:], xtr[:50_000], ytr[:50_000]
    if args.train_per_task:
        xtr, ytr = xtr[:args.train_per_task], ytr[:args.train_per_task]
    if args.test_per_task:
        xte, yte = xte[:args.test_per_task], yte[:args.test_per_task]
    perms = permutations(args.tasks, args.seed)
    net = make_net(args.model, args.hidden, args.init, args.readout, args.estimator, args.seed)
    encode = Inputs(None if args.model == "ann" else args.T, args.gain)
    hp = dict(RULE_HP[args.rule])
    if args.rule in ("sgd", "bgd") and args.lr is not None:
        hp["lr"] = args.lr
    if args.rule == "mesu" and args.memory is not None:
        hp["memory"] = args.memory
    if args.rule == "mesu" and args.clamp is not None:
        hp["clamp_grad"] = args.clamp
    hp.update(_parse_hp(args.hp))
    per_layer = _parse_layer_hp(args.layer_hp)
    if per_layer is not None:
        hp["per_layer"] = per_layer
    try:
        rule = ms.make_rule(args.rule, net, **hp)
    except ValueError as e:
        raise SystemExit(f"paper_pmnist: {e}") from None
    m_train = args.samples if rule.bayesian else 1
    order_g = torch.Generator().manual_seed(derive_seed(args.seed, "order") % 2**63)
    res = {"protocol": "paper_pmnist (ANN, batch 1, one epoch per task, task-free)", "rule": args.rule,
           "hyperparameters": hp, "seed": args.seed, "hidden": args.hidden, "init": args.init,
           "validation": bool(args.validation), "estimator": args.estimator if args.model == "snn" else None,
           "model": args.model, "T": args.T if args.model == "snn" else None, "gain": args.gain,
           "readout": args.readout if args.model == "snn" else None,
           "train_samples": m_train, "test_samples": args.samples, "eval_average": args.average,
           "standardization": {"mean": stats[0], "std": stats[1]}, "train_per_task": len(ytr),
           "test_per_task": len(yte), "n_tasks_planned": args.tasks, "threads": args.threads,
           "machine": f"{platform.node()} {platform.processor() or platform.machine()} {os.cpu_count()} cpus",
           "torch": str(torch.__version__), "paper": PAPER, "acc": [], "sigma": [], "task_seconds": [],
           "ms_per_update": [], "done": False, "git_commit": _git_commit(), "command": " ".join(sys.argv)}
    whole = whole_step_for(rule, m_train) if args.whole_step else False
    whole = whole or None
    res["whole_step"] = whole is not None
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    ckpt = out.with_suffix(".ckpt.pt")
    first, wall_before = 0, 0.0
    if args.resume and ckpt.exists():
        # continue a run (e.g. extend 10 tasks to 20): model, rule state, both generators and the
        # results so far; the protocol must be the one the checkpoint was written with
        state = _read_resume_state(ckpt)
        prev = state["res"]
        for key in ("rule", "hyperparameters", "seed", "hidden", "init", "model", "T", "estimator",
                    "readout", "train_per_task", "test_per_task", "train_samples", "gain"):
            if prev.get(key) != res.get(key):
                raise SystemExit(f"--resume: {ckpt} was written with {key}={prev.get(key)!r}, "
                                 f"this run has {res.get(key)!r}")
        net.load_state_dict(state["model"] if "model" in state else state["net"])   # "net": before 2026-12-03
        rule.load_state_dict(state["rule"])
        torch.set_rng_state(state["rng"])
        order_g.set_state(state["order_g"])
        for key in ("acc", "sigma", "task_seconds", "ms_per_update", "train_acc_running"):
            res[key] = prev.get(key, [])
        res["resumed_at_task"] = res.get("resumed_at_task", []) + [prev["tasks_done"]]
        first, wall_before = prev["tasks_done"], float(prev.get("wall_s", 0.0))
        print(f"resumed from {ckpt} after task {first - 1}", flush=True)
    t_start = time.time()
    for k in range(first, args.tasks):
        xk = xtr[:, perms[k]].contiguous()
        order = torch.randperm(len(ytr), generator=order_g)
        t0 = time.perf_counter()
        run_correct = 0
        for n, i in enumerate(order.tolist()):
            x, y = encode(xk[i:i + 1]), ytr[i:i + 1]
            if whole is not None and whole.supported(x) is None:
                # the hand-written step (rules/streaming_step.py): the same draws from the global
                # generator, the same gradients and update as the autograd branch, no graph
                loss, out_ = whole.forward_backward(x, y, checked=True)
                rule.last_batch_size = 1
            else:
                out_ = net(x, samples=m_train)
                loss = rule.loss(out_, y)
                rule.zero_grad()
                loss.backward()
            rule.step()
            run_correct += int(out_.detach().log_softmax(-1).mean(0).argmax(-1).item() == int(y))
            if args.log_every and (n + 1) % args.log_every == 0:
                print(f"task {k} step {n + 1}: running train acc {run_correct / (n + 1):.4f} "
                      f"{(time.perf_counter() - t0) / (n + 1) * 1e3:.2f} ms/update", flush=True)
        train_s = time.perf_counter() - t0
        if rule.uses_task_boundaries:     # online EWC, SI: told the boundary (MESU/BGD/SGD/Adam never are)
            def task_batches(xk=xk, order=order):
                for i in order[:1000].tolist():
                    yield encode(xk[i:i + 1]), ytr[i:i + 1]
            rule.end_task(k, task_batches)
        accs = evaluate(net, xte, yte, perms[:k + 1], args.samples, args.average,
                        chunk=2000 if args.model == "ann" else 500, encode=encode)
        res["acc"].append(accs)
        res["sigma"].append(sigma_stats(net))
        res["task_seconds"].append(time.perf_counter() - t0)
        res["ms_per_update"].append(train_s / len(ytr) * 1e3)
        res["train_acc_running"] = res.get("train_acc_running", []) + [run_correct / len(ytr)]
        res["wall_s"] = wall_before + time.time() - t_start     # over every resumed part of the run
        res["tasks_done"] = k + 1
        res["mean_acc_seen"] = sum(accs) / len(accs)
        atomic_write_text(out, json.dumps(res, indent=1))
        if args.checkpoint:
            # the library's checkpoint (runs/checkpoint.py): atomic, checksummed, weights only
            save_checkpoint(ckpt, {"model": net.state_dict(), "rule": rule.state_dict(), "rng": torch.get_rng_state(),
                                   "order_g": order_g.get_state(), "res": res})
        print(f"task {k}: acc new {accs[-1]:.4f} first {accs[0]:.4f} mean {res['mean_acc_seen']:.4f} "
              f"({res['ms_per_update'][-1]:.2f} ms/update, {res['task_seconds'][-1]:.0f} s)", flush=True)
    res["done"] = True
    atomic_write_text(out, json.dumps(res, indent=1))
    return res


def _read_resume_state(ckpt: Path) -> dict:
    """The state a --resume continues from, read so that nothing in the file can run code: the
    library's checkpoint format (weights only, SHA-256 checked), or a file of this script from
    before 2026-12-03 (a bare ``torch.save`` of the same dict, whose results hold torch's
    ``TorchVersion``, a ``str`` subclass): weights only too, with that one class allowed."""
    from torch.torch_version import TorchVersion
    try:
        with torch.serialization.safe_globals([TorchVersion]):
            state = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle that names code, or a torn file
        raise SystemExit(f"--resume: {ckpt} was refused by the safe (weights-only) reader "
                         f"({type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]})") from None
    if isinstance(state, dict) and "format" in state:
        try:
            return load_checkpoint(ckpt)
        except FileFormatError as e:
            raise SystemExit(f"--resume: {e}") from None
    if not isinstance(state, dict) or not {"rule", "rng", "order_g", "res"} <= set(state) \
            or "net" not in state:
        raise SystemExit(f"--resume: {ckpt} is not a checkpoint of this script")
    return state


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rule", choices=sorted(RULE_HP), default="mesu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tasks", type=int, default=200)
    ap.add_argument("--hidden", type=int, nargs="*", default=[50])
    ap.add_argument("--model", choices=["ann", "snn"], default="ann",
                    help="ann: BayesMLP ReLU (the paper); snn: SpikingMLP (LIF), T steps of the image as current")
    ap.add_argument("--T", type=int, default=10, help="snn: time steps")
    ap.add_argument("--gain", type=float, default=1.0, help="snn: input current = gain x standardised image")
    ap.add_argument("--readout", default="membrane", choices=["membrane", "count"])
    ap.add_argument("--lr", type=float, default=None, help="sgd/bgd learning rate")
    ap.add_argument("--samples", type=int, default=10, help="M for training (Bayesian rules) and test")
    ap.add_argument("--memory", type=float, default=None, help="MESU N in samples (default 300000)")
    ap.add_argument("--clamp", type=float, default=None, help="MESU gradient clamp (default: none)")
    ap.add_argument("--hp", nargs="*", default=[], help="rule hyperparameters key=value (override the defaults above)")
    ap.add_argument("--layer-hp", nargs="*", default=[], metavar="LAYER:KEY=VALUE",
                    help="per-layer hyperparameters (the rule's per_layer), e.g. layers.1:memory=150000")
    ap.add_argument("--estimator", default="weights", choices=["weights", "local"],
                    help="snn: input layer's estimator (local: sampled pre-activations, same distribution)")
    ap.add_argument("--validation", action="store_true",
                    help="tuning stream: train on the first 50,000 training images, test on the last 10,000")
    ap.add_argument("--init", default="authors", choices=sorted(ms.INITS))
    ap.add_argument("--average", default="log_probs", choices=["log_probs", "probs"])
    ap.add_argument("--train-per-task", type=int, default=None, help="first K training images only (quick runs)")
    ap.add_argument("--test-per-task", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--log-every", type=int, default=10000)
    ap.add_argument("--data-root", default=data_root())
    ap.add_argument("--out", required=True)
    ap.add_argument("--no-whole-step", dest="whole_step", action="store_false",
                    help="the autograd step even where the hand-written whole step covers the run")
    ap.add_argument("--checkpoint", action="store_true",
                    help="after every task save model, optimizer and generators next to --out (.ckpt.pt)")
    ap.add_argument("--resume", action="store_true",
                    help="continue from the checkpoint next to --out (e.g. with a larger --tasks)")
    run(ap.parse_args(argv))


if __name__ == "__main__":
    main()
