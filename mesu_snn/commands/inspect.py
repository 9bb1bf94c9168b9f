"""``mesu-snn inspect FILE``: a short, human-readable summary of any file mesu_snn writes — σ
trace (.h5 / .h5.partial), NIR graph (.nir), metrics.json, config.toml, log.csv / accuracy.csv, checkpoint
(.pt), importance.npz, PNG plot — or of every such file in a run directory.

A corrupt, truncated or foreign file gives one error line naming the file and the problem."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from ..metrics import accuracy_array

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def register(sub) -> None:
    p = sub.add_parser("inspect", help="summarise a file written by mesu_snn (trace, NIR, metrics, checkpoint, ...)")
    p.add_argument("file", help="a file, or a run directory")
    p.set_defaults(func=run)


def run(args) -> int:
    path = Path(args.file)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise ValueError(f"{path}: empty directory")
        for f in files:
            try:
                print("\n".join(summarize(f)))
            except (ValueError, OSError) as e:
                print(f"{f}: cannot summarise ({e})")
            print()
        return 0
    print("\n".join(summarize(path)))
    return 0


def summarize(path: Path) -> list[str]:
    """Lines describing ``path``; ValueError naming it if it is not a file mesu_snn writes."""
    path = Path(path)
    if path.is_dir() and path.name.lower().endswith(".h5.partial"):   # σ trace of a running/killed run
        return _trace(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    head = path.open("rb").read(8)
    name = path.name.lower()
    if head == HDF5_MAGIC or name.endswith((".h5", ".h5.partial", ".nir", ".hdf5")):
        return _hdf5(path, head)
    if head == PNG_MAGIC:
        w, h = struct.unpack(">II", path.open("rb").read(24)[16:24])
        return [f"{path}: PNG image, {w}×{h} px"]
    if name.endswith(".json"):
        return _json(path)
    if name.endswith(".toml"):
        return _toml(path)
    if name.endswith(".csv"):
        return _csv(path)
    if name.endswith(".npz"):
        return _npz(path)
    if name.endswith(".pt"):
        return _checkpoint(path)
    raise ValueError(f"{path}: not a file type mesu_snn writes (expected .h5, .nir, .json, .toml, .csv, .pt, "
                     ".npz or .png)")


def _hdf5(path: Path, head: bytes) -> list[str]:
    from ..runs.trace import open_h5
    if head != HDF5_MAGIC:
        raise ValueError(f"{path}: not an HDF5 file (bad signature; corrupt or another format)")
    with open_h5(path) as f:
        fmt = f.attrs.get("format")
        fmt = fmt.decode() if isinstance(fmt, bytes) else fmt
        is_nir = "node" in f
    if fmt == "mesu_snn.sigma_trace":
        return _trace(path)
    if is_nir:
        return _nir(path)
    raise ValueError(f"{path}: HDF5 file that is neither a mesu_snn σ trace nor a NIR graph")


def _trace(path: Path) -> list[str]:
    from ..runs.trace import read_trace
    t = read_trace(path)
    a = t["attrs"]
    su, tu = t["summary_updates"], t["tracked_updates"]
    lines = [f"{path}: mesu_snn σ trace (schema {a.get('schema_version')}, status {a.get('status')})",
             f"  created {a.get('created')}, git {str(a.get('git_revision'))[:12]}, versions {t['versions']}",
             f"  summaries every {a.get('every')} updates: {len(su)} rows (updates {su[:1].tolist()}…{su[-1:].tolist()}); "
             f"tracked trajectories: {len(tu)} updates × {a.get('n_tracked')} synapses/layer (seed {a.get('seed')})",
             f"  task-end snapshots: {sorted(t['snapshots']) or 'none'}"]
    if t["config"]:
        lines.append(f"  config: {json.dumps(t['config'], sort_keys=True)[:300]}")
    for n, d in t["layers"].items():
        if len(d["sigma_mean"]) == 0:
            lines.append(f"  {n}: shape {tuple(d['attrs']['shape'])}, no rows")
            continue
        q = d["sigma_quantiles"][-1]
        lines.append(f"  {n}: shape {tuple(int(s) for s in d['attrs']['shape'])}, σ mean {d['sigma_mean'][0]:.4g} → "
                     f"{d['sigma_mean'][-1]:.4g} (median {q[len(q) // 2]:.4g}, min {q[0]:.3g}, max {q[-1]:.3g}), "
                     f"|μ| mean {d['absmu_mean'][-1]:.4g}")
    return lines


def _nir(path: Path) -> list[str]:
    from ..export.nir_export import _chain, read_graph
    g = read_graph(path)
    meta = g.metadata if isinstance(g.metadata, dict) else {}
    try:
        order = _chain(g, str(path))
    except ValueError:
        order = list(g.nodes)
    lines = [f"{path}: NIR graph, {len(g.nodes)} nodes, {len(g.edges)} edges"
             + (f", written by mesu_snn {meta.get('mesu_snn_version')} (dt {meta.get('dt')} s)"
                if meta.get("format") == "mesu_snn" else "")]
    for k in order:
        n = g.nodes[k]
        kind = type(n).__name__
        extra = ""
        if hasattr(n, "weight"):
            extra = f" weight {tuple(np.shape(n.weight))}"
            if isinstance(n.metadata, dict) and "sigma_weight" in n.metadata:
                s = np.asarray(n.metadata["sigma_weight"])
                extra += f", σ mean {s.mean():.4g}"
            if isinstance(n.metadata, dict) and "quant_bits" in n.metadata:
                extra += f", {int(n.metadata['quant_bits'])}-bit (scale {float(n.metadata['weight_scale']):.4g})"
        elif kind in ("LIF", "IF"):
            th = np.asarray(n.v_threshold)
            extra = f" {th.size} neurons, v_threshold {th.mean():.4g}"
            if kind == "LIF":
                extra += f", tau {np.asarray(n.tau).mean():.4g} s, r {np.asarray(n.r).mean():.4g}"
            if isinstance(n.metadata, dict) and "reset" in n.metadata:
                extra += f", reset {n.metadata['reset']}"
        lines.append(f"  {k}: {kind}{extra}")
    return lines


def _json(path: Path) -> list[str]:
    from ..runs.layout import read_metrics
    m = read_metrics(path)
    lines = [f"{path}: JSON object with keys {sorted(m)}"]
    for k in ("rule", "average_accuracy", "backward_transfer", "forgetting"):
        if k in m:
            v = m[k]
            lines.append(f"  {k}: {v:.4f}" if isinstance(v, float) else f"  {k}: {v}")
    if "accuracy_matrix" in m:
        R = accuracy_array(m["accuracy_matrix"])
        lines.append(f"  accuracy_matrix: {R.shape[0]}×{R.shape[1]}, last row {np.round(R[-1], 3).tolist()}")
    return lines


def _toml(path: Path) -> list[str]:
    from ..runs.layout import read_config
    c = read_config(path)
    lines = [f"{path}: TOML configuration"]
    for k, v in c.items():
        lines.append(f"  [{k}] {v}" if isinstance(v, dict) else f"  {k} = {v}")
    return lines


def _csv(path: Path) -> list[str]:
    from ..runs.layout import read_log
    d = read_log(path)
    n = len(next(iter(d.values()))) if d else 0
    cols = list(d)
    shown = cols if len(cols) <= 12 else [*cols[:6], f"... ({len(cols) - 8} more)", *cols[-2:]]
    return [f"{path}: CSV log, {n} rows, {len(cols)} columns {shown}"]


def _npz(path: Path) -> list[str]:
    from ..observe.importance import correlations
    from ..runs.layout import read_importance
    d = read_importance(path)
    lines = [f"{path}: importance comparison, {d['hessian'].size} synapses, info {d['info']}"]
    for k, v in d["measures"].items():
        c = correlations(v, d["hessian"])
        lines.append(f"  {k}: Pearson {c['pearson']:.3f}, Spearman {c['spearman']:.3f} with the Hessian diagonal")
    return lines


def _checkpoint(path: Path) -> list[str]:
    from ..runs.checkpoint import load_checkpoint
    ck = load_checkpoint(path)
    lines = [f"{path}: checkpoint (version {ck.get('version')}), keys {sorted(ck)}"]
    state = next((ck[k] for k in ("model", "model_state", "state_dict") if isinstance(ck.get(k), dict)), None)
    if state:
        n = sum(v.numel() for v in state.values() if hasattr(v, "numel"))
        lines.append(f"  model: {len(state)} tensors, {n} values; "
                     f"{sum(1 for k in state if k.endswith('weight_mu'))} Bayesian layers")
    if "position" in ck:
        lines.append(f"  position: {ck['position']}")
    return lines
