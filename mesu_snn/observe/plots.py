"""Figures of the metaplasticity observatory (matplotlib, Agg backend). Every function returns a
Figure; :func:`save_figure` writes a PNG atomically and never overwrites without ``force``.

* :func:`sigma_histograms` — σ distribution of the weights at each task end (snapshots).
* :func:`sigma_vs_absmu` — σ against |μ| (log–log) for the final weights.
* :func:`precision_vs_hessian` / :func:`importance_scatter` — σ⁻² (or any importance) against
  the Hessian diagonal, Pearson/Spearman in the titles.
* :func:`task_accuracy_over_time` (from the accuracy matrix, when metrics.json has no
  per-evaluation history) and :func:`learning_accuracy` of several runs side by side; the
  per-run accuracy plots are the trainer's :mod:`mesu_snn.plots`.
* :func:`pruning_curve_plot` — accuracy against the fraction of weights pruned by |μ|/σ.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .atomic import atomic_path  # noqa: E402
from .importance import correlations  # noqa: E402

__all__ = ["save_figure", "sigma_histograms", "sigma_vs_absmu", "precision_vs_hessian", "importance_scatter",
           "task_accuracy_over_time", "learning_accuracy", "pruning_curve_plot"]


def save_figure(fig, path, force: bool = False, dpi: int = 120) -> Path:
    """Write ``fig`` as PNG to ``path`` (temp file + rename) and close it."""
    try:
        with atomic_path(path, force) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return Path(path)


def _weights(pairs: dict) -> list[str]:
    return [n for n in pairs if not n.endswith("bias")] or list(pairs)


def sigma_histograms(snapshots: dict, bins: int = 60, title: str = "σ of the weights at each task end"):
    """snapshots: {task: {pair: {"mu", "sigma"}}} (from :func:`read_trace`). One curve per task."""
    if not snapshots:
        raise ValueError("no task-end snapshots to plot (the σ trace has none)")
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    allv = np.concatenate([np.concatenate([np.ravel(s[n]["sigma"]) for n in _weights(s)]) for s in snapshots.values()])
    lo, hi = np.log10(max(allv.min(), 1e-12)), np.log10(allv.max())
    edges = np.logspace(lo, hi if hi > lo else lo + 1e-3, bins + 1)
    cmap = plt.get_cmap("viridis")
    tasks = sorted(snapshots)
    for i, t in enumerate(tasks):
        s = np.concatenate([np.ravel(snapshots[t][n]["sigma"]) for n in _weights(snapshots[t])])
        h, _ = np.histogram(s, edges)
        ax.step(edges[:-1], h / max(h.sum(), 1), where="post", color=cmap(i / max(len(tasks) - 1, 1)),
                label=f"after task {t + 1}")
    ax.set_xscale("log")
    ax.set_xlabel("σ (synaptic standard deviation)")
    ax.set_ylabel("fraction of weights")
    ax.set_title(title)
    ax.legend(fontsize=8, ncol=2)
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
    fig, ax = plt.subplots(figsize=(5.4, 4.4))
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
    fig, axes = plt.subplots(1, len(measures), figsize=(4.4 * len(measures), 4.2), squeeze=False)
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
    fig.tight_layout()
    return fig


def precision_vs_hessian(sigma: np.ndarray, hessian: np.ndarray, **kw):
    """σ⁻² against the Hessian diagonal."""
    return importance_scatter(hessian, {"σ⁻² (precision)": np.ravel(sigma).astype(np.float64) ** -2},
                              title=kw.pop("title", "σ⁻² against the Hessian diagonal"), **kw)


def task_accuracy_over_time(R, title: str = "accuracy of each task over time"):
    """Accuracy on each task j after each training task i ≥ j."""
    R = np.asarray(R, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    x = np.arange(1, R.shape[0] + 1)
    for j in range(R.shape[1]):
        ax.plot(x[j:], R[j:, j], marker="o", ms=3, label=f"task {j + 1}")
    ax.set_xlabel("after training task")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    return fig


def learning_accuracy(runs: dict[str, np.ndarray], title: str = "learning accuracy per task (plasticity)"):
    """runs: {label: R}; plots R[j, j] (accuracy right after learning task j) per run, e.g.
    BGD's vanishing plasticity against MESU."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, R in runs.items():
        d = np.diag(np.asarray(R, dtype=np.float64))
        ax.plot(np.arange(1, d.size + 1), d, marker="o", ms=3, label=label)
    ax.set_xlabel("task")
    ax.set_ylabel("accuracy right after learning it")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.legend()
    return fig


def pruning_curve_plot(rows: list[dict], title: str = "accuracy against the fraction pruned by |μ|/σ"):
    """rows from :func:`mesu_snn.export.prune.pruning_curve`."""
    fig, ax = plt.subplots(figsize=(5.6, 4.0))
    ax.plot([100 * r["fraction"] for r in rows], [r["accuracy"] for r in rows], marker="o")
    ax.set_xlabel("weights pruned (%), lowest |μ|/σ first")
    ax.set_ylabel("test accuracy (mean network)")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    return fig
