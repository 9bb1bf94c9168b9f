"""Reading σ-trace files (layout: :mod:`mesu_snn.runs.schema`) into plain numpy arrays."""
from __future__ import annotations

import json
from pathlib import Path


from .schema import check_trace_file

__all__ = ["read_trace", "open_h5"]


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


def read_trace(path, snapshots: bool = True) -> dict:
    """The whole trace: {"attrs", "config", "versions", "summary_updates", "tracked_updates",
    "layers": {pair: {dataset: array, "attrs": {...}}}, "snapshots": {task: {pair: {"mu", "sigma"}}}}."""
    with open_h5(path) as f:
        try:
            check_trace_file(f, str(path))
            attrs = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
            out = {"attrs": attrs, "config": json.loads(attrs.get("config", "{}")),
                   "versions": json.loads(attrs.get("versions", "{}")),
                   "summary_updates": f["summary_updates"][()], "tracked_updates": f["tracked_updates"][()],
                   "layers": {}, "snapshots": {}}
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
                    out["snapshots"][int(g.attrs["task"])] = {
                        n: {"mu": g[n]["mu"][()], "sigma": g[n]["sigma"][()]} for n in _leaf_groups(g)}
        except (KeyError, OSError, RuntimeError) as e:
            raise ValueError(f"{path}: damaged σ trace: {type(e).__name__}: {e}") from None
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
