"""``mesu-snn export RUN_DIR --format nir|netx [--bits 8] [--prune-snr X] [--samples K]``: the
run's trained network as NIR (mean weights μ, σ in metadata; see
:mod:`mesu_snn.export.nir_export` for the time convention), optionally pruned by |μ|/σ < X,
quantised to n-bit integers per layer (integers and scale in the node metadata), and/or as K
sampled weight realisations (``model_sample<i>.nir``) for stochastic synapses.

``--format netx`` writes Lava's netx HDF5 for Loihi 2 (:mod:`mesu_snn.export.netx`: the chip's
integer grid, ``--bits`` default 8; σ and the K realisations in the same file).
``--target NAME`` (:mod:`mesu_snn.export.targets`) checks the network against that chip's
constraints and reports every violation at once before anything is written; it also picks
the target's format and NIR conventions.
"""
from __future__ import annotations

import sys
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("export", help="export a run's network for neuromorphic toolchains (NIR)")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--format", default=None, choices=["nir", "netx"],
                   help="output format: NIR, or Lava netx HDF5 for Loihi 2 (default: the target's, else NIR)")
    p.add_argument("--target", default=None, help="check the network against a chip's constraints before writing "
                   "(loihi2, xylo-audio, speck, spinnaker2) and use its conventions")
    p.add_argument("--bits", type=int, help="quantise μ to signed n-bit integers with a per-layer scale")
    p.add_argument("--prune-snr", type=float, dest="prune_snr", help="set μ = 0 where |μ|/σ < X")
    p.add_argument("--samples", type=int, help="also write K sampled weight realisations w = μ + σε")
    p.add_argument("--seed", type=int, default=0, help="seed of the realisations")
    p.add_argument("--dt", type=float, default=None, help="time step in seconds (default 1e-4, snnTorch's)")
    p.add_argument("--evaluate", action="store_true",
                   help="rebuild the run's test sets from config.toml and report the mean network's accuracy "
                        "before/after quantisation and pruning, for each realisation, and (with --prune-snr) "
                        "write RUN_DIR/pruning_curve.png")
    p.add_argument("--out", help="output file (default RUN_DIR/model.nir, RUN_DIR/model.net for netx)")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p.set_defaults(func=run)


def run_evaluator(run_dir: Path):
    """``evaluate(model) -> mean test accuracy over the run's tasks`` for the w = μ network,
    built with the trainer's data pipeline from RUN_DIR/config.toml."""
    from ..build import build_evaluator, build_tasks
    from ..config import load_config
    from ..synapses import mode_set
    cfg_path = Path(run_dir) / "config.toml"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"--evaluate needs {cfg_path} to rebuild the test sets")
    cfg = load_config(cfg_path)
    tasks = build_tasks(cfg)                       # the data once, for every model evaluated

    def evaluate(model) -> float:
        ev = build_evaluator(cfg, model, tasks=tasks, samples=1)
        with mode_set(model, "mean"):
            acc = ev.evaluate(range(len(ev.tasks))).accuracy
        return sum(acc.values()) / len(acc)
    return evaluate


def run(args) -> int:
    from ..export.nir_export import DEFAULT_DT, to_nir
    from ..export.prune import prune_by_snr
    from ..export.quantize import quantize_model
    from ..export.realisations import sample_realisations
    from ..runs.atomic import check_writable, remove_stale_temps
    from ..runs.layout import load_run_model

    if args.bits is not None and not 2 <= args.bits <= 32:
        raise ValueError(f"--bits must lie in [2, 32], got {args.bits}")
    if args.prune_snr is not None and args.prune_snr < 0:
        raise ValueError(f"--prune-snr must be >= 0, got {args.prune_snr}")
    if args.samples is not None and args.samples < 1:
        raise ValueError(f"--samples must be >= 1, got {args.samples}")
    dt = DEFAULT_DT if args.dt is None else args.dt
    run_dir = Path(args.run_dir)
    target = None
    if args.target is not None:
        from ..export.targets import get_target
        target = get_target(args.target)
    fmt = args.format or (target.format if target is not None else "nir")
    if target is not None and fmt not in target.formats:
        raise ValueError(f"--target {target.key} takes --format {' or '.join(target.formats)}, not {fmt}")
    out = Path(args.out) if args.out else run_dir / ("model.net" if fmt == "netx" else "model.nir")
    outs = [out] + ([] if fmt == "netx" else
                    [out.with_name(f"{out.stem}_sample{i}{out.suffix}") for i in range(args.samples or 0)])
    for o in outs:                                   # refuse before writing anything
        check_writable(o, args.force)
    for o in outs:                                   # what an export killed before left of them
        remove_stale_temps(o.parent, target=o.name)
    model = load_run_model(run_dir)
    if target is not None:
        from ..export.targets import check_target
        check_target(model, target, bits=args.bits)      # ChipConstraintError listing every violation
        print(f"{target.name}: the network fits ({target.summary()})")
    if fmt == "netx":
        return _run_netx(args, run_dir, out, model, target)
    curve_png = run_dir / "pruning_curve.png"
    if args.evaluate and args.prune_snr is not None:
        check_writable(curve_png, args.force)
    evaluate = run_evaluator(run_dir) if args.evaluate else None
    original = model
    meta = {}
    if args.prune_snr is not None:
        model, frac = prune_by_snr(model, args.prune_snr)
        meta["pruned_fraction"] = frac
        meta["prune_snr"] = args.prune_snr
        print(f"pruned {100 * frac:.1f}% of the weights (|μ|/σ < {args.prune_snr:g})")
    base = model
    layer_meta = {}
    if args.bits is not None:
        model, rep = quantize_model(model, args.bits)
        for name, r in rep.items():
            layer, kind = name.rsplit(".", 1)
            d = layer_meta.setdefault(layer, {"quant_bits": args.bits})
            d[f"{kind}_int"] = r["int"].numpy()
            d[f"{kind}_scale"] = r["scale"]
        meta["quant_bits"] = args.bits
        worst = max(r["max_abs_error"] for r in rep.values())
        print(f"quantised μ to {args.bits}-bit integers (per-layer scale; max |error| {worst:.3g})")
    if evaluate is not None:
        before, after = evaluate(original), evaluate(model)
        meta.update(accuracy_float=before, accuracy_exported=after)
        print(f"mean-network test accuracy (average over tasks, mesu_snn's model): {before:.4f} before, {after:.4f} exported "
              f"({100 * (after - before):+.2f} points)")
        if args.prune_snr is not None:
            from ..export.prune import pruning_curve
            from ..runs.plots import pruning_curve_plot, save_figure
            rows = pruning_curve(original, evaluate)
            for r in rows:
                print(f"  pruned {100 * r['fraction']:5.1f}% (|μ|/σ < {r['threshold']:.3g}): accuracy {r['accuracy']:.4f}")
            print(f"wrote {save_figure(pruning_curve_plot(rows), curve_png, force=args.force)}")
    from ..export.nir_export import SpikeCountReadout, from_nir, nir_incompatibilities
    if target is not None:
        meta.update(target=target.key)
    nir_options = target.nir_options if target is not None else {}
    issues = nir_incompatibilities(model)
    for msg in issues:
        print(f"warning: NIR cannot express {msg}; third-party importers will not reproduce this network",
              file=sys.stderr)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)      # said above, in one line per problem
        print(f"wrote {to_nir(model, out, dt=dt, force=args.force, layer_metadata=layer_meta, metadata=meta, **nir_options)}")
        if evaluate is not None:
            graph_net = SpikeCountReadout(from_nir(out, semantics="nir"))
            as_loaded = evaluate(graph_net)
            print(f"the exported graph run as NIR defines it (reset to v_reset at the spike step, output spike "
                  f"counts; what snnTorch/Norse importers run): test accuracy {as_loaded:.4f}"
                  + (" (differs from mesu_snn's model: see the warning)" if issues else ""))
        if args.samples:
            for i, m in enumerate(sample_realisations(base, args.samples, seed=args.seed)):
                if args.bits is not None:
                    m, _ = quantize_model(m, args.bits)
                if evaluate is not None:
                    print(f"realisation {i}: mean test accuracy {evaluate(m):.4f}")
                path = to_nir(m, outs[i + 1], dt=dt, force=args.force,
                              metadata=dict(meta, realisation=i, realisation_seed=args.seed), **nir_options)
                print(f"wrote {path}")
    return 0


def _run_netx(args, run_dir: Path, out: Path, model, target) -> int:
    """``--format netx``: Lava's netx HDF5 on the chip's integer grid (bits default 8), σ and
    ``--samples`` realisations in the same file; ``--evaluate`` scores the chip's network."""
    import warnings

    from ..export.netx import ChipReadout, chip_float_model, loihi_layers, netx_incompatibilities, to_netx
    bits = 8 if args.bits is None else args.bits
    if not 2 <= bits <= 8:
        raise ValueError(f"--bits must lie in [2, 8] for netx (8-bit signed weight mantissas), got {bits}")
    evaluate = run_evaluator(run_dir) if args.evaluate else None
    original, meta = model, {}
    if args.prune_snr is not None:
        from ..export.prune import prune_by_snr
        model, frac = prune_by_snr(model, args.prune_snr)
        meta.update(pruned_fraction=frac, prune_snr=args.prune_snr)
        print(f"pruned {100 * frac:.1f}% of the weights (|μ|/σ < {args.prune_snr:g})")
    for msg in netx_incompatibilities(model, bits):
        print(f"warning: Loihi runs {msg}; the file holds the chip's network, not the trained one", file=sys.stderr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)      # said above, one line per problem
        layers = loihi_layers(model, bits)
        if evaluate is not None:
            before = evaluate(original)
            chip = evaluate(ChipReadout(chip_float_model(layers, tuple(layers[0].in_shape))))
            meta.update(accuracy_float=before, accuracy_exported=chip)
            print(f"mean-network test accuracy (average over tasks): {before:.4f} mesu_snn's model, {chip:.4f} the "
                  f"exported network as Loihi runs it ({bits}-bit grid, reset to 0, one step of delay per layer, "
                  "output spike counts)")
        if target is not None:
            meta.update(target=target.key)
        path = to_netx(model, out, bits=bits, realisations=args.samples or 0, seed=args.seed, force=args.force,
                       metadata=meta)
    print(f"wrote {path} (Lava netx: {len(layers)} CUBA layers, {bits}-bit weights"
          + (f", {args.samples} realisations" if args.samples else "") + ")")
    return 0
