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

from ..errors import FileFormatError
from ..filecheck import DIGEST_ATTR, check_h5, foreign_error
from ..filecheck import open_h5 as _open_h5_file
from .schema import check_trace_file

__all__ = ["read_trace", "open_h5", "trace_parts", "merge_traces", "ROW_KEYS", "SUMMARY_KEYS"]

PART = re.compile(r"^part_(\d{8})\.h5$")
SUMMARY_KEYS = ("sigma_mean", "sigma_std", "mu_mean", "mu_std", "absmu_mean", "sigma_quantiles", "mu_quantiles",
                "sigma_hist", "mu_hist")
TRACKED_KEYS = ("tracked_mu", "tracked_sigma")
ROW_KEYS = SUMMARY_KEYS + TRACKED_KEYS


def open_h5(path, checked: bool = True):
    """An h5py File opened read-only; FileNotFoundError, or one FileFormatError naming the file
    if it is not a readable HDF5 file (corrupt, truncated, or another format), or (``checked``)
    declares more data than it can hold or fails its SHA-256 (:func:`mesu_snn.filecheck.check_h5`)."""
    path = Path(path)
    f = _open_h5_file(path, "σ trace")
    try:
        if checked:
            check_h5(f, path)
    except BaseException:
        f.close()
        raise
    return f


#: parts merged into one by the recorder (``$MESU_SNN_TRACE_MERGE_EVERY`` overrides it, for tests)
MERGE_EVERY = max(2, int(os.environ.get("MESU_SNN_TRACE_MERGE_EVERY", "64") or 64))


def trace_parts(folder) -> list[tuple[int, Path]]:
    """(sequence number, path) of the live parts of a ``.partial`` trace folder, in order
    (parts covered by a later merged part are left out)."""
    folder = Path(folder)
    parts = sorted((int(m.group(1)), folder / n) for n in (p.name for p in folder.iterdir()) if (m := PART.match(n)))
    live, floor = [], None
    for seq, p in reversed(parts):
        if floor is not None and seq >= floor:
            continue                                   # covered by a merged part
        live.append((seq, p))
        with open_h5(p, checked=False) as f:
            try:
                first = f.attrs.get("part_first")
                first = None if first is None else int(first)
            except Exception as e:
                raise foreign_error(p, "σ-trace part", e) from None
        if first is not None:
            if not 0 <= first <= seq:
                raise FileFormatError(f"{p}: part_first {first} outside 0..{seq}; the part is corrupt")
            floor = first
    return live[::-1]


def read_trace(path, snapshots: bool = True) -> dict:
    """The whole trace: {"attrs", "config", "versions", "summary_updates", "tracked_updates",
    "layers": {pair: {dataset: array, "attrs": {...}}}, "snapshots": {task: {pair: {"mu", "sigma"}}},
    "snapshot_updates": {task: update}}. ``path``: a trace file or a ``.partial`` folder of parts."""
    path = Path(path)
    if path.is_dir():
        parts = trace_parts(path)
        if not parts:
            raise FileFormatError(f"{path}: σ-trace folder without any part (part_*.h5); nothing was recorded yet")
        return merge_traces([_read_file(p, snapshots) for _, p in parts], str(path))
    return _read_file(path, snapshots)


def _read_file(path, snapshots: bool = True) -> dict:
    with open_h5(path) as f:
        try:
            check_trace_file(f, str(path))
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items() if k != DIGEST_ATTR}
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
            _check_trace(out, path)
        except FileFormatError:
            raise
        except Exception as e:  # h5py, json and numpy raise many kinds on a damaged file
            raise FileFormatError(f"{path}: damaged σ trace: {type(e).__name__}: {str(e)[:300]}") from None
    return out


def _check_trace(t: dict, path) -> None:
    """FileFormatError naming ``path`` unless the arrays of a read trace have the schema's
    dtypes and shapes, updates increase, and tracked indices lie inside their tensors."""
    def bad(msg):
        raise FileFormatError(f"{path}: damaged σ trace: {msg}")

    def arr(a, where, kind, ndim):
        a = np.asarray(a)
        if a.dtype.kind not in kind or a.ndim != ndim:
            bad(f"{where} is {a.dtype} of shape {a.shape}, expected a {ndim}-d {'integer' if kind == 'iu' else 'numeric'} array")
        return a
    if not isinstance(t["config"], dict) or not isinstance(t["versions"], dict):
        bad("the config/versions attributes are not JSON objects")
    for key in ("summary_updates", "tracked_updates"):
        u = arr(t[key], key, "iu", 1)
        if u.size and (u.min() < 0 or not (np.diff(u.astype(np.int64)) > 0).all()):
            bad(f"{key} do not increase from 0 (updates going backwards)")
    s, n_up = len(t["summary_updates"]), len(t["tracked_updates"])
    for name, d in t["layers"].items():
        missing = [k for k in ROW_KEYS + ("tracked_index",) if k not in d]
        if missing:
            bad(f"layer {name} lacks {missing}")
        shape = arr(d["attrs"].get("shape", []), f"{name} attribute shape", "iu", 1)
        numel = int(np.prod(shape, dtype=object))
        if int(np.asarray(d["attrs"].get("numel", -1))) != numel:
            bad(f"layer {name}: numel {d['attrs'].get('numel')} is not the product of shape {shape.tolist()}")
        for k in SUMMARY_KEYS:
            a = arr(d[k], f"{name}/{k}", "fiu", 1 if not k.endswith(("_quantiles", "_hist")) else 2)
            if len(a) != s:
                bad(f"{name}/{k} has {len(a)} rows, summary_updates {s}")
        for k in ("sigma", "mu"):
            e = arr(d[f"{k}_edges"], f"{name}/{k}_hist edges", "f", 1)
            if d[f"{k}_hist"].shape[1] != len(e) - 1 or not (np.diff(e) > 0).all():
                bad(f"{name}/{k}_hist: {d[f'{k}_hist'].shape[1]} bins but {len(e)} increasing edges expected")
        idx = arr(d["tracked_index"], f"{name}/tracked_index", "iu", 1)
        if idx.size and (idx.min() < 0 or idx.max() >= numel):
            bad(f"{name}/tracked_index outside 0..{numel - 1} (out-of-range address)")
        for k in TRACKED_KEYS:
            a = arr(d[k], f"{name}/{k}", "f", 2)
            if a.shape != (n_up, len(idx)):
                bad(f"{name}/{k} has shape {a.shape}, expected {(n_up, len(idx))}")
    for task, snap in t["snapshots"].items():
        for name, v in snap.items():
            ref = t["layers"].get(name)
            want = tuple(int(x) for x in ref["attrs"]["shape"]) if ref is not None else None
            for k in ("mu", "sigma"):
                a = np.asarray(v[k])
                if a.dtype.kind != "f" or (want is not None and a.shape != want):
                    bad(f"snapshot task {task} {name}/{k} is {a.dtype} {a.shape}, expected float {want}")


def merge_traces(parts: list[dict], source: str) -> dict:
    """One trace from consecutive parts (as :func:`read_trace` returns them): rows concatenated,
    snapshots united, attributes of the last part. ValueError naming ``source`` if the parts do
    not fit together (different layers, updates not increasing)."""
    if not parts:
        raise FileFormatError(f"{source}: no trace parts to merge")
    first, last = parts[0], parts[-1]
    out = {k: last[k] for k in ("attrs", "config", "versions")}
    out["attrs"] = {k: v for k, v in out["attrs"].items() if k != "part_first"}
    for key in ("summary_updates", "tracked_updates"):
        u = np.concatenate([p[key] for p in parts]).astype(np.int64)
        if u.size > 1 and not (np.diff(u) > 0).all():
            raise FileFormatError(f"{source}: σ-trace parts overlap ({key} do not increase); the folder holds parts "
                             "of different runs")
        out[key] = u
    out["layers"] = {}
    for name, d0 in first["layers"].items():
        d = {k: v for k, v in d0.items() if k not in ROW_KEYS}
        for k in ROW_KEYS:
            try:
                d[k] = np.concatenate([p["layers"][name][k] for p in parts])
            except (KeyError, ValueError) as e:
                raise FileFormatError(f"{source}: σ-trace parts do not fit together ({name}/{k}: {e})") from None
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
