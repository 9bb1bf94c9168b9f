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


# floors: 1500 images per task; ANN measured 0.770-0.808 on task 0 over seeds 0-11 (2026-12-03)
@pytest.mark.parametrize("model,floor", [("ann", 0.72), ("snn", 0.5)])
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


def _quick(args):
    rule, extra, root, out = args
    import torch
    torch.set_num_threads(1)
    import paper_pmnist as pp
    pp.main(["--model", "snn", "--rule", rule, *extra, "--tasks", "4", "--train-per-task", "1000",
             "--test-per-task", "1000", "--log-every", "0", "--data-root", root, "--out", out])
    return json.loads(Path(out).read_text())


#: measured (seed 0, 4 tasks x 1000 images, LIF 784-50-10, T = 10, batch 1, M = 10, 2-core CPU, 77 s):
#: mean accuracy over the 4 tasks after the stream MESU 0.6325, BGD 0.6325, SGD 0.419; last task
#: MESU 0.671, BGD 0.678, SGD 0.550 (autograd step). With the hand-written whole step (paper_pmnist's
#: default since 2026-12-02; the same update to rounding, which spikes amplify): MESU 0.644, BGD 0.630,
#: SGD 0.379; first task after the stream 0.619, 0.614, 0.230. On a stream this short MESU (N = 1e4 samples = 10 tasks of this
#: size) and BGD tie: the test asserts that both beat SGD by half the measured gap, on the mean and
#: on the first task after the stream (retention; 2026-12-02, Intel Xeon VM: SGD 0.23), and that
#: they tie. The full comparison of all six rules is experiments/snn_comparison.py.
MARGIN_SGD = 0.10
TIE_BGD = 0.03
QUICK_RULES = {"mesu": ["--memory", "10000"], "bgd": [], "sgd": ["--lr", "0.01"]}


@pytest.mark.slow
def test_spiking_quick_ranking_mesu_and_bgd_beat_sgd(tmp_path):
    from concurrent.futures import ProcessPoolExecutor
    import multiprocessing as mp
    root = _data_root()
    jobs = [(r, extra, root, str(tmp_path / f"{r}.json")) for r, extra in QUICK_RULES.items()]
    with ProcessPoolExecutor(2, mp_context=mp.get_context("spawn")) as ex:
        res = dict(zip(QUICK_RULES, ex.map(_quick, jobs)))
    mean = {r: sum(v["acc"][-1]) / len(v["acc"][-1]) for r, v in res.items()}
    first = {r: v["acc"][-1][0] for r, v in res.items()}       # task 0 after the whole stream
    print(mean, first)
    assert mean["mesu"] > mean["sgd"] + MARGIN_SGD, mean
    assert mean["bgd"] > mean["sgd"] + MARGIN_SGD, mean
    assert abs(mean["mesu"] - mean["bgd"]) < TIE_BGD, mean
    assert first["mesu"] > first["sgd"] + MARGIN_SGD, first                       # it is remembering, not
    assert first["bgd"] > first["sgd"] + MARGIN_SGD, first                        # learning the last task,
    # that separates the rules: SGD learns the newest task as well (0.55-0.65 here, seed and CPU
    # dependent: its last-task accuracy moved by 0.1 between two CPU models with the same code)


def test_checkpoint_resume_continues_exactly_and_refuses_another_protocol(tmp_path):
    """Extending a run from its checkpoint (2 tasks, then --resume to 3) gives the numbers of one
    uninterrupted 3-task run: model, rule state and both generators are restored."""
    import paper_pmnist as pp
    base = ["--rule", "mesu", "--model", "snn", "--estimator", "local", "--train-per-task", "300",
            "--test-per-task", "200", "--log-every", "0", "--data-root", _data_root()]
    pp.main([*base, "--tasks", "3", "--out", str(tmp_path / "whole.json")])
    part = tmp_path / "part.json"
    pp.main([*base, "--tasks", "2", "--checkpoint", "--out", str(part)])
    assert part.with_suffix(".ckpt.pt").exists() and json.loads(part.read_text())["tasks_done"] == 2
    wall2 = json.loads(part.read_text())["wall_s"]
    pp.main([*base, "--tasks", "3", "--checkpoint", "--resume", "--out", str(part)])
    a, b = json.loads((tmp_path / "whole.json").read_text()), json.loads(part.read_text())
    assert b["wall_s"] > wall2            # the run's time adds up over its resumed parts
    assert b["done"] and b["tasks_done"] == 3 and b["resumed_at_task"] == [2]
    assert a["whole_step"] and b["whole_step"]
    assert a["acc"] == b["acc"] and a["sigma"] == b["sigma"]
    other = [*base[:base.index("--train-per-task") + 1], "200", *base[base.index("--train-per-task") + 2:]]
    with pytest.raises(SystemExit, match="train_per_task=300"):
        pp.main([*other, "--tasks", "4", "--checkpoint", "--resume", "--out", str(part)])

    # a checkpoint of this script from before it used the library's format (a bare torch.save,
    # whose results hold torch's TorchVersion) still resumes, to the same numbers
    import torch
    from mesu_snn.runs import load_checkpoint
    two = tmp_path / "two.json"
    pp.main([*base, "--tasks", "2", "--checkpoint", "--out", str(two)])
    state = load_checkpoint(two.with_suffix(".ckpt.pt"))
    state["net"] = state.pop("model")
    state["res"]["torch"] = torch.__version__
    assert type(state["res"]["torch"]) is not str
    torch.save(state, two.with_suffix(".ckpt.pt"))
    pp.main([*base, "--tasks", "3", "--checkpoint", "--resume", "--out", str(two)])
    c = json.loads(two.read_text())
    assert c["acc"] == a["acc"] and c["sigma"] == a["sigma"] and c["resumed_at_task"] == [2]
    assert load_checkpoint(two.with_suffix(".ckpt.pt"))["res"]["tasks_done"] == 3   # rewritten in the new format


class _RunsCode:
    def __reduce__(self):
        import os
        return (os.mkdir, (os.environ["MESU_TEST_MARKER"],))


def test_resume_never_runs_code_from_the_checkpoint(tmp_path, monkeypatch):
    """--resume reads its file weights-only: a checkpoint whose pickle would call a function is
    refused with the file named, and the function never runs."""
    import torch
    import paper_pmnist as pp
    marker = tmp_path / "ran"
    monkeypatch.setenv("MESU_TEST_MARKER", str(marker))
    out = tmp_path / "evil.json"
    torch.save({"net": {}, "rule": {}, "rng": torch.zeros(1), "order_g": torch.zeros(1),
                "res": {"payload": _RunsCode()}}, out.with_suffix(".ckpt.pt"))
    with pytest.raises(SystemExit, match=r"evil\.ckpt\.pt was refused by the safe \(weights-only\) reader"):
        pp.main(["--rule", "mesu", "--model", "snn", "--estimator", "local", "--train-per-task", "50",
                 "--test-per-task", "50", "--log-every", "0", "--data-root", _data_root(), "--tasks", "1",
                 "--checkpoint", "--resume", "--out", str(out)])
    assert not marker.exists()
    torch.save([1, 2], out.with_suffix(".ckpt.pt"))     # readable, but not this script's
    with pytest.raises(SystemExit, match="is not a checkpoint of this script"):
        pp.main(["--rule", "mesu", "--model", "snn", "--estimator", "local", "--train-per-task", "50",
                 "--test-per-task", "50", "--log-every", "0", "--data-root", _data_root(), "--tasks", "1",
                 "--checkpoint", "--resume", "--out", str(out)])


def test_paper_table_statistic_is_the_authors_stream_average():
    """The paper's "mean accuracy on the last 5 tasks" (88.75 / 77.69) is the authors' stream average
    (figure-pmnist-tradeoff.ipynb, cell 9): after each task t >= 5 the mean over the 5 tasks before
    it, plus the true last-5 mean after the last task (their clamped index)."""
    from paper_pmnist_report import AUTHORS_LAST5, paper_table_curve, paper_table_last5
    n = 8
    acc = [[round(0.5 + 0.01 * j + 0.1 * (k == j), 4) for j in range(k + 1)] for k in range(n)]
    ys = paper_table_curve(acc)
    assert len(ys) == n - 5 + 1
    assert ys[0] == pytest.approx(sum(acc[5][0:5]) / 5)            # tasks 0-4 after task 5, task 5 left out
    assert ys[2] == pytest.approx(sum(acc[7][2:7]) / 5)
    assert ys[-1] == pytest.approx(sum(acc[7][3:8]) / 5)           # the clamped point: tasks 3-7 after task 7
    assert paper_table_last5(acc) == pytest.approx(sum(ys) / len(ys))
    # the committed reference curves give back the means the authors' notebook printed
    ref = json.loads(AUTHORS_LAST5.read_text())
    for key in ("mesu_N300000", "foovb_diagonal"):
        assert len(ref[key]) == len(ref["t"]) == 196
        assert sum(ref[key]) / 196 == pytest.approx(ref["printed_means"][key], abs=1e-4)
    assert ref["printed_means"] == {"mesu_N300000": 88.75478, "foovb_diagonal": 77.69423}
    assert ref["mesu_N300000"][-1] == pytest.approx(91.337746)      # = the notebook's last-5 after 200 tasks
