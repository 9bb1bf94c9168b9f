"""Run plots (matplotlib, Agg backend: no display needed). Each function writes one PNG
atomically and returns its path.

* :func:`plot_accuracy_matrix`: heatmap of R[i][j] (row: after task i, column: task j).
* :func:`plot_task_accuracy_over_time`: accuracy of each task against updates, with the task
  boundaries as dotted lines (from ``metrics["accuracy_over_time"]``).
* :func:`plot_learning_accuracy`: R[i][i] per task (plasticity) next to the final accuracy.
* :func:`plot_comparison`: average accuracy after each task, one line per rule.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .checkpoint import atomic_write_bytes  # noqa: E402

__all__ = ["plot_accuracy_matrix", "plot_task_accuracy_over_time", "plot_learning_accuracy", "plot_comparison",
           "write_run_plots", "PLOT_FILES"]

PLOT_FILES = ("accuracy_matrix.png", "task_accuracy.png", "learning_accuracy.png")


def _save(fig, path: str | Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def _matrix(R) -> np.ndarray:
    return np.array([[np.nan if v is None else float(v) for v in row] for row in R], dtype=float)


def plot_accuracy_matrix(R, path: str | Path, title: str = "") -> Path:
    """Heatmap of the accuracy matrix (NaN = task not seen yet, left blank)."""
    a = _matrix(R)
    t = a.shape[0]
    fig, ax = plt.subplots(figsize=(1.0 + 0.45 * t, 0.8 + 0.4 * t))
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
    fig, ax = plt.subplots(figsize=(7, 3.6))
    if history:
        n = len(history[0]["accuracy"])
        upd = np.array([h["update"] for h in history])
        cmap = plt.get_cmap("tab10" if n <= 10 else "viridis")
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
    fig, ax = plt.subplots(figsize=(1.5 + 0.5 * t, 3.2))
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
    fig, ax = plt.subplots(figsize=(6, 3.6))
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
