"""Reading σ-trace files (layout: :mod:`mesu_snn.runs.schema`) into plain numpy arrays.

A finished trace is one HDF5 file. While a run lasts (and after a crash) it is a folder
``<name>.partial/`` of append-only parts ``part_<seq>.h5``, each a complete trace file of
this schema holding the rows of one flush interval; :func:`read_trace` reads such a folder as
the concatenation of its parts (the attributes are those of the newest part). Every
:data:`MERGE_EVERY` parts the recorder merges the newest ones into one: the merged file
replaces the last of them and carries the attribute ``part_first`` (the first sequence
number it covers); parts it covers are then deleted, and a reader skips any it finds (a kill
between the two steps).
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from .schema import check_trace_file

__all__ = ["read_trace", "open_h5", "trace_parts", "merge_traces", "ROW_KEYS", "SUMMARY_KEYS"]

PART = re.compile(r"^part_(\d{8})\.h5$")
SUMMARY_KEYS = ("sigma_mean", "sigma_std", "mu_mean", "mu_std", "absmu_mean", "sigma_quantiles", "mu_quantiles",
                "sigma_hist", "mu_hist")
TRACKED_KEYS = ("tracked_mu", "tracked_sigma")
ROW_KEYS = SUMMARY_KEYS + TRACKED_KEYS


def open_h5(path):
    """An h5py File opened read-only; FileNotFoundError or one ValueError naming the file if it
    is not a readable HDF5 file (corrupt, truncated, or another format)."""
    import h5py
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise ValueError(f"{path}: not a readable HDF5 file (corrupt, truncated or another format): {e}") from None


#: parts merged into one by the recorder (``$MESU_SNN_TRACE_MERGE_EVERY`` overrides it, for tests)
MERGE_EVERY = max(2, int(os.environ.get("MESU_SNN_TRACE_MERGE_EVERY", "64") or 64))


def trace_parts(folder) -> list[tuple[int, Path]]:
    """(sequence number, path) of the live parts of a ``.partial`` trace folder, in order
    (parts covered by a later merged part are left out)."""
    import h5py
    folder = Path(folder)
    parts = sorted((int(m.group(1)), folder / n) for n in (p.name for p in folder.iterdir()) if (m := PART.match(n)))
    live, floor = [], None
    for seq, p in reversed(parts):
        if floor is not None and seq >= floor:
            continue                                   # covered by a merged part
        live.append((seq, p))
        try:
            with h5py.File(p, "r") as f:
                first = f.attrs.get("part_first")
        except OSError as e:
            raise ValueError(f"{p}: not a readable HDF5 file (corrupt, truncated or another format): {e}") from None
        if first is not None:
            floor = int(first)
    return live[::-1]


def read_trace(path, snapshots: bool = True) -> dict:
    """The whole trace: {"attrs", "config", "versions", "summary_updates", "tracked_updates",
    "layers": {pair: {dataset: array, "attrs": {...}}}, "snapshots": {task: {pair: {"mu", "sigma"}}},
    "snapshot_updates": {task: update}}. ``path``: a trace file or a ``.partial`` folder of parts."""
    path = Path(path)
    if path.is_dir():
        parts = trace_parts(path)
        if not parts:
            raise ValueError(f"{path}: σ-trace folder without any part (part_*.h5); nothing was recorded yet")
        return merge_traces([_read_file(p, snapshots) for _, p in parts], str(path))
    return _read_file(path, snapshots)


def _read_file(path, snapshots: bool = True) -> dict:
    with open_h5(path) as f:
        try:
            check_trace_file(f, str(path))
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
            out = {"attrs": attrs, "config": json.loads(attrs.get("config", "{}")),
                   "versions": json.loads(attrs.get("versions", "{}")),
                   "summary_updates": f["summary_updates"][()], "tracked_updates": f["tracked_updates"][()],
                   "layers": {}, "snapshots": {}, "snapshot_updates": {}}
            layers = f["layers"]
            for name in _leaf_groups(layers):
                g = layers[name]
                d = {k: g[k][()] for k in g.keys()}
                d["attrs"] = dict(g.attrs)
                d["sigma_edges"] = g["sigma_hist"].attrs["edges"]
                d["mu_edges"] = g["mu_hist"].attrs["edges"]
                out["layers"][name] = d
            if snapshots and "snapshots" in f:
                for task in f["snapshots"]:
                    g = f["snapshots"][task]
                    t = int(g.attrs["task"])
                    out["snapshots"][t] = {n: {"mu": g[n]["mu"][()], "sigma": g[n]["sigma"][()]}
                                           for n in _leaf_groups(g)}
                    out["snapshot_updates"][t] = int(g.attrs["update"])
        except (KeyError, OSError, RuntimeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: damaged σ trace: {type(e).__name__}: {e}") from None
    return out


def merge_traces(parts: list[dict], source: str) -> dict:
    """One trace from consecutive parts (as :func:`read_trace` returns them): rows concatenated,
    snapshots united, attributes of the last part. ValueError naming ``source`` if the parts do
    not fit together (different layers, updates not increasing)."""
    if not parts:
        raise ValueError(f"{source}: no trace parts to merge")
    first, last = parts[0], parts[-1]
    out = {k: last[k] for k in ("attrs", "config", "versions")}
    out["attrs"] = {k: v for k, v in out["attrs"].items() if k != "part_first"}
    for key in ("summary_updates", "tracked_updates"):
        u = np.concatenate([p[key] for p in parts]).astype(np.int64)
        if u.size > 1 and not (np.diff(u) > 0).all():
            raise ValueError(f"{source}: σ-trace parts overlap ({key} do not increase); the folder holds parts "
                             "of different runs")
        out[key] = u
    out["layers"] = {}
    for name, d0 in first["layers"].items():
        d = {k: v for k, v in d0.items() if k not in ROW_KEYS}
        for k in ROW_KEYS:
            try:
                d[k] = np.concatenate([p["layers"][name][k] for p in parts])
            except (KeyError, ValueError) as e:
                raise ValueError(f"{source}: σ-trace parts do not fit together ({name}/{k}: {e})") from None
        out["layers"][name] = d
    out["snapshots"], out["snapshot_updates"] = {}, {}
    for p in parts:
        out["snapshots"].update(p["snapshots"])
        out["snapshot_updates"].update(p.get("snapshot_updates", {}))
    return out


def _leaf_groups(group, prefix: str = "") -> list[str]:
    """Names (relative, '/'-joined) of groups holding datasets: the pair groups."""
    import h5py
    names = []
    for k, v in group.items():
        if isinstance(v, h5py.Group):
            if any(isinstance(c, h5py.Dataset) for c in v.values()):
                names.append(prefix + k)
            else:
                names += _leaf_groups(v, prefix + k + "/")
    return names
