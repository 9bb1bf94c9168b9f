"""Why does the spiking MESU network learn later tasks less well than the ANN? A probe of the
networks that experiments/paper_pmnist.py checkpointed (``.ckpt.pt`` next to each run's JSON).

The spiking 784-200-10 MESU learns task 0 as well as the ANN 784-50-10 (94.9 vs 95.0 %) but its
learning accuracy falls over the stream (92.5 % by task 18 with N = 3e5 as with N = 6e5) while the
ANN's holds at ~95 % over 200 tasks with the same window. For each checkpoint (and the run's own
initial network, rebuilt from its seed) this measures, on a permutation no run has seen:

* hidden-layer activity on 500 test images: the fraction of hidden neurons that are silent (spike
  rate below 1 %: their surrogate gradient is small, they learn slowly), saturated (rate above
  90 %), and the mean rate (ANN: the fraction of ReLU units with zero output on every image);
* plasticity directly: a copy of the network *and of its rule's state* (σ, EWC/SI's anchors)
  trained on ``--probe-train`` images of the new permutation, batch 1, M = 10, then tested on
  ``--probe-test`` test images of it (the same images, order and weight draws for every network);
* the share of the hidden neurons' input variance that is weight noise (variance over weight draws,
  and steps with the local estimator, for one image, over the variance over images and draws);
* σ statistics per layer, as paper_pmnist.py records them after every task (``sigma_stats``);
* with ``--reset-sigma``, the same checkpoint with some layers' σ set back to σ₀ (μ kept): which
  layer's σ holds the new task back.

    python experiments/plasticity_probe.py \\
        experiments/results/snn_comparison/full20_h200_n300k/mesu_seed0.json \\
        experiments/results/snn_comparison/full80_h200/bgd_seed0.json ...

Results: ``--out`` (JSON, one entry per checkpoint, written after each) and a table on stdout.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import mesu_snn as ms  # noqa: E402
from mesu_snn.errors import NonFiniteStepError  # noqa: E402
from mesu_snn.metrics import accuracy  # noqa: E402
from mesu_snn.runs import atomic_write_text  # noqa: E402
from paper_pmnist import Inputs, _read_resume_state, data_root, load_standardised, make_net, sigma_stats  # noqa: E402

#: the new task's permutation and the probe's data order / weight draws: fixed, never a run's seed
PROBE_SEED = 31_337


def build(res: dict) -> torch.nn.Module:
    """The run's network as paper_pmnist.py built it (its initial weights: the run's model seed)."""
    hidden = res["hidden"] if isinstance(res["hidden"], list) else [res["hidden"]]
    return make_net(res.get("model", "ann"), hidden, res.get("init", "authors"), res.get("readout") or "membrane",
                    res.get("estimator") or "weights", res["seed"])


def load(json_path: Path, initial: bool = False):
    """(res, net, rule): the run's results, its network and rule after its last checkpointed task
    (``initial``: the network before any training, with a fresh rule)."""
    res = json.loads(json_path.read_text())
    net = build(res)
    rule = ms.make_rule(res["rule"], net, **res["hyperparameters"])
    if not initial:
        ckpt = json_path.with_suffix(".ckpt.pt")
        if not ckpt.exists():
            raise SystemExit(f"{json_path}: no checkpoint {ckpt.name} beside it (run with --checkpoint)")
        state = _read_resume_state(ckpt)
        net.load_state_dict(state["model"] if "model" in state else state["net"])
        rule.load_state_dict(state["rule"])
    return res, net, rule


@torch.no_grad()
def activity(net, x: torch.Tensor, encode, samples: int = 10) -> dict:
    """Hidden-layer activity on images ``x`` (B, 784): per-neuron rate over samples, steps, images."""
    g = torch.Generator().manual_seed(PROBE_SEED)
    pre = net.layers[0](encode(x), samples=samples, generator=torch.Generator().manual_seed(PROBE_SEED))
    # (M, B, H) or (M, T, B, H): the input is the same at every step, so what varies over samples (and,
    # with the local estimator, over steps) for one image is the weight noise
    per_image = pre.var(dim=tuple(range(pre.dim() - 2)))             # (B, H)
    total = pre.flatten(0, -2).var(dim=0)                             # (H,)
    noise_share = float((per_image.mean(0) / total.clamp_min(1e-12)).median())
    if isinstance(net, ms.SpikingMLP):
        _, rec = net(encode(x), samples=samples, generator=g, record=True)
        rate = rec["spikes"][0].float().mean(dim=(0, 1, 2))           # (H,)
        return {"silent": float((rate < 0.01).float().mean()), "saturated": float((rate > 0.9).float().mean()),
                "mean_rate": float(rate.mean()), "median_rate": float(rate.median()), "noise_share": noise_share}
    active = (torch.relu(pre) > 0).float().mean(dim=(0, 1))
    return {"silent": float((active == 0).float().mean()), "saturated": float((active == 1).float().mean()),
            "mean_rate": float(active.mean()), "median_rate": float(active.median()), "noise_share": noise_share}


def plasticity(net, rule, xtr, ytr, xte, yte, encode, train: int, samples: int = 10) -> float | dict:
    """Test accuracy on the new task after ``train`` images of it (batch 1), from this state; a dict
    saying where and why when the rule refuses a step (the state cannot learn the new task as is)."""
    g = torch.Generator().manual_seed(PROBE_SEED)
    order = torch.randperm(len(ytr), generator=g)[:train].tolist()
    state = torch.get_rng_state()
    torch.manual_seed(PROBE_SEED)                 # the rule's weight draws: the same for every network
    try:
        for n, i in enumerate(order):
            out = net(encode(xtr[i:i + 1]), samples=samples)
            loss = rule.loss(out, ytr[i:i + 1])
            rule.zero_grad()
            loss.backward()
            try:
                rule.step()
            except NonFiniteStepError as e:    # e.g. σ reset to σ₀ under a gradient sized for a tiny σ
                return {"refused_at": n, "why": str(e).split(":")[0]}
        with torch.no_grad():
            correct = 0.0
            for j in range(0, len(yte), 500):
                correct += accuracy(net(encode(xte[j:j + 500]), samples=samples), yte[j:j + 500],
                                    average="log_probs") * len(yte[j:j + 500])
    finally:
        torch.set_rng_state(state)
    return correct / len(yte)


def reset_sigma(net, res: dict, layers: list[str]) -> None:
    """Set the σ of the named layers back to the run's initial σ (μ and the other layers kept)."""
    init = dict((n, s) for n, _, s in ms.bayesian_pairs(build(res)))
    have = dict((n, s) for n, _, s in ms.bayesian_pairs(net))
    for name in layers:
        if name not in have:
            raise SystemExit(f"--reset-sigma {name}: the network has no such layer (it has {', '.join(have)})")
        with torch.no_grad():
            have[name].copy_(init[name])


def probe(json_path: Path, data, args, initial: bool = False, variant: tuple[str, ...] = ()) -> dict:
    xtr, ytr, xte, yte = data
    res, net, rule = load(json_path, initial)
    reset_sigma(net, res, list(variant))
    encode = Inputs(None if res.get("model", "ann") == "ann" else res["T"], res.get("gain", 1.0))
    perm = torch.randperm(784, generator=torch.Generator().manual_seed(PROBE_SEED))
    xtr_p, xte_p = xtr[:, perm].contiguous(), xte[:, perm].contiguous()
    t0 = time.perf_counter()
    out = {"run": str(json_path), "rule": res["rule"], "model": res.get("model", "ann"),
           "hidden": res["hidden"], "hyperparameters": res["hyperparameters"],
           "after_task": -1 if initial else res["tasks_done"] - 1, "variant": "+".join(variant),
           "learning_acc_last_task": None if initial else res["acc"][-1][-1],
           "activity_new_task": activity(net, xte_p[:500], encode), "weights": sigma_stats(net)}
    # a deep copy: the probe's training never touches the loaded state of another measurement
    net2 = copy.deepcopy(net)
    rule2 = ms.make_rule(res["rule"], net2, **res["hyperparameters"])
    rule2.load_state_dict(rule.state_dict())
    out["probe_acc"] = plasticity(net2, rule2, xtr_p, ytr, xte_p[:args.probe_test], yte[:args.probe_test], encode,
                                  args.probe_train)
    out["probe_train"], out["probe_test"] = args.probe_train, args.probe_test
    out["seconds"] = time.perf_counter() - t0
    return out


def _acc(v) -> str:
    return f"{100 * v:.2f}" if isinstance(v, float) else f"step refused at image {v['refused_at']} ({v['why']})"


def table(rows: list[dict]) -> list[str]:
    lines = ["| run | after task | learning acc. of its last task (%) | probe acc. after "
             f"{rows[0]['probe_train'] if rows else '?'} images (%) | hidden silent / saturated (%) | "
             "mean rate | share of the hidden input's variance from weight noise | input layer median 1/σ² | "
             "readout median 1/σ² |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        w = list(r["weights"].values())
        a = r["activity_new_task"]
        la = "–" if r["learning_acc_last_task"] is None else f"{100 * r['learning_acc_last_task']:.2f}"
        hp = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["hyperparameters"].items()
                       if k in ("memory", "lr"))
        var = f", σ of {r['variant']} reset to σ₀" if r.get("variant") else ""
        lines.append(f"| {r['model']} {r['rule']} ({hp}), H = {r['hidden']}{var} | {r['after_task']} | {la} | "
                     f"{_acc(r['probe_acc'])} | {100 * a['silent']:.1f} / {100 * a['saturated']:.1f} | "
                     f"{a['mean_rate']:.3f} | {a.get('noise_share', float('nan')):.2f} | "
                     f"{w[0]['precision_median']:.0f} | {w[-1]['precision_median']:.0f} |")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="paper_pmnist.py result JSONs with a .ckpt.pt beside them")
    ap.add_argument("--initial", action="store_true", help="also probe each run's initial network")
    ap.add_argument("--reset-sigma", nargs="*", default=[], metavar="LAYER[+LAYER]",
                    help="also probe each checkpoint with these layers' σ set back to σ₀ (e.g. layers.0.weight, "
                         "layers.1.weight, layers.0.weight+layers.1.weight): which layer's σ holds plasticity back")
    ap.add_argument("--probe-train", type=int, default=5000)
    ap.add_argument("--probe-test", type=int, default=2000)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "plasticity_probe" / "probe.json")
    args = ap.parse_args(argv)
    for p in args.runs:
        if not p.exists():
            raise SystemExit(f"{p}: no such result file")
    torch.set_num_threads(args.threads)
    xtr, ytr, xte, yte, _ = load_standardised(args.data_root or data_root())
    data = (xtr, ytr, xte, yte)
    done = json.loads(args.out.read_text()) if args.out.exists() else []
    key = lambda r: (r["run"], r["after_task"], r.get("variant", ""))  # noqa: E731
    have = {key(r) for r in done}
    variants = [tuple(v.split("+")) for v in args.reset_sigma]
    for p in args.runs:
        res = json.loads(p.read_text())
        todo = ([(True, ())] if args.initial else []) + [(False, ())] + [(False, v) for v in variants]
        for initial, variant in todo:
            k = (str(p), -1 if initial else res["tasks_done"] - 1, "+".join(variant))
            if k in have:
                continue
            done.append(probe(p, data, args, initial, variant))
            have.add(k)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(args.out, json.dumps(done, indent=1))
            print(table(done[-1:])[-1], flush=True)
    print("\n".join(table(done)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
