"""Reading a run directory (layout in :mod:`mesu_snn.run_dir`)::

    config.toml, metrics.json, log.csv, checkpoints/last.pt, sigma_trace.h5 (SigmaRecorder),
    importance.npz (optional: Hessian diagonal and importances, :func:`save_importance`)

The model is rebuilt from the checkpoint's ``model`` state dict: its class and sizes from a
``model_spec`` entry when present, else from the state dict's shapes and ``[model]`` of
config.toml (neuron settings, readout; a conv net's input shape from ``[data] dataset``).
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..export.spec import build_model

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["run_files", "read_metrics", "read_config", "read_log", "load_run_model", "infer_spec",
           "save_importance", "read_importance", "TRACE_NAME", "IMPORTANCE_NAME"]

TRACE_NAME = "sigma_trace.h5"
IMPORTANCE_NAME = "importance.npz"
INPUT_SHAPES = {"digits": (1, 8, 8), "mnist": (1, 28, 28), "fashion_mnist": (1, 28, 28), "nmnist": (2, 34, 34)}


def run_files(run_dir) -> dict[str, Path | None]:
    """Paths of the run's files ({config, metrics, log, trace, checkpoint, importance}); None if absent."""
    d = Path(run_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"run directory {d} does not exist")
    pick = lambda p: p if p.is_file() else None
    ckpt = pick(d / "checkpoints" / "last.pt")      # only the file we write: never a stray *.pt
    trace = pick(d / TRACE_NAME) or pick(d / (TRACE_NAME + ".partial"))
    return {"config": pick(d / "config.toml"), "metrics": pick(d / "metrics.json"), "log": pick(d / "log.csv"),
            "trace": trace, "checkpoint": ckpt, "importance": pick(d / IMPORTANCE_NAME)}


def read_metrics(path) -> dict:
    try:
        m = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(m, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(m).__name__}")
    return m


def read_config(path) -> dict:
    try:
        return tomllib.loads(Path(path).read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid TOML ({e})") from None


def read_log(path) -> dict[str, np.ndarray]:
    """CSV log -> {column: float array} (non-numeric cells become NaN)."""
    import csv
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise ValueError(f"{path}: empty CSV log")
    head, body = rows[0], rows[1:]

    def num(v):
        try:
            return float(v)
        except ValueError:
            return math.nan
    return {h: np.array([num(r[i]) if i < len(r) else math.nan for r in body]) for i, h in enumerate(head)}


def infer_spec(state: dict, config: dict | None = None) -> dict:
    """A :func:`~mesu_snn.export.spec.build_model` spec from a state dict's shapes and config."""
    mcfg = dict((config or {}).get("model", {}))
    neuron = {k: mcfg[k] for k in ("beta", "threshold", "reset", "surrogate") if k in mcfg}
    for k in ("beta", "threshold"):           # the trained buffers win over a config that disagrees
        v = state.get(f"neurons.0.{k}")
        if v is not None and v.dim() == 0 and not (k in neuron and float(torch.tensor(float(neuron[k]),
                                                                                       dtype=v.dtype)) == float(v)):
            neuron[k] = float(v)
    readout = mcfg.get("readout", "membrane")
    if "layers.0.weight_mu" in state:
        n = 0
        while f"layers.{n}.weight_mu" in state:
            n += 1
        ws = [state[f"layers.{i}.weight_mu"] for i in range(n)]
        return {"class": "SpikingMLP", "sizes": [int(ws[0].shape[1])] + [int(w.shape[0]) for w in ws],
                "readout": readout, "bias": "layers.0.bias_mu" in state, "neuron": neuron}
    if "convs.0.weight_mu" in state and "fc.weight_mu" in state:
        n = 0
        while f"convs.{n}.weight_mu" in state:
            n += 1
        ws = [state[f"convs.{i}.weight_mu"] for i in range(n)]
        channels = [int(ws[0].shape[1])] + [int(w.shape[0]) for w in ws]
        fc_in = int(state["fc.weight_mu"].shape[1])
        shape = INPUT_SHAPES.get(str((config or {}).get("data", {}).get("dataset", "")))
        if shape is None or shape[0] != channels[0]:
            side = int(round(math.sqrt(fc_in / channels[-1]))) * 2 ** n
            shape = (channels[0], side, side)
        return {"class": "SpikingConvNet", "input_shape": list(shape), "channels": channels,
                "n_classes": int(state["fc.weight_mu"].shape[0]), "kernel_size": int(ws[0].shape[-1]),
                "readout": readout, "neuron": neuron}
    raise ValueError("cannot tell the model from the checkpoint's state dict (no layers.N.weight_mu or "
                     "convs.N.weight_mu keys) and it has no model_spec")


def load_run_model(run_dir) -> nn.Module:
    """The trained model of a run (from its checkpoint). Errors name the file at fault."""
    files = run_files(run_dir)
    if files["checkpoint"] is None:
        raise FileNotFoundError(f"run directory {run_dir} has no checkpoint (checkpoints/last.pt)")
    path = files["checkpoint"]
    from ..checkpoint import load_checkpoint
    ckpt = load_checkpoint(path)
    state = ckpt.get("model")
    if not isinstance(state, dict):
        raise ValueError(f"{path}: checkpoint has no model state dict (keys {sorted(ckpt)})")
    config = read_config(files["config"]) if files["config"] else {}
    spec = ckpt.get("model_spec") or infer_spec(state, config)
    model = build_model(spec)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{path}: state dict does not fit the model {spec['class']}: {e}") from None
    return model


def save_importance(path, hessian: np.ndarray, measures: dict[str, np.ndarray], sigma: np.ndarray,
                    force: bool = False, **info) -> Path:
    """Write the flattened Hessian diagonal, σ and importance measures to an .npz (atomically)."""
    from .atomic import atomic_path
    arrays = {"hessian": np.asarray(hessian, np.float64), "sigma": np.asarray(sigma, np.float64)}
    arrays.update({f"measure:{k}": np.asarray(v, np.float64) for k, v in measures.items()})
    arrays["info"] = np.array(json.dumps(info, default=str))
    with atomic_path(path, force) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
    return Path(path)


def read_importance(path) -> dict:
    """{"hessian", "sigma", "measures": {name: array}, "info": dict} from :func:`save_importance`."""
    try:
        with np.load(path, allow_pickle=False) as z:
            d = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable importance .npz ({e})") from None
    if "hessian" not in d or "sigma" not in d:
        raise ValueError(f"{path}: importance file lacks 'hessian' or 'sigma'")
    return {"hessian": d["hessian"], "sigma": d["sigma"],
            "measures": {k.split(":", 1)[1]: v for k, v in d.items() if k.startswith("measure:")},
            "info": json.loads(str(d["info"])) if "info" in d else {}}
