"""Run files, the one home for everything a run writes and reads back: the run-directory
layout, atomic writes, checkpoints (weights only, checksummed), the log/checkpoint/metrics
writers (training callbacks), σ traces (HDF5), plots and result tables."""
from .atomic import atomic_path, atomic_write_bytes, atomic_write_text, check_writable
from .callbacks import Checkpointer, CSVLogger, MetricsWriter, build_run, run_callbacks
from .checkpoint import load_checkpoint, save_checkpoint
from .layout import create_run_dir, is_run_dir, load_run_model, read_config, read_log, read_metrics, run_files
from .recorder import SigmaRecorder
from .trace import read_trace

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "check_writable", "CSVLogger", "Checkpointer",
           "MetricsWriter", "run_callbacks", "build_run", "load_checkpoint", "save_checkpoint", "create_run_dir", "is_run_dir",
           "load_run_model", "read_config", "read_log", "read_metrics", "run_files", "SigmaRecorder", "read_trace"]
