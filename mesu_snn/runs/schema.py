"""SCHEMA of the σ-trace HDF5 file written by :class:`~mesu_snn.observe.SigmaRecorder`
(the one place it is documented). Version 1.

Root attributes::

    format          "mesu_snn.sigma_trace"
    schema_version  1
    status          "running" while training (the trace is then a folder <name>.partial/ of parts),
                    "complete" after on_end
    created         ISO-8601 UTC time of on_start
    config          JSON of the run configuration given to on_start
    versions        JSON {python, mesu_snn, torch, numpy, h5py, nir}
    git_revision    commit of the mesu_snn source tree, or "unknown"
    every           k: summaries are written every k optimizer updates (and at update 0)
    n_tracked, seed tracked synapses per layer and the seed that chose them
    quantiles       the q of the *_quantiles columns, e.g. [0, .05, .25, .5, .75, .95, 1]
    mesu_snn_sha256 SHA-256 of the file's whole tree (every other attribute, name, dtype, shape and
                    data; :func:`mesu_snn.filecheck.h5_digest`), verified on read: a changed byte is
                    an error, never silently different data (files without it are read unchecked)
    resumed_at      (only after a resume) updates from which an interrupted run restarted; rows
                    recorded after that update before the interruption were dropped

Datasets (all appendable along axis 0: chunked, gzip-compressed, ``maxshape=(None, ...)``)::

    /summary_updates                  (S,)    int64    update index of each summary row
    /tracked_updates                  (U,)    int64    update index of each tracked row (every update)
    /layers/<pair>/                   one group per Bayesian (μ, σ) pair, e.g. "layers.0.weight";
        attrs: shape (the tensor's shape), numel
        sigma_mean, sigma_std, mu_mean, mu_std, absmu_mean         (S,)      float64
        sigma_quantiles, mu_quantiles                              (S, Q)    float64
        sigma_hist (S, B) int64 with attr edges (B+1,): log-spaced σ bins, 1e-6 … 1e1 (under/over-flow
            counted in the first/last bin)
        mu_hist    (S, B) int64 with attr edges (B+1,): linear μ bins over ±mu_range
        tracked_index                                              (K,)      int64  flat indices
        tracked_mu, tracked_sigma                                  (U, K)    float32 every update
    /snapshots/task_<i>/              full tensors at the end of task i; attrs task, update
        <pair>/mu, <pair>/sigma                                    tensor shape, float32

Every dataset carries the attributes ``description`` (one line) and ``units``
(:data:`DATASET_INFO`). σ and μ are in the units of the weight they describe (the synaptic
weight multiplying the input), histograms count synapses.

Flushing: rows are buffered in memory and written every k updates, at task ends, before every
checkpoint and at on_end, each time as a new part ``<name>.partial/part_<seq>.h5``: a complete
file of this schema holding only that interval's rows (plain contiguous datasets), written to a
temporary file, fsynced and renamed. Nothing is ever modified in place, so a crash at any
moment loses at most the rows since the last flush and every part stays readable;
:func:`mesu_snn.runs.read_trace` and ``mesu-snn inspect`` read the folder as one trace
(:mod:`mesu_snn.runs.trace` describes the merging of parts). ``on_end`` writes the finished
trace as one file of this layout and removes the folder.
"""
from __future__ import annotations

from ..errors import FileFormatError

FORMAT = "mesu_snn.sigma_trace"
SCHEMA_VERSION = 1
QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)
SIGMA_RANGE = (1e-6, 10.0)
SUMMARY_SCALARS = ("sigma_mean", "sigma_std", "mu_mean", "mu_std", "absmu_mean")

#: dataset name (last path component) -> (description, units), written as the attributes
#: ``description`` and ``units`` of every dataset of the file
DATASET_INFO = {
    "summary_updates": ("optimizer update after which each summary row was taken (0: the initial state)", "updates"),
    "tracked_updates": ("optimizer update of each row of tracked_mu / tracked_sigma (0: the initial state)",
                        "updates"),
    "sigma_mean": ("mean of σ over the layer's synapses", "weight units"),
    "sigma_std": ("standard deviation of σ over the layer's synapses", "weight units"),
    "mu_mean": ("mean of μ over the layer's synapses", "weight units"),
    "mu_std": ("standard deviation of μ over the layer's synapses", "weight units"),
    "absmu_mean": ("mean of |μ| over the layer's synapses", "weight units"),
    "sigma_quantiles": ("quantiles of σ over the layer's synapses, at the file's attribute quantiles",
                        "weight units"),
    "mu_quantiles": ("quantiles of μ over the layer's synapses, at the file's attribute quantiles", "weight units"),
    "sigma_hist": ("synapses per σ bin (log-spaced bin edges in the attribute edges)", "count"),
    "mu_hist": ("synapses per μ bin (linear bin edges in the attribute edges)", "count"),
    "tracked_index": ("flat (row-major) indices of the tracked synapses in the layer's tensor", "index"),
    "tracked_mu": ("μ of each tracked synapse (columns: tracked_index) at every update", "weight units"),
    "tracked_sigma": ("σ of each tracked synapse (columns: tracked_index) at every update", "weight units"),
    "mu": ("full μ tensor of the layer at the end of the task", "weight units"),
    "sigma": ("full σ tensor of the layer at the end of the task", "weight units"),
}

__all__ = ["FORMAT", "SCHEMA_VERSION", "QUANTILES", "SIGMA_RANGE", "SUMMARY_SCALARS", "DATASET_INFO",
           "describe_dataset", "check_trace_file"]


def describe_dataset(dataset) -> None:
    """Set the ``description`` and ``units`` attributes of an h5py dataset of the trace."""
    description, units = DATASET_INFO[dataset.name.rsplit("/", 1)[-1]]
    dataset.attrs["description"] = description
    dataset.attrs["units"] = units


def check_trace_file(f, source: str) -> None:
    """FileFormatError naming ``source`` unless the open h5py File ``f`` is a σ trace of this schema."""
    fmt = f.attrs.get("format")
    fmt = fmt.decode() if isinstance(fmt, bytes) else fmt
    if fmt != FORMAT:
        raise FileFormatError(f"{source}: not a mesu_snn σ trace (format attribute {fmt!r}, expected {FORMAT!r})")
    try:
        ver = int(f.attrs.get("schema_version", -1))
    except (TypeError, ValueError):
        ver = f.attrs.get("schema_version")
    if ver != SCHEMA_VERSION:
        raise FileFormatError(f"{source}: σ-trace schema version {ver} is not supported (expected {SCHEMA_VERSION})")
    for key in ("summary_updates", "tracked_updates", "layers"):
        if key not in f:
            raise FileFormatError(f"{source}: σ trace is missing '/{key}'")
