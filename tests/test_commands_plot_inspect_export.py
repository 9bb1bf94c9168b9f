"""``mesu-snn plot / inspect / export`` on run directories built here in the documented layout
(mesu_snn/run_dir.py), with real damaged files for the error paths."""
from __future__ import annotations

import json

import h5py
import nir
import numpy as np
import pytest
import torch

import mesu_snn as ms
from mesu_snn.runs.checkpoint import save_checkpoint
from mesu_snn.cli import main
from mesu_snn.export import from_nir
from mesu_snn.observe.compare import importance_report
from mesu_snn.runs.recorder import SigmaRecorder
from mesu_snn.runs.layout import load_run_model, save_importance


def _make_run(d, rule="mesu", tasks=3, seed=0, importance=True):
    """A small run directory: config, metrics, log, checkpoint, σ trace, importance."""
    torch.manual_seed(seed)
    d.mkdir()
    (d / ".mesu-run").write_text("mesu-snn run directory\n")
    (d / "config.toml").write_text(f'seed = {seed}\n[model]\nkind = "mlp"\nhidden = [12]\nbeta = 0.85\n'
                                   f'[rule]\nname = "{rule}"\nmemory = 200\nsigma_prior = 0.1\n')
    net = ms.SpikingMLP([10, 12, 3], beta=0.85)
    opt = ms.MESU(net, memory=200, sigma_prior=0.1) if rule == "mesu" else ms.BGD(net)
    rec = SigmaRecorder(d / "sigma_trace.h5", every=2, n_tracked=4)
    rec.on_start(net, opt, {"rule": rule})
    u, rows = 0, ["update,task,loss"]
    for t in range(tasks):
        for _ in range(4):
            x, y = torch.rand(5, 6, 10) * 2, torch.randint(0, 3, (6,))
            loss = ms.nll_loss(net(x, samples=2), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            u += 1
            rec.on_update(u, net, opt)
            rows.append(f"{u},{t},{loss.item():.4f}")
        rec.on_task_end(t, net, opt)
    rec.on_end(net, opt)
    R = [[0.9 if j <= i else None for j in range(tasks)] for i in range(tasks)]
    R[-1][0] = 0.5 if rule == "mesu" else 0.3
    (d / "metrics.json").write_text(json.dumps({"rule": rule, "accuracy_matrix": R, "average_accuracy": 0.77}))
    (d / "log.csv").write_text("\n".join(rows) + "\n")
    (d / "checkpoints").mkdir()
    save_checkpoint(d / "checkpoints" / "last.pt", {"model": net.state_dict(), "model_spec": ms.models.model_spec(net),
                                                    "position": u})
    if not importance:
        return net
    x, y = torch.rand(5, 8, 10) * 2, torch.randint(0, 3, (8,))
    rep = importance_report(net, x, y, rule=rule, sigma_prior=0.1, memory=200)
    save_importance(d / "importance.npz", rep["hessian"], rep["measures"], rep["sigma"], method=rep["method"])
    return net


def _err(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mesu-snn: error:")
    return err[0]


def test_checkpoint_model_is_rebuilt_exactly(tmp_path):
    net = _make_run(tmp_path / "run", importance=False)
    back = load_run_model(tmp_path / "run")
    assert type(back) is ms.SpikingMLP and back.neurons[0].params.beta == net.neurons[0].params.beta
    x = torch.rand(5, 4, 10)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert torch.equal(net(x, samples=3, generator=g1), back(x, samples=3, generator=g2))


def test_plot_writes_every_figure_and_refuses_to_overwrite(tmp_path, capsys):
    _make_run(tmp_path / "mesu")
    _make_run(tmp_path / "bgd", rule="bgd", seed=1, importance=False)
    assert main(["plot", str(tmp_path / "mesu"), str(tmp_path / "bgd")]) == 0
    out = capsys.readouterr().out
    names = ["accuracy_matrix.png", "task_accuracy.png", "learning_accuracy.png", "sigma_histograms.png",
             "sigma_vs_absmu.png", "precision_vs_hessian.png", "importance_vs_hessian.png",
             "learning_accuracy_comparison.png", "sigma_over_updates.png", "plasticity_and_sigma.png"]
    for n in names:
        p = tmp_path / "mesu" / n
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000, n
        assert f"wrote {p}" in out
    assert not list((tmp_path / "mesu").glob("*.tmp"))
    (tmp_path / "mesu" / "accuracy_matrix.png").write_bytes(b"mine")
    assert main(["plot", str(tmp_path / "mesu")]) == 0
    assert "kept" in capsys.readouterr().out
    assert (tmp_path / "mesu" / "accuracy_matrix.png").read_bytes() == b"mine"        # never overwritten
    assert main(["plot", str(tmp_path / "mesu"), "--force"]) == 0
    assert (tmp_path / "mesu" / "accuracy_matrix.png").read_bytes()[:4] == b"\x89PNG"


def test_plot_with_only_metrics(tmp_path, capsys):
    d = tmp_path / "r"
    d.mkdir()
    (d / "metrics.json").write_text(json.dumps({"rule": "mesu", "accuracy_matrix": [[0.9, None], [0.7, 0.8]]}))
    assert main(["plot", str(d), "--out", str(tmp_path / "figs")]) == 0
    out = capsys.readouterr().out
    assert "skipped sigma_histograms.png" in out and (tmp_path / "figs" / "learning_accuracy.png").exists()
    assert not (d / "learning_accuracy.png").exists()
    (d / "metrics.json").write_text("{not json")
    assert main(["plot", str(d), "--force"]) == 1
    assert "metrics.json: not valid JSON" in _err(capsys)


def test_inspect_every_file_kind(tmp_path, capsys):
    _make_run(tmp_path / "run")
    r = tmp_path / "run"
    assert main(["export", str(r)]) == 0
    capsys.readouterr()
    expect = {"sigma_trace.h5": "σ trace", "model.nir": "NIR graph", "metrics.json": "average_accuracy",
              "config.toml": "TOML", "log.csv": "12 rows", "checkpoints/last.pt": "Bayesian layers",
              "importance.npz": "Spearman"}
    for name, word in expect.items():
        assert main(["inspect", str(r / name)]) == 0
        out = capsys.readouterr().out
        assert word in out, (name, out)
    assert main(["inspect", str(r)]) == 0
    assert "cannot summarise" not in capsys.readouterr().out


def test_inspect_damaged_and_foreign_files(tmp_path, capsys):
    _make_run(tmp_path / "run", importance=False)
    data = (tmp_path / "run" / "sigma_trace.h5").read_bytes()
    (tmp_path / "trunc.h5").write_bytes(data[: len(data) // 2])
    assert main(["inspect", str(tmp_path / "trunc.h5")]) == 1
    assert "trunc.h5" in _err(capsys)
    (tmp_path / "garbage.nir").write_bytes(b"\x00" * 100)
    assert main(["inspect", str(tmp_path / "garbage.nir")]) == 1
    assert "garbage.nir: not an HDF5 file" in _err(capsys)
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["data"] = np.zeros(3)
    assert main(["inspect", str(tmp_path / "other.h5")]) == 1
    assert "other.h5: HDF5 file that is neither" in _err(capsys)
    (tmp_path / "x.bin").write_bytes(b"abc")
    assert main(["inspect", str(tmp_path / "x.bin")]) == 1
    assert "x.bin: not a file type" in _err(capsys)
    (tmp_path / "bad.pt").write_bytes(b"PK\x03\x04broken")
    assert main(["inspect", str(tmp_path / "bad.pt")]) == 1
    assert "bad.pt: not a readable mesu_snn checkpoint" in _err(capsys)


def test_export_quantised_pruned_sampled(tmp_path, capsys):
    net = _make_run(tmp_path / "run", importance=False)
    r = tmp_path / "run"
    assert main(["export", str(r), "--format", "nir", "--bits", "8", "--prune-snr", "0.5", "--samples", "2"]) == 0
    out = capsys.readouterr().out
    assert "pruned" in out and "8-bit" in out
    g = nir.read(r / "model.nir", type_check=True)
    aff = [n for n in g.nodes.values() if isinstance(n, nir.Affine)]
    for n in aff:
        q = np.asarray(n.metadata["weight_int"])
        assert np.abs(q).max() <= 127
        np.testing.assert_allclose(n.weight, q * float(n.metadata["weight_scale"]), atol=1e-6)
    w = aff[0].weight if aff[0].weight.shape == (12, 10) else aff[1].weight
    snr = (net.layers[0].weight_mu.abs() / net.layers[0].weight_sigma).detach().numpy()
    assert np.all(w[snr < 0.5] == 0) and float(g.metadata["pruned_fraction"]) == pytest.approx((snr < 0.5).mean(), abs=0.2)
    s0, s1 = from_nir(r / "model_sample0.nir"), from_nir(r / "model_sample1.nir")
    assert not torch.equal(s0.layers[0].weight_mu, s1.layers[0].weight_mu)
    before = (r / "model.nir").read_bytes()
    assert main(["export", str(r), "--bits", "4"]) == 1
    assert "model.nir already exists" in _err(capsys)
    assert (r / "model.nir").read_bytes() == before
    assert main(["export", str(r), "--bits", "4", "--force"]) == 0
    capsys.readouterr()
    assert main(["export", str(tmp_path / "nope")]) == 1
    assert "nope" in _err(capsys)
    (r / "checkpoints" / "last.pt").write_bytes(b"truncated")
    assert main(["export", str(r), "--out", str(tmp_path / "m.nir")]) == 1
    assert "last.pt: not a readable mesu_snn checkpoint" in _err(capsys)


def test_on_a_real_trainer_run(tmp_path, capsys):
    """The trainer's own run directory (mesu_snn.build/trainer), with SigmaRecorder attached as
    a callback: plot, inspect and export read it; the rebuilt model equals the trained one."""
    pytest.importorskip("mesu_snn.build")
    from mesu_snn.runs import build_run
    from mesu_snn.config import dump_toml, parse_config
    from mesu_snn.runs.layout import create_run_dir
    cfg = parse_config({"seed": 0, "data": {"dataset": "digits", "train_per_task": 64, "test_per_task": 40},
                        "stream": {"kind": "permuted", "n_tasks": 2, "batch_size": 16},
                        "encoder": {"kind": "current", "num_steps": 4}, "model": {"hidden": [8], "beta": 0.8},
                        "rule": {"name": "mesu", "memory": 500},
                        "schedule": {"train_samples": 2, "eval_samples": 2, "checkpoint_every": 0, "ood": False}})
    run = create_run_dir(tmp_path / "run")
    (run / "config.toml").write_text(dump_toml(cfg))                 # as `mesu-snn train` writes it
    rec = SigmaRecorder(run / "sigma_trace.h5", every=2, n_tracked=8)
    trainer = build_run(cfg, run, callbacks=[rec])
    trainer.fit()
    assert (run / "sigma_trace.h5").exists() and (run / "checkpoints" / "last.pt").exists()
    model = load_run_model(run)
    x = torch.rand(4, 3, 64)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    assert torch.equal(model(x, samples=2, generator=g1), trainer.model(x, samples=2, generator=g2))
    assert main(["plot", str(run), "--importance", "24"]) == 0
    out = capsys.readouterr().out
    assert f"wrote {run / 'sigma_histograms.png'}" in out and "Spearman" in out
    assert f"wrote {run / 'precision_vs_hessian.png'}" in out
    assert main(["inspect", str(run / "sigma_trace.h5")]) == 0
    assert "task-end snapshots: [0, 1]" in capsys.readouterr().out
    assert main(["export", str(run), "--bits", "8", "--prune-snr", "0.5", "--samples", "1", "--evaluate"]) == 0
    out = capsys.readouterr().out
    assert "before" in out and "realisation 0" in out and (run / "pruning_curve.png").exists()
    meta = nir.read(run / "model.nir", type_check=True).metadata
    assert meta["quant_bits"] == 8 and 0 <= float(meta["accuracy_exported"]) <= 1


def test_small_things_users_meet(tmp_path, capsys):
    """--help has no raw markup; plot/export files get the same mode as train's; the demo's
    overwrite message does not offer a --resume it lacks; hints name commands, not internals."""
    import os
    import stat
    for cmd in ("demo", "train", "plot", "inspect", "export"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        assert "``" not in capsys.readouterr().out
    r = tmp_path / "run"
    _make_run(r, importance=False)
    assert main(["export", str(r)]) == 0
    capsys.readouterr()
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((r / "model.nir").stat().st_mode) == 0o666 & ~mask
    assert main(["plot", str(r)]) == 0
    out = capsys.readouterr().out
    assert "--importance N" in out and "save_importance" not in out
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_text("x")
    assert main(["demo", "--out", str(tmp_path / "d")]) == 1
    err = capsys.readouterr().err
    assert "--force" in err and "--resume" not in err


def test_sigma_figures_per_layer_on_fitting_bins():
    """σ histograms: one panel per weight layer, bins spanning that layer's own range (not a fixed
    1e-6…10 grid); σ over updates: one panel per layer with the median and the task ends."""
    from mesu_snn.runs import plots
    rng = np.random.default_rng(0)
    snaps = {t: {"layers.0.weight": {"mu": rng.normal(size=500), "sigma": rng.uniform(0.03, 0.07, 500) / (t + 1)},
                 "layers.1.weight": {"mu": rng.normal(size=50), "sigma": rng.uniform(1e-3, 2e-3, 50)},
                 "layers.1.bias": {"mu": rng.normal(size=5), "sigma": rng.uniform(1e-3, 2e-3, 5)}} for t in range(3)}
    fig = plots.sigma_histograms(snaps)
    axes = [a for a in fig.axes if a.get_visible()]
    assert [a.get_title().split(" ")[0] for a in axes] == ["layers.0.weight", "layers.1.weight"]
    lo, hi = axes[1].get_xlim()
    assert 5e-4 < lo and hi < 5e-3                      # the second layer's own range
    trace = {"attrs": {"quantiles": [0, .05, .25, .5, .75, .95, 1]}, "summary_updates": np.arange(0, 40, 10),
             "tracked_updates": np.arange(40), "layers": {
                 n: {"sigma_quantiles": np.sort(rng.uniform(0.01, 0.1, (4, 7)), 1), "sigma_mean": np.full(4, 0.05),
                     "tracked_sigma": rng.uniform(0.01, 0.1, (40, 3))} for n in ("layers.0.weight", "layers.1.weight")}}
    fig = plots.sigma_over_updates(trace, [20, 39])
    assert len([a for a in fig.axes if a.get_visible()]) == 2
    assert sum(1 for ln in fig.axes[0].lines if ln.get_linestyle() == ":") == 2     # task ends


def test_export_scores_the_graph_as_nir_runs_it(tmp_path, capsys):
    """`export --evaluate` reports the exported graph's accuracy under NIR's semantics next to
    mesu_snn's own; a network NIR cannot express gets a one-line warning per problem."""
    from mesu_snn.config import dump_toml, parse_config
    from mesu_snn.export.nir_export import SpikeCountReadout, from_nir, nir_incompatibilities
    from mesu_snn.runs import build_run, create_run_dir
    cfg = parse_config({"seed": 0, "data": {"dataset": "digits", "train_per_task": 64, "test_per_task": 40},
                        "stream": {"kind": "permuted", "n_tasks": 2, "batch_size": 16},
                        "encoder": {"kind": "current", "num_steps": 4}, "model": {"hidden": [8]},
                        "rule": {"name": "mesu", "memory": 500}, "schedule": {"train_samples": 2, "eval_samples": 2}})
    run = create_run_dir(tmp_path / "run")
    (run / "config.toml").write_text(dump_toml(cfg))
    build_run(cfg, run).fit()
    assert main(["export", str(run), "--evaluate"]) == 0
    cap = capsys.readouterr()
    assert cap.err.count("warning: NIR cannot express") == 2          # subtract/delayed reset; membrane readout
    assert "reset='zero', reset_delay=False" in cap.err and "readout='count'" in cap.err
    assert "run as NIR defines it" in cap.out and "differs from mesu_snn's model" in cap.out
    # an exportable network: nothing to warn about, and NIR semantics reproduce its outputs exactly
    torch.manual_seed(0)
    net = ms.SpikingMLP([20, 16, 5], beta=0.85, reset="zero", readout="count")
    for lif in net.neurons:
        lif.reset_delay = False
    assert nir_incompatibilities(net) == []
    ms.set_mode(net, "mean")
    ms.to_nir(net, tmp_path / "ok.nir")
    g = SpikeCountReadout(from_nir(tmp_path / "ok.nir", semantics="nir"))
    ms.set_mode(g, "mean")
    x = torch.rand(30, 4, 20) * 1.5
    assert torch.equal(net(x), g(x))
    with pytest.raises(ValueError, match="semantics"):
        from_nir(tmp_path / "ok.nir", semantics="bogus")
