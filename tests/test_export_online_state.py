"""Chip-ready HDF5 export of the online rule's state: schema, round trip, wiring, refusals."""
import json

import numpy as np
import pytest
import torch

import mesu_snn as ms
from mesu_snn.export.online_state import FORMAT, export_online_state, read_online_state

pytest.importorskip("h5py")


@pytest.mark.parametrize("feedback", ["symmetric", "random", "local"])
def test_export_round_trips_mu_sigma_decays_and_wiring(tmp_path, feedback):
    net = ms.SpikingMLP([12, 9, 7, 4], beta=0.85, threshold=0.6)
    rule = ms.make_rule("mesu_online", net, memory=500.0, feedback=feedback, feedback_seed=4)
    path = export_online_state(rule, tmp_path / "state.h5")
    st = read_online_state(path)
    a = st["attrs"]
    assert a["format"] == FORMAT and a["rule"] == "mesu_online" and a["feedback"] == feedback
    assert a["model_spec"]["sizes"] == [12, 9, 7, 4] and a["hyperparameters"]["memory"] == 500.0
    assert len(st["layers"]) == 3
    for i, (layer, entry) in enumerate(zip(net.layers, st["layers"])):
        assert np.array_equal(entry["weight_mu"], layer.weight_mu.detach().numpy())
        assert np.array_equal(entry["weight_sigma"], layer.weight_sigma.detach().numpy())
        assert np.array_equal(entry["bias_sigma"], layer.bias_sigma.detach().numpy())
        assert entry["attrs"]["presynaptic_decay"] == pytest.approx(0.85)
    hidden = st["layers"][:2]
    assert all(e["attrs"]["role"] == "hidden" and e["attrs"]["eligibility_decay"] == pytest.approx(0.85)
               for e in hidden)
    assert st["layers"][-1]["attrs"]["learning_signal"] == "output_error"
    if feedback == "symmetric":
        assert all("feedback" not in e and e["attrs"]["learning_signal"] == "weights_above" for e in hidden)
    else:
        for e, fb in zip(hidden, rule.engine.feedback_matrices):
            assert np.array_equal(e["feedback"], fb.numpy()) and e["feedback"].shape == (4, fb.shape[1])


def test_export_refuses_overwrite_and_non_online_rules(tmp_path):
    net = ms.SpikingMLP([6, 5, 3])
    rule = ms.make_rule("sgd_online", net)
    p = export_online_state(rule, tmp_path / "s.h5")
    with pytest.raises(FileExistsError):
        export_online_state(rule, p)
    export_online_state(rule, p, force=True)
    with pytest.raises(ValueError, match="online rule"):
        export_online_state(ms.make_rule("mesu", ms.SpikingMLP([6, 5, 3])), tmp_path / "t.h5")
    (tmp_path / "bad.h5").write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="bad.h5"):
        read_online_state(tmp_path / "bad.h5")


def test_export_writes_the_nir_graph_beside(tmp_path):
    pytest.importorskip("nir")
    net = ms.SpikingMLP([6, 5, 3])
    rule = ms.make_rule("mesu_online", net)
    export_online_state(rule, tmp_path / "s.h5", nir_path=tmp_path / "s.nir")
    back = ms.from_nir(tmp_path / "s.nir")
    assert torch.equal(back.layers[0].weight_mu, net.layers[0].weight_mu)


def test_fixed_point_state_exports_integers_and_steps(tmp_path):
    net = ms.SpikingMLP([6, 5, 3])
    rule = ms.make_rule("mesu_online", net, fixed_point_bits=8)
    st = read_online_state(export_online_state(rule, tmp_path / "fp.h5"))
    assert st["attrs"]["fixed_point_bits"] == 8
    for e in st["layers"]:
        k = e["weight_mu"].astype(np.float64) / e["attrs"]["weight_mu_step"]
        assert np.allclose(k, np.round(k), atol=1e-3) and np.abs(k).max() <= 127
        assert "bias_sigma_step" in e["attrs"]


def test_count_readout_per_neuron_beta_and_fixed_point_traces_are_exported(tmp_path):
    net = ms.SpikingMLP([12, 9, 4], beta=0.85, threshold=0.6, readout="count", reset="zero")
    net.neurons[0] = ms.LIF(beta=torch.linspace(0.5, 0.9, 9), threshold=0.6, reset="zero")
    rule = ms.make_rule("mesu_online", net, memory=500.0, trace_bits=8)
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(6, 1, 12, generator=g) < 0.4).float()
    rule.train_step(x, torch.tensor([1]), samples=2, generator=g)
    st = read_online_state(export_online_state(rule, tmp_path / "state.h5"))
    a = st["attrs"]
    assert a["readout"] == "count" and a["trace_bits"] == 8 and a["error_sent_down"] == "delta_times_psi_sum"
    assert "xtilde" in a["state_per_synapse"]
    hid, out = st["layers"]
    assert np.allclose(hid["presynaptic_decay"], np.linspace(0.5, 0.9, 9)) and "presynaptic_decay" not in hid["attrs"]
    assert hid["attrs"]["trace"] == "synaptic" and out["attrs"]["trace"] == "synaptic"      # zero reset
    assert out["attrs"]["reset"] == "zero" and out["attrs"]["eligibility_decay"] == 0.0
    for e, (xs, es) in zip((hid, out), rule.engine.trace_steps):
        assert e["attrs"]["trace_step"] == pytest.approx(xs) and e["attrs"]["eligibility_step"] == pytest.approx(es)
