"""experiments/plasticity_probe.py on a short real-MNIST run: it rebuilds the run's network from the
checkpoint (the trained network knows its last task, the initial one does not), measures activity and
plasticity on a new permutation without touching the loaded state, and skips what it already probed."""
import json
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "experiments"))
from test_experiments_paper_pmnist import _data_root  # noqa: E402


def test_probe_loads_the_checkpoint_and_measures_a_new_task(tmp_path, capsys):
    import paper_pmnist as pp
    import plasticity_probe as probe
    root = _data_root()
    run = tmp_path / "run.json"
    pp.main(["--rule", "mesu", "--model", "snn", "--estimator", "local", "--tasks", "2", "--train-per-task", "1500",
             "--test-per-task", "500", "--log-every", "0", "--checkpoint", "--data-root", root, "--out", str(run)])
    res, net, rule = probe.load(run)
    _, net0, _ = probe.load(run, initial=True)
    from mesu_snn.runs import load_checkpoint
    saved = load_checkpoint(run.with_suffix(".ckpt.pt"))["model"]
    assert saved.keys() == net.state_dict().keys()
    assert all(torch.equal(v, saved[k]) for k, v in net.state_dict().items())
    assert not all(torch.equal(v, saved[k]) for k, v in net0.state_dict().items())
    # the loaded network knows task 1 (its last), the initial one is at chance on it
    xtr, ytr, xte, yte, _ = pp.load_standardised(root)
    p1 = pp.permutations(2, 0)[1]
    enc = pp.Inputs(10)
    acc = lambda n: pp.evaluate(n, xte[:500], yte[:500], [p1], 10, "log_probs", encode=enc)[0]  # noqa: E731
    assert acc(net) > 0.6 and acc(net0) < 0.3 and abs(acc(net) - res["acc"][-1][-1]) < 0.05
    before = {k: v.clone() for k, v in net.state_dict().items()}
    out = tmp_path / "probe.json"
    probe.main([str(run), "--initial", "--probe-train", "300", "--probe-test", "300", "--data-root", root,
                "--reset-sigma", "layers.1.weight", "--out", str(out)])
    rows = json.loads(out.read_text())
    assert [(r["after_task"], r["variant"]) for r in rows] == [(-1, ""), (1, ""), (1, "layers.1.weight")]
    w0, w1, w1r = (r["weights"] for r in rows)
    sig = lambda w: (w["sigma_median"], w["precision_median"])  # noqa: E731
    assert sig(w1r["layers.1.weight"]) == sig(w0["layers.1.weight"])     # the readout's σ back to σ₀,
    assert w1r["layers.1.weight"]["mu_abs_mean"] == w1["layers.1.weight"]["mu_abs_mean"]   # its μ kept,
    assert w1r["layers.0.weight"] == w1["layers.0.weight"]               # the input layer as trained
    for r in rows:
        assert 0 < r["activity_new_task"]["noise_share"] < 1
        assert r["probe_acc"] > 0.3 and r["probe_train"] == 300            # 300 images learn a new task
        a = r["activity_new_task"]
        assert 0 <= a["silent"] <= 1 and 0 < a["mean_rate"] < 1
        assert set(r["weights"]) == {"layers.0.weight", "layers.1.weight"}
    printed = capsys.readouterr().out
    assert "| snn mesu (memory=300000), H = [50] | 1 |" in printed and "σ of layers.1.weight reset to σ₀" in printed
    with pytest.raises(SystemExit, match="--reset-sigma layers.9.weight: the network has no such layer"):
        probe.main([str(run), "--reset-sigma", "layers.9.weight", "--data-root", root, "--out", str(out)])
    assert rows[1]["weights"]["layers.1.weight"]["precision_median"] > rows[0]["weights"]["layers.1.weight"]["precision_median"]
    assert all(torch.equal(before[k], v) for k, v in probe.load(run)[1].state_dict().items())
    probe.main([str(run), "--initial", "--data-root", root, "--out", str(out)])      # already probed: skipped
    assert len(json.loads(out.read_text())) == 3
    run.with_suffix(".ckpt.pt").unlink()
    with pytest.raises(SystemExit, match="no checkpoint run.ckpt.pt"):
        probe.load(run)
    with pytest.raises(SystemExit, match="nosuch.json: no such result file"):
        probe.main([str(tmp_path / "nosuch.json")])


def test_a_refused_step_is_recorded_not_raised():
    import plasticity_probe as probe
    from mesu_snn.errors import NonFiniteStepError
    net = torch.nn.Linear(4, 3)

    class Rule:
        def loss(self, out, y):
            return out.sum()

        def zero_grad(self):
            pass

        def step(self):
            raise NonFiniteStepError("the step would make layers.1.weight_sigma <= 0: step refused")

    x, y = torch.zeros(10, 4), torch.zeros(10, dtype=torch.long)
    state = torch.get_rng_state()
    got = probe.plasticity(lambda x, samples: net(x).unsqueeze(0), Rule(), x, y, x, y, lambda x: x, train=5)
    assert got == {"refused_at": 0, "why": "the step would make layers.1.weight_sigma <= 0"}
    assert torch.equal(torch.get_rng_state(), state)                  # the global generator restored
    assert probe._acc(got).startswith("step refused at image 0") and probe._acc(0.5) == "50.00"
