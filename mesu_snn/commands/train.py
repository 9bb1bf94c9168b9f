"""``mesu-snn train CONFIG.toml [--out DIR] [--resume] [--force]``: one continual-learning run.

The run directory (default ``runs/<config name>``) gets ``config.toml``, ``log.csv``,
``metrics.json``, plots and ``checkpoints/last.pt`` (atomic, every ``schedule.checkpoint_every``
updates). An existing run directory is never overwritten without ``--force``. ``--resume``
continues a run killed at any moment (also before its first checkpoint, or during its final
writes) from its last checkpoint and ends with exactly the μ, σ, metrics, log and σ trace of an
uninterrupted run (on CPU); it first deletes the temporary files a killed writer left. The
config must be the one the run was started with. ``--resume`` on a finished run changes nothing: it
says so and exits. A full disk is one error naming the file.
A run that diverges (see :class:`mesu_snn.Trainer`) writes its metrics with ``"diverged": true``
and the reason, keeps its last good checkpoint, and exits with one error line (status 1).
"""
from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("train", help="train one rule on a task stream described by a TOML config",
                       description=__doc__.split("\n\n")[0].replace("``", ""))
    p.add_argument("config", help="TOML run configuration (see mesu_snn/config.py or experiments/configs/)")
    p.add_argument("--out", help="run directory (default: runs/<config file name>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--force", action="store_true", help="overwrite an existing run directory")
    p.add_argument("--data-root", help="dataset folder (overrides data.root and $MESU_SNN_DATA)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--sigma-trace", type=int, metavar="EVERY", default=None,
                   help="record σ/μ traces to RUN_DIR/sigma_trace.h5 every EVERY updates (SigmaRecorder)")
    p.set_defaults(func=run)


def _diff(a: dict, b: dict, prefix: str = "") -> str | None:
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            d = _diff(va, vb, f"{prefix}{k}.")
            if d:
                return d
        elif va != vb:
            return f"{prefix}{k} ({vb!r} in the run directory, {va!r} now)"
    return None


def run(args) -> int:
    import torch

    from ..build import build_tasks
    from ..runs import build_run
    from ..errors import CLIError
    from ..config import dump_toml, load_config
    from ..runs.plots import write_run_plots
    from ..runs.report import format_table
    from ..runs.atomic import atomic_write_text, remove_stale_temps
    from ..runs.layout import CHECKPOINT, TRACE_NAME, create_run_dir, run_is_finished

    cfg = load_config(args.config)
    if args.data_root:
        cfg.data.root = args.data_root
    out = Path(args.out) if args.out else Path("runs") / Path(args.config).stem
    if args.resume and args.force:
        raise CLIError("--resume and --force exclude each other")
    if args.resume:
        create_run_dir(out, resume=True)
        saved = out / "config.toml"
        if saved.is_file():
            old = load_config(saved)
            d = _diff(cfg.to_dict(), old.to_dict())
            if d:
                raise CLIError(f"cannot resume {out}: the config differs from the run's config.toml in {d}")
        elif (out / CHECKPOINT).exists():
            raise CLIError(f"cannot resume: {saved} is missing")
        # else: killed before config.toml was written, so before any training: written below
        if run_is_finished(out):                   # nothing to continue: leave its files as they are
            print(f"run {out} is finished (metrics.json, figures and checkpoint written); nothing to resume. "
                  f"Pass --force instead of --resume to train it again.")
            return 0
    if cfg.schedule.threads:
        torch.set_num_threads(cfg.schedule.threads)
    tasks = build_tasks(cfg)                      # missing/corrupt data fails here, before any output
    if not args.resume:
        create_run_dir(out, force=args.force)
        atomic_write_text(out / "config.toml", dump_toml(cfg))
    else:                                          # what a killed writer left: temp files
        remove_stale_temps(out, out / "checkpoints", out / (TRACE_NAME + ".partial"))
        if not (out / "config.toml").is_file():
            atomic_write_text(out / "config.toml", dump_toml(cfg))
    callbacks = []
    if args.sigma_trace is not None:
        from ..runs import SigmaRecorder
        callbacks.append(SigmaRecorder(out / TRACE_NAME, every=args.sigma_trace, seed=cfg.seed, force=args.force,
                                       resume=args.resume))
    trainer = build_run(cfg, out, progress=not args.quiet, tasks=tasks, desc=cfg.rule.name,
                            callbacks=callbacks)
    metrics = trainer.fit(resume=args.resume)
    write_run_plots(out, metrics)
    print(format_table({cfg.rule.name: metrics}))
    print(f"run directory: {out}")
    if metrics.get("diverged"):
        from ..errors import DivergedError
        from ..runs.checkpoint import load_checkpoint
        kept = out / CHECKPOINT
        at = f" (update {load_checkpoint(kept)['position']})" if kept.is_file() else ""
        raise DivergedError(f"the run diverged at update {metrics.get('diverged_at_update')}: "
                            f"{metrics.get('diverged_reason')}; {out / 'metrics.json'} says so, and "
                            + (f"{kept} is the last good checkpoint{at}" if kept.is_file() else "no checkpoint was kept")
                            + " (lower the learning rates, raise rule.memory, or check the data)")
    return 0
