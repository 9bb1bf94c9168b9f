"""``SigmaRecorder``: a training callback that writes σ and μ traces of every Bayesian layer to
HDF5 (layout: :mod:`mesu_snn.runs.schema`).

It works attached to any loop that calls the :class:`~mesu_snn.callbacks.Callback` methods::

    rec = SigmaRecorder("run/sigma_trace.h5", every=50, n_tracked=64, seed=0)
    rec.on_start(model, opt, config)
    for update, (x, y) in enumerate(batches, 1):
        ...; opt.step(); rec.on_update(update, model, opt)
    rec.on_task_end(0, model, opt); rec.on_end(model, opt)

While the run lasts the file is ``<path>.partial`` (readable after a crash; at most the last
``every`` updates are lost); ``on_end`` renames it to ``path``.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import subprocess
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..callbacks import Callback
from ..synapses import bayesian_pairs
from .atomic import check_writable
from .schema import FORMAT, QUANTILES, SCHEMA_VERSION, SIGMA_RANGE, SUMMARY_SCALARS

__all__ = ["SigmaRecorder", "layer_summary", "tracked_indices", "run_versions", "git_revision"]


# ----------------------------------------------------------------- pure helpers
def layer_summary(mu: np.ndarray, sigma: np.ndarray, sigma_edges: np.ndarray, mu_edges: np.ndarray,
                  quantiles=QUANTILES) -> dict[str, np.ndarray]:
    """Summary statistics of one layer's μ and σ (flat arrays of equal size).

    Returns the schema's per-row values: scalars (mean, std, mean |μ|), quantiles (Q,) and
    histograms (B,) with out-of-range values counted in the end bins."""
    mu = np.asarray(mu, dtype=np.float64).reshape(-1)
    sigma = np.asarray(sigma, dtype=np.float64).reshape(-1)
    if mu.shape != sigma.shape or mu.size == 0:
        raise ValueError(f"μ and σ must be non-empty and of equal size, got {mu.shape} and {sigma.shape}")
    clip = lambda v, e: np.clip(v, e[0], e[-1])
    return {"sigma_mean": sigma.mean(), "sigma_std": sigma.std(), "mu_mean": mu.mean(), "mu_std": mu.std(),
            "absmu_mean": np.abs(mu).mean(), "sigma_quantiles": np.quantile(sigma, quantiles),
            "mu_quantiles": np.quantile(mu, quantiles),
            "sigma_hist": np.histogram(clip(sigma, sigma_edges), sigma_edges)[0],
            "mu_hist": np.histogram(clip(mu, mu_edges), mu_edges)[0]}


def tracked_indices(numel: int, n_tracked: int, seed: int, layer_index: int) -> np.ndarray:
    """Sorted flat indices of min(n_tracked, numel) synapses, chosen by (seed, layer_index)."""
    if n_tracked < 0:
        raise ValueError(f"n_tracked must be >= 0, got {n_tracked}")
    rng = np.random.default_rng([int(seed), int(layer_index)])
    return np.sort(rng.choice(numel, size=min(n_tracked, numel), replace=False)).astype(np.int64)


def git_revision() -> str:
    """Commit hash of the source tree holding this package, or "unknown"."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_versions() -> dict[str, str]:
    """Versions of Python and the packages a run depends on."""
    import h5py

    from .._version import __version__
    v = {"python": platform.python_version(), "mesu_snn": __version__, "torch": torch.__version__,
         "numpy": np.__version__, "h5py": h5py.__version__}
    try:
        import nir
        v["nir"] = getattr(nir, "version", "unknown")
    except ImportError:
        pass
    return v


def _np(t: torch.Tensor, dtype=np.float64) -> np.ndarray:
    return t.detach().to("cpu").numpy().astype(dtype, copy=False)


def _append(ds, rows: np.ndarray) -> None:
    n = ds.shape[0]
    ds.resize(n + rows.shape[0], axis=0)
    ds[n:] = rows


# ----------------------------------------------------------------- the callback
class SigmaRecorder(Callback):
    """Record σ/μ summaries every ``every`` updates, full trajectories of ``n_tracked`` seeded
    synapses per layer at every update, and full μ/σ snapshots at each task end.

    path: output .h5 (FileExistsError if it, or a stale ``.partial``, exists, unless ``force``).
    bins: histogram bins; mu_range: half-width of the μ histogram (default 4·max|μ| at start).
    """

    def __init__(self, path, every: int = 100, n_tracked: int = 64, seed: int = 0, bins: int = 50,
                 mu_range: float | None = None, force: bool = False):
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive int (updates between summaries), got {every!r}")
        if not isinstance(n_tracked, int) or n_tracked < 0:
            raise ValueError(f"n_tracked must be an int >= 0, got {n_tracked!r}")
        if bins < 2:
            raise ValueError(f"bins must be >= 2, got {bins}")
        if mu_range is not None and not mu_range > 0:
            raise ValueError(f"mu_range must be > 0, got {mu_range!r}")
        self.path = Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.every, self.n_tracked, self.seed, self.bins = every, n_tracked, int(seed), int(bins)
        self.mu_range, self.force = mu_range, force
        self._f = None
        self._rows: list[tuple[int, dict]] = []      # (update, {pair: summary}) not yet written
        self._tracked: list[tuple[int, dict]] = []   # (update, {pair: (mu, sigma)})
        self.last_update = 0

    # -- callback protocol ---------------------------------------------------------
    def on_start(self, model: nn.Module, optimizer, config: dict) -> None:
        import h5py
        config = dict(config or {})
        if config.get("resumed") and self.partial.exists() and not self.path.exists():
            self._resume(int(config.get("start_update", 0)))
            return
        check_writable(self.path, self.force)
        check_writable(self.partial, self.force)
        pairs = bayesian_pairs(model)
        if not pairs:
            raise ValueError(f"{type(model).__name__} has no Bayesian layers to record")
        f = h5py.File(self.partial, "w")
        self._f = f
        f.attrs.update(format=FORMAT, schema_version=SCHEMA_VERSION, status="running",
                       created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                       config=json.dumps(config or {}, default=str, sort_keys=True),
                       versions=json.dumps(run_versions(), sort_keys=True), git_revision=git_revision(),
                       every=self.every, n_tracked=self.n_tracked, seed=self.seed, quantiles=np.array(QUANTILES))
        kw = dict(compression="gzip", compression_opts=4)
        f.create_dataset("summary_updates", shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(256,), **kw)
        f.create_dataset("tracked_updates", shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(1024,), **kw)
        sigma_edges = np.logspace(np.log10(SIGMA_RANGE[0]), np.log10(SIGMA_RANGE[1]), self.bins + 1)
        self._index = {}
        for i, (name, mu, sigma) in enumerate(pairs):
            g = f.create_group(f"layers/{name}")
            g.attrs.update(shape=np.array(mu.shape, dtype=np.int64), numel=mu.numel())
            half = self.mu_range or max(4.0 * float(mu.detach().abs().max()), 1e-3)
            g.attrs["mu_range"] = half
            for key in SUMMARY_SCALARS:
                g.create_dataset(key, shape=(0,), maxshape=(None,), dtype=np.float64, chunks=(256,), **kw)
            q = len(QUANTILES)
            for key in ("sigma_quantiles", "mu_quantiles"):
                g.create_dataset(key, shape=(0, q), maxshape=(None, q), dtype=np.float64, chunks=(256, q), **kw)
            for key, edges in (("sigma_hist", sigma_edges), ("mu_hist", np.linspace(-half, half, self.bins + 1))):
                d = g.create_dataset(key, shape=(0, self.bins), maxshape=(None, self.bins), dtype=np.int64,
                                     chunks=(64, self.bins), **kw)
                d.attrs["edges"] = edges
            idx = tracked_indices(mu.numel(), self.n_tracked, self.seed, i)
            g.create_dataset("tracked_index", data=idx)
            k = max(len(idx), 1)
            for key in ("tracked_mu", "tracked_sigma"):
                g.create_dataset(key, shape=(0, len(idx)), maxshape=(None, len(idx)), dtype=np.float32,
                                 chunks=(max(1, min(1024, 65536 // k)), k), **kw)
            self._index[name] = torch.from_numpy(idx)
        f.create_group("snapshots")
        self._record(0, model, summary=True)
        self._write()

    def on_update(self, update: int, model: nn.Module, optimizer) -> None:
        self._require_open()
        if update <= self.last_update:
            raise ValueError(f"updates must increase: got {update} after {self.last_update}")
        self._record(update, model, summary=update % self.every == 0)
        if update % self.every == 0:
            self._write()

    def on_task_end(self, task_index: int, model: nn.Module, optimizer) -> None:
        self._require_open()
        self._write()
        key = f"snapshots/task_{int(task_index)}"
        if key in self._f:
            raise ValueError(f"{self.partial}: a snapshot for task {task_index} was already written")
        g = self._f.create_group(key)
        g.attrs.update(task=int(task_index), update=int(self.last_update))
        for name, mu, sigma in bayesian_pairs(model):
            g.create_dataset(f"{name}/mu", data=_np(mu, np.float32), compression="gzip")
            g.create_dataset(f"{name}/sigma", data=_np(sigma, np.float32), compression="gzip")
        self._f.flush()

    def on_end(self, model: nn.Module, optimizer) -> None:
        if self._f is None:
            return
        if self.last_update % self.every:              # the final state is always summarised
            self._record(self.last_update, model, summary=True, tracked=False)
        self._write()
        self._f.attrs["status"] = "complete"
        self._f.close()
        self._f = None
        if self.path.exists() and not self.force:
            raise FileExistsError(f"{self.path} appeared during the run; the trace is left in {self.partial}")
        os.replace(self.partial, self.path)

    def close(self) -> None:
        """Flush and close without finishing (the ``.partial`` file stays)."""
        if self._f is not None:
            self._write()
            self._f.close()
            self._f = None

    # -- internals ---------------------------------------------------------------------
    def _resume(self, start: int) -> None:
        """Reopen the ``.partial`` file of an interrupted run whose trainer restarts from the
        checkpoint at update ``start``: rows and snapshots after ``start`` are dropped."""
        import h5py

        from .schema import check_trace_file
        try:
            f = h5py.File(self.partial, "a")
        except OSError as e:
            raise ValueError(f"{self.partial}: cannot resume this σ trace (corrupt or truncated: {e})") from None
        try:
            check_trace_file(f, str(self.partial))
        except ValueError:
            f.close()
            raise
        self._f = f
        for key, group_keys in (("summary_updates", None), ("tracked_updates", ("tracked_mu", "tracked_sigma"))):
            keep = int(np.searchsorted(f[key][()], start, side="right"))
            f[key].resize(keep, axis=0)
            for g in f["layers"].values():
                names = group_keys or [k for k in g if k not in ("tracked_index", "tracked_mu", "tracked_sigma")]
                for k in names:
                    g[k].resize(keep, axis=0)
        for name in list(f["snapshots"]):
            if int(f["snapshots"][name].attrs["update"]) > start:
                del f["snapshots"][name]
        self._index = {name: torch.from_numpy(g["tracked_index"][()]) for name, g in f["layers"].items()}
        self.every = int(f.attrs["every"])
        self.last_update = start
        f.attrs["resumed_at"] = np.append(f.attrs.get("resumed_at", np.zeros(0, np.int64)), start).astype(np.int64)
        f.flush()

    def _require_open(self):
        if self._f is None:
            raise RuntimeError("SigmaRecorder: on_start(model, optimizer, config) must be called first")

    @torch.no_grad()
    def _record(self, update: int, model: nn.Module, summary: bool, tracked: bool = True) -> None:
        pairs = bayesian_pairs(model)
        if tracked:
            self._tracked.append((update, {n: (_np(mu.reshape(-1)[self._index[n].to(mu.device)], np.float32),
                                               _np(s.reshape(-1)[self._index[n].to(s.device)], np.float32))
                                           for n, mu, s in pairs}))
        if summary:
            layers = self._f["layers"]
            self._rows.append((update, {n: layer_summary(_np(mu), _np(s), layers[n]["sigma_hist"].attrs["edges"],
                                                         layers[n]["mu_hist"].attrs["edges"])
                                        for n, mu, s in pairs}))
        self.last_update = update

    def _write(self) -> None:
        f = self._f
        if self._rows:
            _append(f["summary_updates"], np.array([u for u, _ in self._rows], dtype=np.int64))
            for name in self._rows[0][1]:
                g = f["layers"][name]
                for key in self._rows[0][1][name]:
                    _append(g[key], np.stack([np.asarray(r[name][key]) for _, r in self._rows]))
            self._rows = []
        if self._tracked:
            _append(f["tracked_updates"], np.array([u for u, _ in self._tracked], dtype=np.int64))
            for name in self._tracked[0][1]:
                g = f["layers"][name]
                _append(g["tracked_mu"], np.stack([r[name][0] for _, r in self._tracked]))
                _append(g["tracked_sigma"], np.stack([r[name][1] for _, r in self._tracked]))
            self._tracked = []
        f.flush()
