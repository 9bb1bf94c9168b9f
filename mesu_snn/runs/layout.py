"""The run directory, the one home for its layout: create one (never overwriting without
``force``), find and read its files, rebuild its model.

Layout (written by ``mesu-snn train`` / ``demo`` and the trainer)::

    DIR/.mesu-run            marker: this folder is a mesu-snn run directory
    DIR/config.toml          the validated configuration
    DIR/metrics.json         accuracy matrix and every metric (written at the end)
    DIR/log.csv              one row per update (loss, training accuracy, average evaluated
                             accuracy): as many columns whatever the number of tasks
    DIR/accuracy.csv         one row per evaluation: the accuracy of every task (acc_task_k);
                             runs from before it kept these columns in every row of log.csv
    DIR/*.png                plots (accuracy matrix, accuracy of each task over time, ...)
    DIR/checkpoints/last.pt  atomic checkpoint every K updates (and at the end)

    DIR/sigma_trace.h5       σ traces (:class:`mesu_snn.runs.SigmaRecorder`, ``--sigma-trace``)
    DIR/importance.npz       optional: Hessian diagonal and importances (:func:`save_importance`)

The model is rebuilt from the checkpoint: its description (``model_spec``, see
:func:`mesu_snn.models.model_spec`) and its ``model`` state dict.
"""
from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from ..errors import FileFormatError
from ..models import model_from_spec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = ["MARKER", "CHECKPOINT", "ACCURACY_LOG", "PLOT_FILES", "create_run_dir", "is_run_dir", "run_is_finished", "run_files", "read_metrics", "read_config", "read_log", "load_run_model",
           "save_importance", "read_importance", "TRACE_NAME", "IMPORTANCE_NAME"]

TRACE_NAME = "sigma_trace.h5"
CHECKPOINT = Path("checkpoints") / "last.pt"   #: the only checkpoint readers open
MARKER = ".mesu-run"
ACCURACY_LOG = "accuracy.csv"   #: per-evaluation accuracy of every task
#: the per-run figures (:func:`mesu_snn.runs.plots.write_run_plots`), the last files a run writes
PLOT_FILES = ("accuracy_matrix.png", "task_accuracy.png", "learning_accuracy.png")


def is_run_dir(path: str | Path) -> bool:
    return (Path(path) / MARKER).is_file()


def create_run_dir(path: str | Path, force: bool = False, resume: bool = False, resumable: bool = True) -> Path:
    """Make ``path`` ready for a run and return it.

    * missing or empty folder: created;
    * ``resume``: must be an existing run directory; kept as it is;
    * existing, non-empty: ``FileExistsError`` unless ``force``; with ``force`` its contents
      are deleted, but only if it is a run directory (has the ``.mesu-run`` marker), so
      ``--force`` never wipes an unrelated folder.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"run directory {path} exists and is not a folder")
    if resume:
        if not is_run_dir(path):
            raise FileNotFoundError(f"cannot resume: {path} is not a mesu-snn run directory (no {MARKER})")
        return path
    if path.is_dir() and any(path.iterdir()):
        if not force:
            also = ", --resume to continue it," if resumable else ""
            raise FileExistsError(f"run directory {path} already exists and is not empty; pass --force to "
                                  f"overwrite it{also} or choose another --out")
        if not is_run_dir(path):
            raise FileExistsError(f"refusing to --force {path}: it is not a mesu-snn run directory (no {MARKER} "
                                  "marker); delete it yourself or choose another --out")
        for child in path.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    path.mkdir(parents=True, exist_ok=True)
    (path / MARKER).write_text("mesu-snn run directory\n")
    return path

IMPORTANCE_NAME = "importance.npz"


def run_is_finished(run_dir) -> bool:
    """True when the run in ``run_dir`` wrote everything a finished ``train`` writes: metrics.json,
    timing.json, an assembled σ trace (no ``.partial`` folder), the figures (which come last) and a
    checkpoint that holds the final metrics (read safely and verified: a damaged or foreign
    checkpoint is an error naming it). A run killed during its final writes is not finished
    (``--resume`` completes it)."""
    d = Path(run_dir)
    need = [d / CHECKPOINT, d / "metrics.json", d / "timing.json", *(d / f for f in PLOT_FILES)]
    if not all(p.is_file() for p in need) or (d / (TRACE_NAME + ".partial")).exists():
        return False
    from .checkpoint import load_checkpoint
    ckpt = load_checkpoint(d / CHECKPOINT)
    state = ckpt.get("state") if isinstance(ckpt, dict) else None
    return isinstance(state, dict) and state.get("final_metrics") is not None


def run_files(run_dir) -> dict[str, Path | None]:
    """Paths of the run's files ({config, metrics, log, trace, checkpoint, importance}); None if absent."""
    d = Path(run_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"run directory {d} does not exist")
    pick = lambda p: p if p.is_file() else None
    ckpt = pick(d / CHECKPOINT)                      # only the file we write: never a stray *.pt
    partial = d / (TRACE_NAME + ".partial")        # a folder of parts while running / after a crash
    trace = pick(d / TRACE_NAME) or (partial if partial.is_dir() else pick(partial))
    return {"config": pick(d / "config.toml"), "metrics": pick(d / "metrics.json"), "log": pick(d / "log.csv"),
            "accuracy": pick(d / ACCURACY_LOG),
            "trace": trace, "checkpoint": ckpt, "importance": pick(d / IMPORTANCE_NAME)}


def read_metrics(path) -> dict:
    try:
        m = json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise FileFormatError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(m, dict):
        raise FileFormatError(f"{path}: expected a JSON object, got {type(m).__name__}")
    return m


def read_config(path) -> dict:
    try:
        return tomllib.loads(Path(path).read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise FileFormatError(f"{path}: not valid TOML ({e})") from None


def read_log(path) -> dict[str, np.ndarray]:
    """CSV log -> {column: float array} (non-numeric cells become NaN)."""
    import csv
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except (csv.Error, UnicodeDecodeError) as e:
        raise FileFormatError(f"{path}: not a readable CSV log ({e})") from None
    if not rows:
        raise FileFormatError(f"{path}: empty CSV log")
    head, body = rows[0], rows[1:]

    def num(v):
        try:
            return float(v)
        except ValueError:
            return math.nan
    return {h: np.array([num(r[i]) if i < len(r) else math.nan for r in body]) for i, h in enumerate(head)}


def load_run_model(run_dir) -> nn.Module:
    """The trained model of a run (from its checkpoint). Errors name the file at fault."""
    files = run_files(run_dir)
    if files["checkpoint"] is None:
        raise FileNotFoundError(f"run directory {run_dir} has no checkpoint (checkpoints/last.pt)")
    path = files["checkpoint"]
    from .checkpoint import load_checkpoint
    ckpt = load_checkpoint(path)
    state = ckpt.get("model")
    if not isinstance(state, dict):
        raise FileFormatError(f"{path}: checkpoint has no model state dict (keys {sorted(ckpt)})")
    spec = ckpt.get("model_spec")
    if not isinstance(spec, dict):
        raise FileFormatError(f"{path}: checkpoint has no model description (model_spec); it predates mesu_snn's "
                         "version-2 checkpoints: re-run the training")
    have = sum(v.numel() for v in state.values() if isinstance(v, torch.Tensor))
    try:
        need = spec_numel(spec)
    except Exception as e:  # a spec of a crafted checkpoint may hold anything
        raise FileFormatError(f"{path}: malformed model description ({type(e).__name__}: {str(e)[:200]})") from None
    if need > 2 * have + 4096:       # build nothing the state dict could not fill
        raise FileFormatError(f"{path}: the model description asks for about {need} parameters but the state dict "
                              f"holds {have} values; the checkpoint is corrupt")
    try:
        model = model_from_spec(spec)
    except Exception as e:
        raise FileFormatError(f"{path}: the model description does not build a model ({type(e).__name__}: "
                              f"{str(e)[:300]})") from None
    want = model.state_dict()
    for k, v in state.items():
        if k in want and isinstance(v, torch.Tensor) and v.dtype != want[k].dtype:
            raise FileFormatError(f"{path}: {k} is {v.dtype}, the model holds {want[k].dtype}; the checkpoint is "
                                  "corrupt")
    try:
        model.load_state_dict(state)
    except Exception as e:
        raise FileFormatError(f"{path}: state dict does not fit the model {spec['class']}: {str(e)[:500]}") from None
    return model


def spec_numel(spec: dict) -> int:
    """Upper bound of the number of μ/σ/bias elements the model of ``spec`` allocates
    (our three model classes; other classes are refused by model_from_spec anyway)."""
    def ints(v, n=None):
        v = list(v)
        if any(not isinstance(x, int) or isinstance(x, bool) or x < 0 for x in v) or (n and len(v) != n):
            raise ValueError(f"expected {n or 'a list of'} non-negative integers, got {v!r}"[:200])
        return v
    if spec.get("class") == "SpikingConvNet":
        c, h, w = ints(spec["input_shape"], 3)
        ch, (k, n) = ints(spec["channels"]), ints([spec.get("kernel_size", 3), spec["n_classes"]])
        total = sum(2 * (a * b * k * k + b) for a, b in zip(ch[:-1], ch[1:]))
        for _ in ch[1:]:
            h, w = h // 2, w // 2
        return total + 2 * ((ch[-1] if ch else c) * h * w * n + n)
    sizes = ints(spec.get("sizes", []))
    return sum(2 * (a * b + b) for a, b in zip(sizes[:-1], sizes[1:]))


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
    except (OSError, ValueError, EOFError, KeyError) as e:   # zipfile/numpy errors on a damaged file
        raise FileFormatError(f"{path}: not a readable importance .npz ({e})") from None
    if "hessian" not in d or "sigma" not in d:
        raise FileFormatError(f"{path}: importance file lacks 'hessian' or 'sigma'")
    return {"hessian": d["hessian"], "sigma": d["sigma"],
            "measures": {k.split(":", 1)[1]: v for k, v in d.items() if k.startswith("measure:")},
            "info": json.loads(str(d["info"])) if "info" in d else {}}
