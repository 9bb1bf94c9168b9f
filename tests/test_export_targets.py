"""Chip profiles (mesu_snn/export/targets.py): every number cited, every violation reported in
one error before anything is written, and `mesu-snn export --target` / `--format netx`."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

import mesu_snn as ms
from mesu_snn.cli import main
from mesu_snn.errors import ChipConstraintError
from mesu_snn.export.targets import TARGETS, check_target, get_target, target_violations
from test_commands_plot_inspect_export import _make_run


def _chip_mlp(sizes, beta, reset="zero"):
    net = ms.SpikingMLP(list(sizes), beta=beta, reset=reset, readout="count")
    for lif in net.neurons:
        lif.reset_delay = False
    return net


def test_every_profile_number_has_a_source():
    numeric = ("weight_bits", "max_inputs", "max_outputs", "max_hidden", "max_neurons", "max_synapses", "max_layers",
               "core_memory")
    for t in TARGETS.values():
        for key in numeric:
            if getattr(t, key):
                assert key in t.sources and len(t.sources[key]) > 20, (t.key, key)
        assert "beta" in t.sources and "resets" in t.sources
    with pytest.raises(ValueError, match="SpiNNaker 2 has no profile"):
        get_target("spinnaker2")
    assert get_target("Loihi") is TARGETS["loihi2"] and get_target("dynap-cnn") is TARGETS["speck"]


def test_networks_that_fit_each_target(tmp_path):
    """…and the target's NIR conventions write a file that runs as the network (NIR semantics;
    Speck: the nodes sinabs reads, its subtractive IF run in test_export_nir.py)."""
    import nir
    loihi = _chip_mlp([784, 256, 10], beta=0.9)
    assert target_violations(loihi, "loihi2") == []
    path = ms.to_nir(loihi, tmp_path / "loihi.nir")
    back = ms.from_nir(path, semantics="nir").mean_mode()
    ms.set_mode(loihi, "mean")
    x = torch.rand(8, 2, 784) * 2
    with torch.no_grad():
        assert torch.equal(ms.export.spiking_forward(loihi, x), ms.export.spiking_forward(back, x))
    # Xylo subtracts θ at a spike (xylosim's neuron; its spikes are checked in test_export_nir.py's XyloSim
    # test): a zero-reset net is refused, a subtract-reset one fits and is written as a legacy file
    xylo = _chip_mlp([16, 64, 8], beta=0.875, reset="subtract")    # β = 1 − 2⁻³
    assert target_violations(xylo, "xylo-audio") == []
    zero_xylo = target_violations(_chip_mlp([16, 64, 8], beta=0.875), "xylo-audio")
    assert len(zero_xylo) == 2 and all("reset='zero'" in m and "subtracting" in m for m in zero_xylo), zero_xylo
    with pytest.warns(UserWarning, match="reset"):
        path = ms.to_nir(xylo, tmp_path / "xylo.nir", **TARGETS["xylo-audio"].nir_options)
    assert sorted(type(n).__name__ for n in nir.read(path).nodes.values()) == ["Affine", "Affine", "Input", "LIF",
                                                                               "LIF", "Output"]
    conv = ms.SpikingConvNet((2, 34, 34), (2, 16, 32), 10, beta=1.0, reset="subtract", readout="count",
                             reset_delay=False)
    assert target_violations(conv, "speck") == []
    with pytest.warns(UserWarning, match="reset"):              # NIR's IF resets to v_reset; sinabs subtracts
        path = ms.to_nir(conv, tmp_path / "speck.nir", **TARGETS["speck"].nir_options)
    kinds = sorted(type(n).__name__ for n in nir.read(path).nodes.values())
    assert kinds == ["Affine", "Conv2d", "Conv2d", "Flatten", "IF", "IF", "IF", "Input", "Output", "SumPool2d",
                     "SumPool2d"]
    # what sinabs' NIR route cannot run: a reset to 0 (it subtracts), a bias-free dense layer (NIR Linear)
    zero = ms.SpikingConvNet((2, 8, 8), (2, 4), 3, beta=1.0, reset="zero", readout="count", reset_delay=False)
    assert any("reset='subtract'" in m for m in target_violations(zero, "speck"))
    no_bias = ms.SpikingMLP([16, 8, 4], beta=1.0, reset="subtract", readout="count", bias=False)
    for lif in no_bias.neurons:
        lif.reset_delay = False
    v = target_violations(no_bias, "speck")
    assert len(v) == 2 and all("bias=True" in m for m in v)


def test_every_violation_in_one_report():
    net = ms.SpikingMLP([784, 1200, 10], beta=0.9)          # library defaults: nothing fits Xylo
    with pytest.raises(ChipConstraintError) as e:
        check_target(net, "xylo-audio", bits=12)
    v = e.value.violations
    for needle in ("--bits 12", "1 − 2⁻ⁿ", "nearest is 0.875", "reset_delay=False", "readout", "784 input channels",
                   "10 output neurons", "1200 hidden neurons"):
        assert any(needle in m for m in v), needle
    assert str(e.value).count("\n  - ") == len(v)
    slow = target_violations(_chip_mlp([16, 8, 8], beta=1 - 2.0 ** -16, reset="subtract"), "xylo-audio")   # bit shift 16 > 15
    assert len(slow) == 2 and all("n > 15" in m for m in slow)
    assert target_violations(_chip_mlp([16, 8, 8], beta=1 - 2.0 ** -15, reset="subtract"), "xylo-audio") == []
    assert target_violations(_chip_mlp([17, 8, 8], beta=0.5, reset="subtract"), "xylo-audio") == ["17 input channels > 16 (SynSense "
                                                                                  "Xylo Audio 2 (SYNS61201))"]
    speck = target_violations(ms.SpikingMLP([784, 512, 10], beta=0.9), "speck")
    assert any("integrate-and-fire" in m for m in speck) and any("fit no core" in m for m in speck)
    conv = ms.SpikingConvNet((2, 6, 6), (2, 4, 4), 3, reset="zero", readout="count")   # 6 → 3 → pool of 3
    loihi = target_violations(conv, "loihi2")
    assert any("multiples of 2" in m for m in loihi) and any("reset_delay=False" in m for m in loihi)
    assert not any("multiples" in m for m in target_violations(ms.SpikingConvNet((2, 8, 8), (2, 4), 3), "loihi2"))
    tiny = _chip_mlp([4, 3], beta=0.5)
    with torch.no_grad():
        tiny.layers[0].weight_mu.fill_(1e-7)
    assert any("vThMant" in m for m in target_violations(tiny, "loihi2"))
    per_neuron = _chip_mlp([4, 3], beta=0.5)
    per_neuron.neurons[0] = ms.LIF(beta=torch.tensor([0.5, 0.6, 0.7]), reset="zero", reset_delay=False)
    assert any("per-neuron β" in m for m in target_violations(per_neuron, "loihi2"))


def test_export_target_refuses_before_writing_and_netx_writes(tmp_path, capsys):
    run = tmp_path / "run"
    _make_run(run, importance=False)                         # SpikingMLP [10, 12, 3], β 0.85, subtract reset
    assert main(["export", str(run), "--target", "loihi2"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("mesu-snn: error:") and "reset_delay=False" in err and "readout" in err
    assert not (run / "model.net").exists() and not (run / "model.nir").exists()
    assert main(["export", str(run), "--target", "xylo-audio"]) == 1
    assert "1 − 2⁻ⁿ" in capsys.readouterr().err and not (run / "model.nir").exists()
    assert main(["export", str(run), "--target", "loihi2", "--format", "nir"]) == 1
    assert "takes --format netx" in capsys.readouterr().err
    # without a target: netx with the chip's network, a warning per difference, σ and realisations inside
    assert main(["export", str(run), "--format", "netx", "--samples", "2"]) == 0
    out = capsys.readouterr()
    assert "Loihi runs" in out.err and "wrote" in out.out
    with h5py.File(run / "model.net", "r") as f:
        assert sorted(f["layer"].keys()) == ["0", "1"] and f["layer/0/weight"].shape == (12, 10)
        assert sorted(f["mesu_snn/realisations"].keys()) == ["0", "1"]
        assert np.abs(f["layer/1/weight"][()]).max() == 127
    assert main(["export", str(run), "--format", "netx"]) == 1              # exists: --force
    assert main(["export", str(run), "--format", "netx", "--bits", "12"]) == 1


def test_export_netx_evaluate_scores_the_chip_network(tmp_path, capsys):
    """`export --format netx --evaluate` scores the network as Loihi runs it (chip grid, reset
    to 0, one step of delay per layer) next to mesu_snn's model, on the run's test sets."""
    from mesu_snn.config import dump_toml, parse_config
    from mesu_snn.runs import build_run, create_run_dir
    cfg = parse_config({"seed": 0, "data": {"dataset": "digits", "train_per_task": 64, "test_per_task": 40},
                        "stream": {"kind": "permuted", "n_tasks": 2, "batch_size": 16},
                        "encoder": {"kind": "current", "num_steps": 4},
                        "model": {"hidden": [8], "reset": "zero", "readout": "count"},
                        "rule": {"name": "mesu", "memory": 500}, "schedule": {"train_samples": 2, "eval_samples": 2}})
    run = create_run_dir(tmp_path / "run")
    (run / "config.toml").write_text(dump_toml(cfg))
    build_run(cfg, run).fit()
    assert main(["export", str(run), "--format", "netx", "--evaluate"]) == 0
    cap = capsys.readouterr()
    assert cap.err.count("warning: Loihi runs") == 2 and "reset_delay=True" in cap.err   # the config's delayed reset
    line = next(l for l in cap.out.splitlines() if "as Loihi runs it" in l)
    chip = float(line.split(",")[1].split()[0])
    assert 0.0 <= chip <= 1.0
    with h5py.File(run / "model.net", "r") as f:
        assert 0 <= float(f["mesu_snn"].attrs["accuracy_exported"]) <= 1
