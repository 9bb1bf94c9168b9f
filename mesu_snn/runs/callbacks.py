"""The run-file writers as training callbacks: the CSV log, atomic checkpoints (and resume),
the metrics and timing files. :func:`run_callbacks` gives the set ``mesu-snn train`` uses.

Layout: :mod:`mesu_snn.runs.layout`. Every file is written atomically (temp file + rename)
except ``log.csv`` and ``accuracy.csv``, which are appended to during the run and rewritten
atomically from the trainer's rows at the start (after a resume) and at the end, so a kill
leaves at most a partial last line that the next resume replaces.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from ..callbacks import Callback
from .atomic import atomic_write_text, crash_point, disk_full_error, is_disk_full
from .checkpoint import load_checkpoint, save_checkpoint
from .layout import ACCURACY_LOG, CHECKPOINT

__all__ = ["CSVLogger", "Checkpointer", "MetricsWriter", "run_callbacks", "build_run"]


class CSVLogger(Callback):
    """``DIR/log.csv``: one row per update (loss, training accuracy, average evaluated accuracy),
    its width independent of the number of tasks; ``DIR/accuracy.csv``: one row per evaluation
    with the accuracy of every task (``acc_task_k``; O(evaluations × tasks))."""

    def __init__(self, run_dir):
        self.path = Path(run_dir) / "log.csv"
        self.accuracy_path = Path(run_dir) / ACCURACY_LOG
        self._files: dict[str, object] = {}
        self._fields: dict[str, list[str]] = {}

    def _tables(self, trainer) -> dict[Path, tuple[list[str], list[dict]]]:
        return {self.path: (trainer.log_fields(), trainer.log_rows),
                self.accuracy_path: (trainer.accuracy_fields(), trainer.accuracy_rows())}

    def _rewrite(self, trainer) -> None:
        for path, (fields, rows) in self._tables(trainer).items():
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
            atomic_write_text(path, buf.getvalue())

    def on_fit_start(self, trainer) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._rewrite(trainer)
        if trainer.final_metrics is None:
            for path, (fields, _) in self._tables(trainer).items():
                self._fields[path.name] = fields
                self._files[path.name] = open(path, "a", newline="")

    def _write(self, path: Path, row: dict) -> None:
        try:
            csv.DictWriter(self._files[path.name], fieldnames=self._fields[path.name],
                           lineterminator="\n").writerow(row)
        except OSError as e:
            raise (disk_full_error(path, e) if is_disk_full(e) else e) from None

    def on_step(self, trainer, row: dict) -> None:
        self._write(self.path, row)
        if row.get("eval_avg_acc", "") != "" and trainer.history:
            self._write(self.accuracy_path, trainer.accuracy_row(trainer.history[-1]))

    def flush(self) -> None:
        for path in (self.path, self.accuracy_path):
            f = self._files.get(path.name)
            if f is None:
                continue
            try:
                f.flush()
            except OSError as e:
                raise (disk_full_error(path, e) if is_disk_full(e) else e) from None
        if self._files:
            crash_point(f"log_flushed:{self.path.name}")

    def on_fit_exit(self, trainer) -> None:
        files, self._files = self._files, {}
        err = None
        for name, f in files.items():
            try:
                f.close()
            except OSError as e:
                err = err or (self.path.parent / name, e)
        if err is not None and trainer.final_metrics is not None:   # a failed run's logs are rewritten on resume
            path, e = err
            raise (disk_full_error(path, e) if is_disk_full(e) else e) from None

    def on_finish(self, trainer, metrics, timing) -> None:
        self._rewrite(trainer)


class Checkpointer(Callback):
    """``DIR/checkpoints/last.pt`` every ``every`` updates (0: only at the end) and at the end,
    never after the run diverged; restores the trainer from it on ``fit(resume=True)``."""

    def __init__(self, run_dir, every: int = 0, logger: CSVLogger | None = None):
        if isinstance(every, bool) or not isinstance(every, int) or every < 0:
            raise ValueError(f"checkpoint_every must be an integer >= 0, got {every!r}")
        self.path = Path(run_dir) / CHECKPOINT
        self.every, self.logger = every, logger

    def save(self, trainer) -> Path | None:
        """Flush every other callback that buffers (the log, the σ recorder) first, so that what
        they wrote covers at least the checkpoint's updates; then write the checkpoint. A run
        that has diverged (:meth:`Trainer.check_parameters` is asked first) writes none: the
        checkpoint on disk stays the last good one. Returns the path written, or None."""
        if trainer.check_parameters():
            return None
        for cb in [self.logger, *trainer.callbacks]:
            if cb is not None and cb is not self and callable(getattr(cb, "flush", None)):
                cb.flush()
        return save_checkpoint(self.path, trainer.state_dict())

    def on_resume(self, trainer) -> bool:
        if not self.path.is_file():
            return False
        trainer.load_state_dict(load_checkpoint(self.path))
        return True

    def on_step(self, trainer, row: dict) -> None:
        u = trainer.update
        if self.every and u % self.every == 0 and u < trainer.n_updates:
            self.save(trainer)

    def on_finish(self, trainer, metrics, timing) -> None:
        if timing is not None:
            self.save(trainer)


class MetricsWriter(Callback):
    """``DIR/metrics.json`` (every metric) and ``DIR/timing.json`` (wall time) at the end. A run
    resumed after it had finished (killed during its final writes) gets a ``timing.json`` with
    ``wall_s`` null if it had none."""

    def __init__(self, run_dir):
        self.run_dir = Path(run_dir)

    def on_finish(self, trainer, metrics, timing) -> None:
        atomic_write_text(self.run_dir / "metrics.json", json.dumps(metrics, indent=2, allow_nan=False) + "\n")
        if timing is None and not (self.run_dir / "timing.json").is_file():
            timing = {"wall_s": None, "updates": 0, "resumed_from": trainer.update,
                      "note": "the run had finished training when it was resumed; its wall time is unknown"}
        if timing is not None:
            atomic_write_text(self.run_dir / "timing.json", json.dumps(timing, indent=2) + "\n")


def run_callbacks(run_dir, checkpoint_every: int = 0) -> list[Callback]:
    """The writers of a run directory, in the order they must run: log, checkpoints, metrics."""
    logger = CSVLogger(run_dir)
    return [logger, Checkpointer(run_dir, checkpoint_every, logger), MetricsWriter(run_dir)]


def build_run(cfg, run_dir, progress: bool = False, callbacks=(), tasks=None, desc: str | None = None):
    """:func:`mesu_snn.build.build_trainer` with the writers of ``run_dir`` attached (log,
    checkpoints every ``cfg.schedule.checkpoint_every`` updates, metrics), after ``callbacks``."""
    from ..build import build_trainer
    return build_trainer(cfg, progress=progress, tasks=tasks, desc=desc,
                         callbacks=[*callbacks, *run_callbacks(run_dir, cfg.schedule.checkpoint_every)])
