"""Every figure mesu_snn draws (matplotlib, no display, no global backend change: figures are
``matplotlib.figure.Figure`` objects rendered by Agg). Each function writes one PNG atomically
and returns its path, or returns the Figure for :func:`save_figure`.

Run plots:

* :func:`plot_accuracy_matrix`: heatmap of R[i][j] (row: after task i, column: task j).
* :func:`plot_task_accuracy_over_time`: accuracy of each task against updates, with the task
  boundaries as dotted lines (from ``metrics["accuracy_over_time"]``).
* :func:`plot_learning_accuracy`: R[i][i] per task (plasticity) next to the final accuracy.
* :func:`plot_comparison`: average accuracy after each task, one line per rule.

Observatory figures (σ histograms, σ vs |μ|, precision vs the Hessian, importance scatter,
accuracy of a task over time across runs, learning accuracy across runs, pruning curve).
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from ..metrics import accuracy_array
from ..observe.importance import correlations
from .atomic import atomic_path, atomic_write_bytes
from .layout import PLOT_FILES

__all__ = ["sigma_over_updates", "plasticity_and_sigma", "run_label", "plot_accuracy_matrix", "plot_task_accuracy_over_time", "plot_learning_accuracy", "plot_comparison",
           "write_run_plots", "PLOT_FILES", "save_figure", "sigma_histograms", "sigma_vs_absmu", "precision_vs_hessian", "importance_scatter",
           "task_accuracy_over_time", "learning_accuracy", "pruning_curve_plot"]


def _subplots(nrows: int = 1, ncols: int = 1, figsize=None, **kw):
    """``plt.subplots`` without pyplot's global figure manager."""
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.subplots(nrows, ncols, **kw)


def _log_axis(axis) -> None:
    """Readable log-scale ticks: 1-2-5 steps written as plain numbers, no crowded minor labels."""
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FormatStrFormatter("%g"))
    axis.set_minor_formatter(NullFormatter())




def _save(fig, path: str | Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def _matrix(R) -> np.ndarray:
    return accuracy_array(R)


def plot_accuracy_matrix(R, path: str | Path, title: str = "") -> Path:
    """Heatmap of the accuracy matrix (NaN = task not seen yet, left blank)."""
    a = _matrix(R)
    t = a.shape[0]
    fig, ax = _subplots(figsize=(1.0 + 0.45 * t, 0.8 + 0.4 * t))
    im = ax.imshow(np.ma.masked_invalid(a), vmin=0, vmax=1, cmap="viridis")
    if t <= 12:
        for i in range(t):
            for j in range(t):
                if not np.isnan(a[i, j]):
                    ax.text(j, i, f"{100 * a[i, j]:.0f}", ha="center", va="center", fontsize=7,
                            color="white" if a[i, j] < 0.6 else "black")
    ax.set_xlabel("evaluated task j")
    ax.set_ylabel("after training task i")
    ax.set_xticks(range(t))
    ax.set_yticks(range(t))
    ax.set_title(title or "accuracy R[i][j]")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return _save(fig, path)


def plot_task_accuracy_over_time(history: Sequence[Mapping], task_end_updates: Sequence[int], path: str | Path,
                                 title: str = "") -> Path:
    """Accuracy of every task at each evaluation, against the update number."""
    fig, ax = _subplots(figsize=(7, 3.6))
    if history:
        n = len(history[0]["accuracy"])
        upd = np.array([h["update"] for h in history])
        cmap = colormaps.get_cmap("tab10" if n <= 10 else "viridis")
        for k in range(n):
            acc = np.array([np.nan if h["accuracy"][k] is None else h["accuracy"][k] for h in history])
            ax.plot(upd, acc, marker=".", ms=3, lw=1.2, color=cmap(k if n <= 10 else k / max(n - 1, 1)),
                    label=f"task {k}")
        if n <= 10:
            ax.legend(fontsize=7, ncol=2, loc="lower left")
    for u in task_end_updates:
        ax.axvline(u, color="grey", ls=":", lw=0.8)
    ax.set_ylim(0, 1)
    ax.set_xlabel("update")
    ax.set_ylabel("test accuracy")
    ax.set_title(title or "accuracy of each task over time (dotted: task ends)")
    return _save(fig, path)


def plot_learning_accuracy(R, path: str | Path, title: str = "") -> Path:
    """Bars: accuracy right after learning each task (R[i][i]) and at the end (R[T-1][i])."""
    a = _matrix(R)
    t = a.shape[0]
    x = np.arange(t)
    fig, ax = _subplots(figsize=(1.5 + 0.5 * t, 3.2))
    ax.bar(x - 0.2, np.diag(a), 0.4, label="just learned R[i][i]")
    ax.bar(x + 0.2, a[-1], 0.4, label="at the end R[T-1][i]")
    ax.set_ylim(0, 1)
    ax.set_xticks(x)
    ax.set_xlabel("task")
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=7)
    ax.set_title(title or "learning accuracy (plasticity) and final accuracy")
    return _save(fig, path)


def plot_comparison(results: Mapping[str, Mapping], path: str | Path, title: str = "") -> Path:
    """Average accuracy over the tasks seen, after each task, for several runs ({label: metrics})."""
    fig, ax = _subplots(figsize=(6, 3.6))
    for label, m in results.items():
        curve = m["average_accuracy_curve"]
        ax.plot(np.arange(1, len(curve) + 1), curve, marker="o", ms=3, label=f"{label} ({m['average_accuracy']:.3f})")
    ax.set_ylim(0, 1)
    ax.set_xlabel("tasks learned")
    ax.set_ylabel("average accuracy on tasks seen")
    ax.legend(fontsize=8)
    ax.set_title(title or "average accuracy")
    return _save(fig, path)


def write_run_plots(run_dir: str | Path, metrics: Mapping) -> list[Path]:
    """The three per-run plots of :data:`PLOT_FILES` into ``run_dir``."""
    run_dir = Path(run_dir)
    name = metrics.get("rule", "")
    return [plot_accuracy_matrix(metrics["accuracy_matrix"], run_dir / PLOT_FILES[0], f"{name}: accuracy R[i][j]"),
            plot_task_accuracy_over_time(metrics["accuracy_over_time"], metrics["task_end_updates"],
                                         run_dir / PLOT_FILES[1], f"{name}: accuracy of each task over time"),
            plot_learning_accuracy(metrics["accuracy_matrix"], run_dir / PLOT_FILES[2],
                                   f"{name}: learning accuracy and final accuracy")]


def save_figure(fig, path, force: bool = False, dpi: int = 120) -> Path:
    """Write ``fig`` as PNG to ``path`` (temp file + rename) and close it."""
    with atomic_path(path, force) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    return Path(path)


def _weights(pairs: dict) -> list[str]:
    return [n for n in pairs if not n.endswith("bias")] or list(pairs)


def _grid(n: int, width: float = 4.6, height: float = 3.4, **kw):
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = _subplots(rows, cols, figsize=(width * cols, height * rows), squeeze=False, **kw)
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _integer_ticks(axis) -> None:
    from matplotlib.ticker import MaxNLocator
    axis.set_major_locator(MaxNLocator(integer=True))


def run_label(config: dict | None) -> str:
    """'rule on dataset' from a run configuration (for titles), or '' if unknown."""
    c = config or {}
    rule = (c.get("rule") or {}).get("name") if isinstance(c.get("rule"), dict) else c.get("rule")
    data = (c.get("data") or {}).get("dataset") if isinstance(c.get("data"), dict) else None
    return " on ".join(str(v) for v in (rule, data) if v)


def sigma_histograms(snapshots: dict, bins: int = 50, title: str = "σ at each task end"):
    """snapshots: {task: {pair: {"mu", "sigma"}}} (from :func:`read_trace`). One panel per weight
    layer, one curve per task end, on log-spaced bins that span that layer's own σ range."""
    if not snapshots:
        raise ValueError("no task-end snapshots to plot (the σ trace has none)")
    tasks = sorted(snapshots)
    names = _weights(snapshots[tasks[0]])
    fig, axes = _grid(len(names))
    cmap = colormaps.get_cmap("viridis")
    for ax, n in zip(axes, names):
        vals = np.concatenate([np.ravel(snapshots[t][n]["sigma"]) for t in tasks])
        vals = vals[np.isfinite(vals) & (vals > 0)]
        if vals.size == 0:
            ax.set_title(f"{n}: no positive σ")
            continue
        lo, hi = np.log10(vals.min()), np.log10(vals.max())
        if hi - lo < 1e-3:
            lo, hi = lo - 0.05, hi + 0.05
        edges = np.logspace(lo, hi, bins + 1)
        for i, t in enumerate(tasks):
            h, _ = np.histogram(np.ravel(snapshots[t][n]["sigma"]), edges)
            ax.step(edges[:-1], h / max(h.sum(), 1), where="post", color=cmap(i / max(len(tasks) - 1, 1)),
                    label=f"after task {t + 1}")
        ax.set_xscale("log")
        _log_axis(ax.xaxis)
        ax.set_xlabel("σ")
        ax.set_ylabel("fraction of the layer's weights")
        ax.set_title(f"{n} ({np.ravel(snapshots[tasks[0]][n]['sigma']).size:,} weights)", fontsize=9)
    axes[0].legend(fontsize=7, ncol=1 + len(tasks) // 6, loc="best")
    fig.suptitle(title)
    return fig


def sigma_over_updates(trace: dict, task_end_updates=None, title: str = "σ over training"):
    """One panel per weight layer: the median σ and its 5–95 % and 25–75 % bands over updates
    (from the trace's summaries), the tracked synapses as thin lines, task ends dotted."""
    layers = trace["layers"]
    names = _weights(layers)
    if not names or len(trace["summary_updates"]) == 0:
        raise ValueError("the σ trace has no summary rows to plot")
    qs = list(np.asarray(trace["attrs"].get("quantiles", [0, .05, .25, .5, .75, .95, 1]), dtype=float))
    col = {q: qs.index(q) for q in (0.05, 0.25, 0.5, 0.75, 0.95) if q in qs}
    u = np.asarray(trace["summary_updates"])
    fig, axes = _grid(len(names))
    for ax, n in zip(axes, names):
        d = layers[n]
        q = np.asarray(d["sigma_quantiles"])
        tu, ts = np.asarray(trace["tracked_updates"]), np.asarray(d.get("tracked_sigma", np.zeros((0, 0))))
        if ts.size and len(tu) == ts.shape[0]:
            ax.plot(tu, ts, color="0.6", lw=0.4, alpha=0.5)
        if 0.05 in col and 0.95 in col:
            ax.fill_between(u, q[:, col[0.05]], q[:, col[0.95]], color="C0", alpha=0.15, lw=0, label="5–95 %")
        if 0.25 in col and 0.75 in col:
            ax.fill_between(u, q[:, col[0.25]], q[:, col[0.75]], color="C0", alpha=0.3, lw=0, label="25–75 %")
        med = q[:, col[0.5]] if 0.5 in col else np.asarray(d["sigma_mean"])
        ax.plot(u, med, color="C0", lw=1.6, label="median" if 0.5 in col else "mean")
        for e in (task_end_updates or []):
            ax.axvline(e, color="k", ls=":", lw=0.7)
        ax.set_yscale("log")
        _log_axis(ax.yaxis)
        ax.set_xlabel("update")
        ax.set_ylabel("σ")
        ax.set_title(f"{n}", fontsize=9)
        _integer_ticks(ax.xaxis)
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(title + ("; dotted: task ends" if task_end_updates else ""))
    return fig


def plasticity_and_sigma(runs: dict[str, tuple[np.ndarray, dict | None]],
                         title: str = "plasticity and σ: learning accuracy per task, median σ of the first layer"):
    """runs: {label: (R, trace or None)}. Left: accuracy right after learning each task (R[j, j]);
    right: the first weight layer's median σ over updates. BGD's vanishing plasticity (σ only
    shrinks, learning accuracy falls) against MESU's steady σ, at a glance."""
    fig, (a1, a2) = _subplots(1, 2, figsize=(11, 4.0))
    for i, (label, (R, trace)) in enumerate(runs.items()):
        d = np.diag(np.asarray(R, dtype=np.float64))
        a1.plot(np.arange(1, d.size + 1), d, marker="o", ms=3, color=f"C{i}", label=label)
        if trace is not None and trace["layers"]:
            n = _weights(trace["layers"])[0]
            qs = list(np.asarray(trace["attrs"].get("quantiles", []), dtype=float))
            q = np.asarray(trace["layers"][n]["sigma_quantiles"])
            med = q[:, qs.index(0.5)] if 0.5 in qs else np.asarray(trace["layers"][n]["sigma_mean"])
            a2.plot(trace["summary_updates"], med, color=f"C{i}", label=f"{label} ({n})")
    a1.set_xlabel("task")
    a1.set_ylabel("accuracy right after learning it")
    a1.set_ylim(0, 1.02)
    _integer_ticks(a1.xaxis)
    a1.legend(fontsize=8)
    a2.set_yscale("log")
    _log_axis(a2.yaxis)
    a2.set_xlabel("update")
    a2.set_ylabel("median σ")
    if a2.lines:
        a2.legend(fontsize=8)
    fig.suptitle(title)
    return fig


def sigma_vs_absmu(mu: np.ndarray, sigma: np.ndarray, max_points: int = 20_000, seed: int = 0,
                   title: str = "σ against |μ| (final weights)"):
    """Scatter of σ against |μ| (log–log), at most ``max_points`` seeded points."""
    mu, sigma = np.ravel(mu), np.ravel(sigma)
    if mu.shape != sigma.shape or mu.size == 0:
        raise ValueError("μ and σ must be non-empty arrays of equal size")
    if mu.size > max_points:
        idx = np.random.default_rng(seed).choice(mu.size, max_points, replace=False)
        mu, sigma = mu[idx], sigma[idx]
    fig, ax = _subplots(figsize=(5.4, 4.4))
    ax.scatter(np.abs(mu) + 1e-12, sigma, s=3, alpha=0.4, linewidths=0)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("|μ| (mean weight)")
    ax.set_ylabel("σ")
    ax.set_title(title)
    return fig


def importance_scatter(hessian: np.ndarray, measures: dict[str, np.ndarray], max_points: int = 20_000, seed: int = 0,
                       title: str = "importance against the Hessian diagonal"):
    """One panel per measure: measure (y, log) against |diag H| (x, log), colour = sign of H
    (the surrogate-gradient Hessian is indefinite); titles give Spearman/Pearson with H and
    Spearman with |H|. Zero values sit at the bottom/left edge."""
    h = np.ravel(hessian).astype(np.float64)
    if not measures:
        raise ValueError("no importance measures to plot")
    idx = np.arange(h.size)
    if h.size > max_points:
        idx = np.random.default_rng(seed).choice(h.size, max_points, replace=False)
    ah = np.abs(h)
    xfloor = ah[ah > 0].min() / 2 if np.any(ah > 0) else 1e-12
    fig, axes = _subplots(1, len(measures), figsize=(4.4 * len(measures), 4.2), squeeze=False)
    for ax, (name, m) in zip(axes[0], measures.items()):
        m = np.ravel(m).astype(np.float64)
        if m.shape != h.shape:
            raise ValueError(f"measure {name!r} has {m.size} entries, the Hessian diagonal {h.size}")
        c, ca = correlations(m, h), correlations(m, ah)
        am = np.abs(m)
        yfloor = am[am > 0].min() / 2 if np.any(am > 0) else 1e-12
        for sel, colour, label in ((h[idx] > 0, "tab:blue", "H > 0"), (h[idx] < 0, "tab:orange", "H < 0"),
                                   (h[idx] == 0, "grey", "H = 0")):
            if np.any(sel):
                ax.scatter(np.maximum(ah[idx][sel], xfloor), np.maximum(am[idx][sel], yfloor), s=3, alpha=0.4,
                           linewidths=0, color=colour, label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("|Hessian diagonal| |∂²L/∂μ²|")
        ax.set_ylabel(name)
        ax.set_title(f"{name}\nvs H: Spearman {c['spearman']:.2f}, Pearson {c['pearson']:.2f}\n"
                     f"vs |H|: Spearman {ca['spearman']:.2f}", fontsize=9)
        ax.legend(fontsize=7, markerscale=3, loc="lower right")
    fig.suptitle(title)
    return fig


def precision_vs_hessian(sigma: np.ndarray, hessian: np.ndarray, **kw):
    """σ⁻² against the Hessian diagonal."""
    return importance_scatter(hessian, {"σ⁻² (precision)": np.ravel(sigma).astype(np.float64) ** -2},
                              title=kw.pop("title", "σ⁻² against the Hessian diagonal"), **kw)


def task_accuracy_over_time(R, title: str = "accuracy of each task over time"):
    """Accuracy on each task j after each training task i ≥ j."""
    R = np.asarray(R, dtype=np.float64)
    fig, ax = _subplots(figsize=(6.4, 4.2))
    x = np.arange(1, R.shape[0] + 1)
    for j in range(R.shape[1]):
        ax.plot(x[j:], R[j:, j], marker="o", ms=3, label=f"task {j + 1}")
    ax.set_xlabel("after training task")
    _integer_ticks(ax.xaxis)
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    return fig


def learning_accuracy(runs: dict[str, np.ndarray], title: str = "learning accuracy per task (plasticity)"):
    """runs: {label: R}; plots R[j, j] (accuracy right after learning task j) per run, e.g.
    BGD's vanishing plasticity against MESU."""
    fig, ax = _subplots(figsize=(6.4, 4.2))
    for label, R in runs.items():
        d = np.diag(np.asarray(R, dtype=np.float64))
        ax.plot(np.arange(1, d.size + 1), d, marker="o", ms=3, label=label)
    ax.set_xlabel("task")
    _integer_ticks(ax.xaxis)
    ax.set_ylabel("accuracy right after learning it")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.legend()
    return fig


def pruning_curve_plot(rows: list[dict], title: str = "accuracy against the fraction pruned by |μ|/σ"):
    """rows from :func:`mesu_snn.export.prune.pruning_curve`."""
    fig, ax = _subplots(figsize=(5.6, 4.0))
    ax.plot([100 * r["fraction"] for r in rows], [r["accuracy"] for r in rows], marker="o")
    ax.set_xlabel("weights pruned (%), lowest |μ|/σ first")
    ax.set_ylabel("test accuracy (mean network)")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    return fig
