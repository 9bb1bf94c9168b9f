"""``mesu-snn plot RUN_DIR [RUN_DIR ...]``: figures from what run directories hold (PNG,
written into the first RUN_DIR or ``--out``):

* metrics.json → accuracy_matrix.png, task_accuracy.png, learning_accuracy.png (the trainer's
  :mod:`mesu_snn.runs.plots` when its keys are there); with several runs also
  learning_accuracy_comparison.png (R[j][j] per run: BGD's vanishing plasticity against MESU)
  and average_accuracy_comparison.png;
* sigma_trace.h5 → sigma_histograms.png (σ at each task end) and sigma_vs_absmu.png (from the
  checkpoint's model when the trace has no snapshot);
* importance.npz → precision_vs_hessian.png, importance_vs_hessian.png (``--importance N``
  computes it first from the run's checkpoint and N training samples).

Existing PNGs are kept (reported) unless ``--force``; each file is written to a temporary
name and renamed into place. Figures whose source is missing are reported as skipped.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from ..metrics import accuracy_array


def register(sub) -> None:
    p = sub.add_parser("plot", help="plot σ traces, accuracies and importance of run directories")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", help="folder for the PNGs (default: the first RUN_DIR)")
    p.add_argument("--importance", type=int, metavar="N",
                   help="first compute RUN_DIR/importance.npz: the Hessian diagonal (exact up to 5000 μ, else "
                        "Hutchinson with 200 probes) on N training samples spread over the run's tasks, against "
                        "the rule's σ-importance and the EWC Fisher (needs config.toml and a MESU/BGD run)")
    p.add_argument("--force", action="store_true", help="overwrite existing PNGs (and importance.npz)")
    p.set_defaults(func=run)


def compute_importance(run_dir: Path, n: int, force: bool = False) -> Path:
    """Write RUN_DIR/importance.npz from the run's checkpoint and training data (see --importance)."""
    import torch

    from ..build import build_evaluator
    from ..config import load_config
    from ..runs.atomic import check_writable
    from ..observe.compare import importance_report
    from ..runs.layout import IMPORTANCE_NAME, load_run_model, save_importance
    if n < 2:
        raise ValueError(f"--importance needs N >= 2 samples, got {n}")
    target = check_writable(run_dir / IMPORTANCE_NAME, force)
    cfg_path = run_dir / "config.toml"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"--importance needs {cfg_path} to rebuild the training data")
    cfg = load_config(cfg_path)
    if cfg.rule.name not in ("mesu", "bgd"):
        raise ValueError(f"{cfg_path}: rule {cfg.rule.name!r} has no σ; --importance needs a MESU or BGD run")
    model = load_run_model(run_dir)
    ev = build_evaluator(cfg, model)
    per_task = -(-n // len(ev.tasks))
    xs, ys = [], []
    for k in range(len(ev.tasks)):
        for x, y in ev.task_batches(k, per_task):
            xs.append(x.cpu())
            ys.append(y.cpu())
    x, y = torch.cat(xs, 1)[:, :n], torch.cat(ys)[:n]
    params = dict(cfg.rule.params)
    rep = importance_report(model, x, y, rule=cfg.rule.name, sigma_prior=float(params.get("sigma_prior", 0.1)),
                            memory=float(params.get("memory", 3000)))
    for k, c in rep["correlations"].items():
        print(f"{k}: Pearson {c['pearson']:.3f}, Spearman {c['spearman']:.3f} with diag H ({rep['method']}, "
              f"{len(y)} samples)")
    return save_importance(target, rep["hessian"], rep["measures"], rep["sigma"], force=force,
                           method=rep["method"], samples=int(len(y)), rule=cfg.rule.name)


def _matrix(m: dict, source) -> np.ndarray:
    if "accuracy_matrix" not in m:
        raise ValueError(f"{source}: metrics.json has no accuracy_matrix")
    try:
        R = accuracy_array(m["accuracy_matrix"])
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None
    if R.ndim != 2 or R.shape[0] != R.shape[1]:
        raise ValueError(f"{source}: accuracy_matrix must be square, got shape {R.shape}")
    return R


def _fig_job(make: Callable) -> Callable[[Path], None]:
    """A job writing the Figure that ``make()`` returns."""
    def job(path: Path) -> None:
        make().savefig(path, format="png", dpi=120, bbox_inches="tight")
    return job


def plan(run_dirs: list[Path]) -> tuple[dict[str, Callable[[Path], None]], list[str]]:
    """({file name: job(path)}, [skipped figure: reason]) for the given run directories."""
    from ..runs import plots
    from ..runs.layout import load_run_model, read_importance, read_metrics, run_files
    from ..runs.trace import read_trace
    from ..synapses import bayesian_pairs

    files = [run_files(d) for d in run_dirs]
    jobs, skipped = {}, []
    metrics = {}
    for d, f in zip(run_dirs, files):
        if f["metrics"] is not None:
            m = read_metrics(f["metrics"])
            label = str(m.get("rule", d.name))
            metrics[label if label not in metrics else f"{label} ({d.name})"] = (m, _matrix(m, f["metrics"]))
    first = files[0]
    if first["metrics"] is not None:
        m = read_metrics(first["metrics"])
        R, name = _matrix(m, first["metrics"]), m.get("rule", run_dirs[0].name)
        jobs["accuracy_matrix.png"] = lambda p: plots.plot_accuracy_matrix(m["accuracy_matrix"], p,
                                                                                   f"{name}: accuracy R[i][j]")
        if m.get("accuracy_over_time") and "task_end_updates" in m:
            jobs["task_accuracy.png"] = lambda p: plots.plot_task_accuracy_over_time(
                m["accuracy_over_time"], m["task_end_updates"], p, f"{name}: accuracy of each task over time")
        else:
            jobs["task_accuracy.png"] = _fig_job(lambda: plots.task_accuracy_over_time(
                R, title=f"{name}: accuracy of each task after each task"))
        jobs["learning_accuracy.png"] = lambda p: plots.plot_learning_accuracy(
            m["accuracy_matrix"], p, f"{name}: learning accuracy and final accuracy")
    else:
        skipped.append("accuracy_matrix.png, task_accuracy.png, learning_accuracy.png (no metrics.json)")
    if len(metrics) > 1:
        jobs["learning_accuracy_comparison.png"] = _fig_job(lambda: plots.learning_accuracy(
            {k: R for k, (_, R) in metrics.items()}))
        if all("average_accuracy_curve" in m and "average_accuracy" in m for m, _ in metrics.values()):
            jobs["average_accuracy_comparison.png"] = lambda p: plots.plot_comparison(
                {k: m for k, (m, _) in metrics.items()}, p)
    trace = read_trace(first["trace"]) if first["trace"] is not None else None
    label = plots.run_label(trace["config"] if trace is not None else None) or str(run_dirs[0].name)
    if trace is not None and len(trace["summary_updates"]):
        ends = read_metrics(first["metrics"]).get("task_end_updates") if first["metrics"] is not None else None
        jobs["sigma_over_updates.png"] = _fig_job(lambda: plots.sigma_over_updates(
            trace, ends, title=f"σ over training ({label})"))
    if len(metrics) > 1:
        traces = [read_trace(f["trace"], snapshots=False) if f["trace"] is not None else None for f in files]
        runs = {k: (R, traces[i] if i < len(traces) else None) for i, (k, (_, R)) in enumerate(metrics.items())}
        jobs["plasticity_and_sigma.png"] = _fig_job(lambda: plots.plasticity_and_sigma(runs))
    if trace is not None and trace["snapshots"]:
        jobs["sigma_histograms.png"] = _fig_job(lambda: plots.sigma_histograms(
            trace["snapshots"], title=f"σ at each task end ({label})"))
        last = trace["snapshots"][max(trace["snapshots"])]
        names = [n for n in last if not n.endswith("bias")]
        mu = np.concatenate([np.ravel(last[n]["mu"]) for n in names])
        sig = np.concatenate([np.ravel(last[n]["sigma"]) for n in names])
        jobs["sigma_vs_absmu.png"] = _fig_job(lambda: plots.sigma_vs_absmu(mu, sig, title="σ against |μ| at the "
                                                                                         "last task end"))
    else:
        skipped.append("sigma_histograms.png (no sigma_trace.h5 with task-end snapshots)")
        if first["checkpoint"] is not None:
            model = load_run_model(run_dirs[0])
            pairs = [(n, mu, s) for n, mu, s in bayesian_pairs(model) if not n.endswith("bias")]
            mu = np.concatenate([p[1].detach().reshape(-1).numpy() for p in pairs])
            sig = np.concatenate([p[2].detach().reshape(-1).numpy() for p in pairs])
            jobs["sigma_vs_absmu.png"] = _fig_job(lambda: plots.sigma_vs_absmu(mu, sig, title="σ against |μ| "
                                                                                             "(checkpoint)"))
        else:
            skipped.append("sigma_vs_absmu.png (no trace snapshot and no checkpoint)")
    if first["importance"] is not None:
        imp = read_importance(first["importance"])
        jobs["precision_vs_hessian.png"] = _fig_job(lambda: plots.precision_vs_hessian(imp["sigma"], imp["hessian"]))
        if imp["measures"]:
            jobs["importance_vs_hessian.png"] = _fig_job(lambda: plots.importance_scatter(imp["hessian"],
                                                                                          imp["measures"]))
    else:
        skipped.append("precision_vs_hessian.png, importance_vs_hessian.png (no importance.npz; compute it with "
                       "mesu-snn plot RUN_DIR --importance N)")
    return jobs, skipped


def run(args) -> int:
    from ..runs.atomic import atomic_path
    dirs = [Path(d) for d in args.run_dirs]
    for d in dirs:
        if not d.is_dir():
            raise FileNotFoundError(f"run directory {d} does not exist")
    out = Path(args.out) if args.out else dirs[0]
    out.mkdir(parents=True, exist_ok=True)
    if args.importance is not None:
        print(f"wrote {compute_importance(dirs[0], args.importance, args.force)}")
    jobs, skipped = plan(dirs)
    if not jobs:
        raise ValueError(f"{dirs[0]}: nothing to plot (no metrics.json, sigma_trace.h5, checkpoint or importance.npz)")
    for name, job in jobs.items():
        target = out / name
        if target.exists() and not args.force:
            print(f"kept {target} (exists; pass --force to redraw it)")
            continue
        with atomic_path(target, force=args.force) as tmp:
            job(tmp)
        print(f"wrote {target}")
    for s in skipped:
        print(f"skipped {s}")
    return 0
