"""``mesu-snn export RUN_DIR --format nir [--bits 8] [--prune-snr X] [--samples K]``: the
run's trained network as NIR (mean weights μ, σ in metadata; see
:mod:`mesu_snn.export.nir_export` for the time convention), optionally pruned by |μ|/σ < X,
quantised to n-bit integers per layer (integers and scale in the node metadata), and/or as K
sampled weight realisations (``model_sample<i>.nir``) for stochastic synapses.
"""
from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("export", help="export a run's network for neuromorphic toolchains (NIR)")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--format", default="nir", choices=["nir"], help="output format (NIR)")
    p.add_argument("--bits", type=int, help="quantise μ to signed n-bit integers with a per-layer scale")
    p.add_argument("--prune-snr", type=float, dest="prune_snr", help="set μ = 0 where |μ|/σ < X")
    p.add_argument("--samples", type=int, help="also write K sampled weight realisations w = μ + σε")
    p.add_argument("--seed", type=int, default=0, help="seed of the realisations")
    p.add_argument("--dt", type=float, default=None, help="time step in seconds (default 1e-4, snnTorch's)")
    p.add_argument("--out", help="output file (default RUN_DIR/model.nir)")
    p.add_argument("--force", action="store_true", help="overwrite existing outputs")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..export.nir_export import DEFAULT_DT, to_nir
    from ..export.prune import prune_by_snr
    from ..export.quantize import quantize_model
    from ..export.realisations import sample_realisations
    from ..observe.atomic import check_writable
    from ..observe.rundir import load_run_model

    if args.bits is not None and not 2 <= args.bits <= 32:
        raise ValueError(f"--bits must lie in [2, 32], got {args.bits}")
    if args.prune_snr is not None and args.prune_snr < 0:
        raise ValueError(f"--prune-snr must be >= 0, got {args.prune_snr}")
    if args.samples is not None and args.samples < 1:
        raise ValueError(f"--samples must be >= 1, got {args.samples}")
    dt = DEFAULT_DT if args.dt is None else args.dt
    run_dir = Path(args.run_dir)
    out = Path(args.out) if args.out else run_dir / "model.nir"
    outs = [out] + [out.with_name(f"{out.stem}_sample{i}{out.suffix}") for i in range(args.samples or 0)]
    for o in outs:                                   # refuse before writing anything
        check_writable(o, args.force)
    model = load_run_model(run_dir)
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
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        print(f"wrote {to_nir(model, out, dt=dt, force=args.force, layer_metadata=layer_meta, metadata=meta)}")
        if args.samples:
            for i, m in enumerate(sample_realisations(base, args.samples, seed=args.seed)):
                if args.bits is not None:
                    m, _ = quantize_model(m, args.bits)
                path = to_nir(m, outs[i + 1], dt=dt, force=args.force,
                              metadata=dict(meta, realisation=i, realisation_seed=args.seed))
                print(f"wrote {path}")
    return 0
