"""``SigmaRecorder``: a training callback that writes σ and μ traces of every Bayesian layer to
HDF5 (layout: :mod:`mesu_snn.runs.schema`).

It works attached to any loop that calls the :class:`~mesu_snn.callbacks.Callback` methods::

    rec = SigmaRecorder("run/sigma_trace.h5", every=50, n_tracked=64, seed=0)
    rec.on_start(model, opt, config)
    for update, (x, y) in enumerate(batches, 1):
        ...; opt.step(); rec.on_update(update, model, opt)
    rec.on_task_end(0, model, opt); rec.on_end(model, opt)

Crash safety: nothing is ever modified in place. While the run lasts the trace is a folder
``<path>.partial/`` of append-only parts: each flush (every ``every`` updates, at task ends,
before every checkpoint, at the end) writes the buffered rows as one small, complete trace
file ``part_<seq>.h5`` (temporary file, fsync, rename), so a SIGKILL at any moment leaves every
part readable and loses at most the rows since the last flush. ``on_end`` assembles the parts
into ``path`` (again temporary file + rename) and removes the folder. :func:`read_trace` and
``mesu-snn inspect`` read the folder as one trace. A resumed run (``resume=True`` or
``config["resumed"]``) drops the rows recorded after its checkpoint and appends new parts; a
run that finished training but was killed before the trace was assembled is assembled by
``on_fit_start`` when it is resumed. No HDF5 file stays open between calls.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
import subprocess
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..callbacks import Callback
from ..filecheck import stamp_h5_digest
from ..synapses import bayesian_pairs
from .atomic import atomic_write_with, check_free_space, check_writable, crash_point
from .schema import FORMAT, QUANTILES, SCHEMA_VERSION, SIGMA_RANGE, SUMMARY_SCALARS, describe_dataset
from .trace import MERGE_EVERY, ROW_KEYS, SUMMARY_KEYS, TRACKED_KEYS, merge_traces, read_trace, trace_parts

__all__ = ["SigmaRecorder", "layer_summary", "tracked_indices", "run_versions", "git_revision", "write_trace_file"]


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


def _nbytes(trace: dict) -> int:
    """Upper bound of the file size: the uncompressed arrays plus ~1 KiB of HDF5 headers each."""
    n = trace["summary_updates"].nbytes + trace["tracked_updates"].nbytes + 8192
    for d in trace["layers"].values():
        n += sum(np.asarray(v).nbytes + 1024 for k, v in d.items() if k != "attrs")
    for s in trace["snapshots"].values():
        n += sum(v["mu"].nbytes + v["sigma"].nbytes + 2048 for v in s.values())
    return n


def write_trace_file(path, trace: dict, appendable: bool = True) -> Path:
    """Write ``trace`` (the dict :func:`~mesu_snn.runs.trace.read_trace` returns) as one σ-trace
    HDF5 file of the schema, atomically (temporary file, fsync, rename). ``appendable``: chunked,
    gzip-compressed, resizable datasets as the schema documents (the finished trace); False:
    plain contiguous datasets (the small parts of a running trace: about 30 KB less per part
    and layer pair than chunked ones). The file is read back
    before the rename; a lack of space is a :class:`~mesu_snn.errors.DiskFullError` naming
    ``path`` and leaves the previous file at ``path`` untouched. Nothing is left open."""
    import h5py
    path = Path(path)
    check_free_space(path, _nbytes(trace))

    def write(tmp: Path) -> None:
        f = h5py.File(tmp, "w")
        try:
            f.attrs.update({k: v for k, v in trace["attrs"].items()})
            kw = dict(compression="gzip", compression_opts=4)

            def put(group, key, data, chunk_rows):
                data = np.asarray(data)
                if not appendable:
                    return group.create_dataset(key, data=data)
                chunks = (max(1, min(chunk_rows, max(len(data), 1))),) + tuple(max(1, s) for s in data.shape[1:])
                return group.create_dataset(key, data=data, maxshape=(None,) + data.shape[1:], chunks=chunks, **kw)
            put(f, "summary_updates", trace["summary_updates"].astype(np.int64), 256)
            put(f, "tracked_updates", trace["tracked_updates"].astype(np.int64), 1024)
            for name, d in trace["layers"].items():
                g = f.create_group(f"layers/{name}")
                g.attrs.update(d["attrs"])
                for key in ROW_KEYS:
                    put(g, key, d[key], 1024 if key in TRACKED_KEYS else 256)
                g["sigma_hist"].attrs["edges"] = d["sigma_edges"]
                g["mu_hist"].attrs["edges"] = d["mu_edges"]
                g.create_dataset("tracked_index", data=np.asarray(d["tracked_index"], dtype=np.int64))
            f.create_group("snapshots")
            for task, snap in trace["snapshots"].items():
                g = f.create_group(f"snapshots/task_{int(task)}")
                g.attrs.update(task=int(task), update=int(trace["snapshot_updates"][task]))
                for name, v in snap.items():
                    g.create_dataset(f"{name}/mu", data=v["mu"], **(kw if appendable else {}))
                    g.create_dataset(f"{name}/sigma", data=v["sigma"], **(kw if appendable else {}))
            f.visititems(lambda _, obj: describe_dataset(obj) if isinstance(obj, h5py.Dataset) else None)
            stamp_h5_digest(f)
            crash_point(f"h5_open:{path.name}")
        finally:
            f.close()
        read_trace(tmp, snapshots=False)      # a write HDF5 swallowed at close shows here

    return atomic_write_with(path, write)


# ----------------------------------------------------------------- the callback
class SigmaRecorder(Callback):
    """Record σ/μ summaries every ``every`` updates, full trajectories of ``n_tracked`` seeded
    synapses per layer at every update, and full μ/σ snapshots at each task end.

    path: output .h5 (FileExistsError if it, or a stale ``.partial`` folder, exists, unless
    ``force``). bins: histogram bins; mu_range: half-width of the μ histogram (default
    4·max|μ| at start). resume: continue the ``.partial`` trace of an interrupted run (what
    ``mesu-snn train --resume`` passes); a run resumed from update 0 starts the trace afresh.
    """

    def __init__(self, path, every: int = 100, n_tracked: int = 64, seed: int = 0, bins: int = 50,
                 mu_range: float | None = None, force: bool = False, resume: bool = False):
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
        self.mu_range, self.force, self.resume = mu_range, force, resume
        self._open = False
        self._attrs: dict = {}
        self._layers: dict = {}                      # pair -> static info (attrs, edges, tracked_index)
        self._rows: list[tuple[int, dict]] = []      # (update, {pair: summary}) not yet written
        self._tracked: list[tuple[int, dict]] = []   # (update, {pair: (mu, sigma)})
        self._snaps: dict = {}                       # task -> (update, {pair: {"mu", "sigma"}})
        self._done_tasks: set[int] = set()           # tasks whose snapshot is on disk
        self._small: list[int] = []                  # parts written since the last merge
        self._seq = 0
        self.last_update = 0
        self._last_summary = -1

    # -- callback protocol ---------------------------------------------------------
    def on_fit_start(self, trainer) -> None:
        """A resumed run that had finished training: assemble the trace it left in parts."""
        if trainer.final_metrics is None:
            return
        if self.path.exists():
            if self.partial.is_dir():
                shutil.rmtree(self.partial)            # killed between the final rename and this cleanup
            return
        if self.partial.is_dir():
            self._reopen(int(trainer.update))
            self.on_end(trainer.model, None)

    def on_start(self, model: nn.Module, optimizer, config: dict) -> None:
        config = dict(config or {})
        start = int(config.get("start_update", 0))
        if (config.get("resumed") or self.resume) and start > 0:
            if not self.partial.exists():
                raise FileNotFoundError(f"cannot resume the σ trace: {self.partial} is missing (the run was "
                                        "started without --sigma-trace, or the folder was deleted)")
            self._reopen(start)
            return
        if self.resume or self.force:                 # a fresh start: remove what a killed run left
            if self.partial.is_dir():
                shutil.rmtree(self.partial)
            elif self.partial.exists():
                self.partial.unlink()
        check_writable(self.path, self.force)
        check_writable(self.partial, False)
        pairs = bayesian_pairs(model)
        if not pairs:
            raise ValueError(f"{type(model).__name__} has no Bayesian layers to record")
        config.pop("resumed", None)
        config.pop("start_update", None)
        self._attrs = dict(format=FORMAT, schema_version=SCHEMA_VERSION, status="running",
                           created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                           config=json.dumps(config, default=str, sort_keys=True),
                           versions=json.dumps(run_versions(), sort_keys=True), git_revision=git_revision(),
                           every=self.every, n_tracked=self.n_tracked, seed=self.seed, quantiles=np.array(QUANTILES))
        sigma_edges = np.logspace(np.log10(SIGMA_RANGE[0]), np.log10(SIGMA_RANGE[1]), self.bins + 1)
        self._layers = {}
        for i, (name, mu, sigma) in enumerate(pairs):
            half = self.mu_range or max(4.0 * float(mu.detach().abs().max()), 1e-3)
            self._layers[name] = {
                "attrs": {"shape": np.array(mu.shape, dtype=np.int64), "numel": mu.numel(), "mu_range": half},
                "sigma_edges": sigma_edges, "mu_edges": np.linspace(-half, half, self.bins + 1),
                "tracked_index": tracked_indices(mu.numel(), self.n_tracked, self.seed, i)}
        self._index = {n: torch.from_numpy(d["tracked_index"]) for n, d in self._layers.items()}
        self.partial.mkdir()
        self._open, self._seq, self.last_update, self._last_summary = True, 0, 0, -1
        self._done_tasks, self._small = set(), []
        self._record(0, model, summary=True)
        self.flush()

    def on_update(self, update: int, model: nn.Module, optimizer) -> None:
        self._require_open()
        if update <= self.last_update:
            raise ValueError(f"updates must increase: got {update} after {self.last_update}")
        self._record(update, model, summary=update % self.every == 0)
        if update % self.every == 0:
            self.flush()

    def on_task_end(self, task_index: int, model: nn.Module, optimizer) -> None:
        self._require_open()
        task_index = int(task_index)
        if task_index in self._snaps or task_index in self._done_tasks:
            raise ValueError(f"{self.partial}: a snapshot for task {task_index} was already written")
        self._snaps[task_index] = (self.last_update, {n: {"mu": _np(mu, np.float32), "sigma": _np(s, np.float32)}
                                                      for n, mu, s in bayesian_pairs(model)})
        self.flush()

    def on_fit_exit(self, trainer) -> None:
        """The loop ended (normally or by an error): no file is open; rows not yet flushed are
        kept in memory for ``on_end`` (after an error, a resume recomputes them)."""

    def on_end(self, model: nn.Module, optimizer) -> None:
        if not self._open:
            return
        if self._last_summary != self.last_update:       # the final state is always summarised
            self._record(self.last_update, model, summary=True, tracked=False)
        self.flush()
        trace = self._merged()
        trace["attrs"]["status"] = "complete"
        if self.path.exists() and not self.force:
            raise FileExistsError(f"{self.path} appeared during the run; the trace is left in {self.partial}")
        write_trace_file(self.path, trace)
        crash_point(f"trace_assembled:{self.path.name}")
        shutil.rmtree(self.partial)
        self._open = False

    def close(self) -> None:
        """Flush and stop without finishing (the ``.partial`` folder stays, readable)."""
        if self._open:
            self.flush()
            self._open = False

    def flush(self) -> None:
        """Write the buffered rows and snapshots as the next part (nothing if there are none).
        The checkpointer calls it before every checkpoint, so a resume never misses a row."""
        if not self._open or not (self._rows or self._tracked or self._snaps):
            return
        part = self._part()
        write_trace_file(self.partial / f"part_{self._seq:08d}.h5", part, appendable=False)
        self._small.append(self._seq)
        self._seq += 1
        if len(self._small) >= MERGE_EVERY:
            self._merge_small()
        self._done_tasks.update(self._snaps)
        self._rows, self._tracked, self._snaps = [], [], {}

    # -- internals ---------------------------------------------------------------------
    def _merge_small(self) -> None:
        """Merge the parts written since the last merge into one (bounds the number of parts and
        their per-file overhead): it replaces the newest of them, then the others are deleted."""
        first, last = self._small[0], self._small[-1]
        paths = [self.partial / f"part_{s:08d}.h5" for s in self._small]
        merged = merge_traces([read_trace(p) for p in paths], str(self.partial))
        merged["attrs"]["part_first"] = first
        write_trace_file(paths[-1], merged, appendable=False)
        crash_point(f"parts_merged:{paths[-1].name}")
        for p in paths[:-1]:
            p.unlink()
        self._small = []
    def _part(self) -> dict:
        su = np.array([u for u, _ in self._rows], dtype=np.int64)
        tu = np.array([u for u, _ in self._tracked], dtype=np.int64)
        q, b = len(QUANTILES), self.bins
        layers = {}
        for name, st in self._layers.items():
            k = len(st["tracked_index"])
            d = {"attrs": st["attrs"], "sigma_edges": st["sigma_edges"], "mu_edges": st["mu_edges"],
                 "tracked_index": st["tracked_index"]}
            for key in SUMMARY_KEYS:
                if self._rows:
                    d[key] = np.stack([np.asarray(r[name][key]) for _, r in self._rows])
                else:
                    shape = (0, q) if key.endswith("quantiles") else (0, b) if key.endswith("hist") else (0,)
                    d[key] = np.zeros(shape, np.int64 if key.endswith("hist") else np.float64)
            for j, key in enumerate(TRACKED_KEYS):
                d[key] = (np.stack([r[name][j] for _, r in self._tracked]) if self._tracked
                          else np.zeros((0, k), np.float32))
            layers[name] = d
        return {"attrs": dict(self._attrs), "summary_updates": su, "tracked_updates": tu, "layers": layers,
                "snapshots": {t: s for t, (_, s) in self._snaps.items()},
                "snapshot_updates": {t: u for t, (u, _) in self._snaps.items()}}

    def _merged(self) -> dict:
        parts = [read_trace(p) for _, p in trace_parts(self.partial)]
        return merge_traces(parts, str(self.partial))

    def _reopen(self, start: int) -> None:
        """Continue the ``.partial`` folder of an interrupted run whose trainer restarts from its
        checkpoint at update ``start``: rows and snapshots recorded after ``start`` are dropped
        (parts past it deleted, a part straddling it rewritten), newer parts follow."""
        if not self.partial.is_dir():
            raise ValueError(f"{self.partial}: cannot resume this σ trace: it is not a folder of parts (written by "
                             "an older mesu_snn); start the run again with --force")
        parts = trace_parts(self.partial)
        live = {p for _, p in parts}
        for p in self.partial.glob("part_*.h5"):           # covered by a merged part (killed mid-merge)
            if p not in live:
                p.unlink()
        kept = []
        for seq, p in reversed(parts):                    # newest first: a kill here is redone next time
            t = read_trace(p)
            su, tu = t["summary_updates"] <= start, t["tracked_updates"] <= start
            snaps = {k: u for k, u in t["snapshot_updates"].items() if u <= start}
            if su.all() and tu.all() and len(snaps) == len(t["snapshot_updates"]):
                kept.append((seq, t))
                continue
            if not su.any() and not tu.any() and not snaps:
                p.unlink()
                continue
            t["summary_updates"], t["tracked_updates"] = t["summary_updates"][su], t["tracked_updates"][tu]
            for d in t["layers"].values():
                for key in SUMMARY_KEYS:
                    d[key] = d[key][su]
                for key in TRACKED_KEYS:
                    d[key] = d[key][tu]
            t["snapshots"] = {k: v for k, v in t["snapshots"].items() if k in snaps}
            t["snapshot_updates"] = snaps
            write_trace_file(p, t, appendable=False)
            kept.append((seq, t))
        if not kept:
            raise ValueError(f"{self.partial}: no σ-trace rows up to update {start} survive; cannot resume the trace")
        kept.reverse()
        merged = merge_traces([t for _, t in kept], str(self.partial))
        if merged["tracked_updates"].size and int(merged["tracked_updates"][-1]) != start:
            raise ValueError(f"{self.partial}: the σ trace ends at update {int(merged['tracked_updates'][-1])}, "
                             f"not at the checkpoint's update {start}; cannot resume it exactly")
        a = kept[0][1]["attrs"]
        self._attrs = {k: v for k, v in kept[-1][1]["attrs"].items() if k != "part_first"}
        self._attrs["created"] = a["created"]
        self._attrs["resumed_at"] = np.append(np.asarray(self._attrs.get("resumed_at", np.zeros(0, np.int64))),
                                              start).astype(np.int64)
        self._layers = {n: {"attrs": d["attrs"], "sigma_edges": d["sigma_edges"], "mu_edges": d["mu_edges"],
                            "tracked_index": d["tracked_index"]} for n, d in merged["layers"].items()}
        self._index = {n: torch.from_numpy(d["tracked_index"]) for n, d in self._layers.items()}
        self.every, self.bins = int(self._attrs["every"]), len(next(iter(self._layers.values()))["sigma_edges"]) - 1
        self._open = True
        self._done_tasks = set(merged["snapshot_updates"])
        self._seq = kept[-1][0] + 1
        self._small = []
        self.last_update = start
        self._last_summary = int(merged["summary_updates"][-1]) if merged["summary_updates"].size else -1
        self._rows, self._tracked, self._snaps = [], [], {}

    def _require_open(self):
        if not self._open:
            raise RuntimeError("SigmaRecorder: on_start(model, optimizer, config) must be called first")

    @torch.no_grad()
    def _record(self, update: int, model: nn.Module, summary: bool, tracked: bool = True) -> None:
        pairs = bayesian_pairs(model)
        if tracked:
            self._tracked.append((update, {n: (_np(mu.reshape(-1)[self._index[n].to(mu.device)], np.float32),
                                               _np(s.reshape(-1)[self._index[n].to(s.device)], np.float32))
                                           for n, mu, s in pairs}))
        if summary:
            self._rows.append((update, {n: layer_summary(_np(mu), _np(s), self._layers[n]["sigma_edges"],
                                                         self._layers[n]["mu_edges"])
                                        for n, mu, s in pairs}))
            self._last_summary = update
        self.last_update = update
