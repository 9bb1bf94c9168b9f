"""experiments/paper_pmnist.py: the paper's protocol (hyperparameters as in the authors' config),
its per-task JSON, and a short real-MNIST run that learns (ANN and spiking modes)."""
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "experiments"))


def _data_root():
    import os
    for cand in (os.environ.get("MESU_SNN_DATA"), str(REPO.parent / "shared" / "data"), "/work/shared/data"):
        if cand and (Path(cand) / "MNIST" / "raw").exists():
            return cand
    pytest.skip("real MNIST not found ($MESU_SNN_DATA or ../shared/data)")


def test_protocol_constants_are_the_authors():
    import paper_pmnist as pp
    # kellian-cottart/mesu-pmnist configurations/pmnist/mlp-bayesian-mesu.json
    assert pp.RULE_HP["mesu"] == dict(memory=300_000, sigma_prior=1.0, mu_prior=0.0, lr_mu=1.0, lr_sigma=1.0,
                                      clamp_grad=None)
    assert pp.RULE_HP["bgd"] == dict(lr=1.0)


@pytest.mark.parametrize("model,floor", [("ann", 0.75), ("snn", 0.5)])
def test_short_run_learns_and_writes_incremental_json(tmp_path, model, floor):
    import paper_pmnist as pp
    out = tmp_path / "r.json"
    pp.main(["--rule", "mesu", "--model", model, "--tasks", "2", "--train-per-task", "1500",
             "--test-per-task", "1000", "--log-every", "0", "--data-root", _data_root(), "--out", str(out)])
    r = json.loads(out.read_text())
    assert r["done"] and r["tasks_done"] == 2 and len(r["acc"]) == 2 and len(r["acc"][1]) == 2
    assert r["hyperparameters"]["memory"] == 300_000 and r["test_samples"] == 10 and r["eval_average"] == "log_probs"
    assert min(r["acc"][0][0], r["acc"][1][1]) > floor, r["acc"]
    assert set(r["sigma"][-1]) == {"layers.0.weight", "layers.1.weight"}          # no bias
    assert r["standardization"]["mean"] == pytest.approx(0.1307, abs=1e-3)
