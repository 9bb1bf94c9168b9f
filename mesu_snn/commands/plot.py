"""``mesu-snn plot RUN_DIR [RUN_DIR ...]``: the observatory's figures from what a run directory
holds (PNG, written into the first RUN_DIR or ``--out``):

* metrics.json → accuracy_matrix.png, task_accuracy.png, learning_accuracy.png (one curve per
  run given: e.g. BGD's vanishing plasticity against MESU);
* sigma_trace.h5 → sigma_histograms.png (σ at each task end), sigma_vs_absmu.png (or from the
  checkpoint's model when there is no snapshot);
* importance.npz → precision_vs_hessian.png, importance_vs_hessian.png.

Files that cannot be made (their source is missing) are listed as skipped. Existing PNGs are
not overwritten without ``--force``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def register(sub) -> None:
    p = sub.add_parser("plot", help="plot σ traces, accuracies and importance of run directories")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", help="folder for the PNGs (default: the first RUN_DIR)")
    p.add_argument("--force", action="store_true", help="overwrite existing PNGs")
    p.set_defaults(func=run)


def _matrix(m: dict, source) -> np.ndarray:
    if "accuracy_matrix" not in m:
        raise ValueError(f"{source}: metrics.json has no accuracy_matrix")
    R = np.array([[np.nan if v is None else v for v in row] for row in m["accuracy_matrix"]], dtype=np.float64)
    if R.ndim != 2 or R.shape[0] != R.shape[1]:
        raise ValueError(f"{source}: accuracy_matrix must be square, got shape {R.shape}")
    return R


def _trainer_plot(name: str):
    """The trainer's plotting function ``name`` from mesu_snn.plots when it exists, else None."""
    try:
        import mesu_snn.plots as tp
    except ImportError:
        return None
    return getattr(tp, name, None)


def build_figures(run_dirs: list[Path]) -> tuple[dict, list[str]]:
    """{file name: Figure} and the list of skipped figures with reasons."""
    from ..observe import plots
    from ..observe.rundir import load_run_model, read_importance, read_metrics, run_files
    from ..observe.trace import read_trace
    from ..synapses import bayesian_pairs

    files = [run_files(d) for d in run_dirs]
    figs, skipped = {}, []
    first = files[0]
    runs = {}
    for d, f in zip(run_dirs, files):
        if f["metrics"] is not None:
            m = read_metrics(f["metrics"])
            label = str(m.get("rule", d.name))
            runs[label if label not in runs else f"{label} ({d.name})"] = _matrix(m, f["metrics"])
    if first["metrics"] is not None:
        R = _matrix(read_metrics(first["metrics"]), first["metrics"])
        figs["accuracy_matrix.png"] = plots.accuracy_matrix(R, title=f"accuracy matrix — {run_dirs[0].name}")
        figs["task_accuracy.png"] = plots.task_accuracy_over_time(R, title=f"accuracy of each task over time — "
                                                                            f"{run_dirs[0].name}")
    else:
        skipped.append("accuracy_matrix.png, task_accuracy.png (no metrics.json)")
    if runs:
        figs["learning_accuracy.png"] = plots.learning_accuracy(runs)
    else:
        skipped.append("learning_accuracy.png (no metrics.json)")
    trace = read_trace(first["trace"]) if first["trace"] is not None else None
    if trace is not None and trace["snapshots"]:
        figs["sigma_histograms.png"] = plots.sigma_histograms(trace["snapshots"])
        last = trace["snapshots"][max(trace["snapshots"])]
        names = [n for n in last if not n.endswith("bias")]
        mu = np.concatenate([np.ravel(last[n]["mu"]) for n in names])
        sig = np.concatenate([np.ravel(last[n]["sigma"]) for n in names])
        figs["sigma_vs_absmu.png"] = plots.sigma_vs_absmu(mu, sig, title="σ against |μ| at the last task end")
    else:
        skipped.append("sigma_histograms.png (no sigma_trace.h5 with task-end snapshots)")
        if first["checkpoint"] is not None:
            model = load_run_model(run_dirs[0])
            pairs = [(n, mu, s) for n, mu, s in bayesian_pairs(model) if not n.endswith("bias")]
            mu = np.concatenate([p[1].detach().reshape(-1).numpy() for p in pairs])
            sig = np.concatenate([p[2].detach().reshape(-1).numpy() for p in pairs])
            figs["sigma_vs_absmu.png"] = plots.sigma_vs_absmu(mu, sig, title="σ against |μ| (checkpoint)")
        else:
            skipped.append("sigma_vs_absmu.png (no trace snapshot and no checkpoint)")
    if first["importance"] is not None:
        imp = read_importance(first["importance"])
        figs["precision_vs_hessian.png"] = plots.precision_vs_hessian(imp["sigma"], imp["hessian"])
        if imp["measures"]:
            figs["importance_vs_hessian.png"] = plots.importance_scatter(imp["hessian"], imp["measures"])
    else:
        skipped.append("precision_vs_hessian.png, importance_vs_hessian.png (no importance.npz; write one with "
                       "mesu_snn.observe.rundir.save_importance)")
    return figs, skipped


def run(args) -> int:
    import matplotlib.pyplot as plt

    from ..observe.plots import save_figure
    dirs = [Path(d) for d in args.run_dirs]
    for d in dirs:
        if not d.is_dir():
            raise FileNotFoundError(f"run directory {d} does not exist")
    out = Path(args.out) if args.out else dirs[0]
    out.mkdir(parents=True, exist_ok=True)
    figs, skipped = build_figures(dirs)
    clash = [n for n in figs if (out / n).exists()]
    if clash and not args.force:
        for f in figs.values():
            plt.close(f)
        raise FileExistsError(f"{out}: {', '.join(clash)} already exist; pass --force to overwrite them")
    if not figs:
        raise ValueError(f"{dirs[0]}: nothing to plot (no metrics.json, sigma_trace.h5, checkpoint or importance.npz)")
    for name, fig in figs.items():
        print(f"wrote {save_figure(fig, out / name, force=args.force)}")
    for s in skipped:
        print(f"skipped {s}")
    return 0
