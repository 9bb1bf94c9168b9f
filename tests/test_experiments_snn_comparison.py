"""experiments/snn_comparison.py's tuning phase without training (a stand-in for paper_pmnist.py
writes the results): a grid given on the command line, the last-5 score for a window tuned at the
full epoch, one point past a winning edge, and a separate best.json that never replaces the one the
final runs read."""
import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "experiments"))


def _fake_launch(calls, last5_of, mean_of):
    def launch(rule, hp, seed, out, extra, tasks=None):
        calls.append((rule, tuple(hp), seed, out.name, tuple(extra), tasks))
        n = int(extra[extra.index("--tasks") + 1])
        mem = float(dict(h.split("=") for h in hp)["memory"])
        row = [0.1] * (n - 5) + [last5_of(mem)] * 5
        out.write_text(json.dumps({"rule": rule, "done": True, "tasks_done": n, "acc": [row] * n,
                                   "mean_acc_seen": mean_of(mem),
                                   "hyperparameters": dict(h.split("=") for h in hp)}))
        return 0
    return launch


def test_window_tuning_at_full_length_scores_last5_and_keeps_its_own_best(tmp_path, monkeypatch):
    import snn_comparison as sc
    monkeypatch.setattr(sc, "OUT", tmp_path)
    (tmp_path / "best.json").write_text('{"mesu": {"tag": "mesu_memory50000"}}')
    calls = []
    # the last-5 score grows with the window up to 3.6e6, the mean over tasks seen falls: the two
    # scores choose differently, so the test sees which one was used
    monkeypatch.setattr(sc, "launch", _fake_launch(calls, lambda m: min(m, 3.6e6) / 1e7, lambda m: 1 / m))
    sc.main(["--phase", "val", "--rules", "mesu", "--hidden", "200", "--val-tasks", "12", "--val-train", "0",
             "--val-test", "0", "--score", "last5", "--grid", "mesu:memory=600000,1200000,2400000",
             "--extend", "--resume", "--val-folder", "val_full_h200", "--jobs", "1"])
    mems = [dict(h.split("=") for h in c[1])["memory"] for c in calls]
    assert mems == ["600000", "1200000", "2400000", "7.2e+06"]       # the grid, then one past the winning edge
    rule, hp, seed, name, extra, tasks = calls[0]
    assert seed == sc.VAL_SEED and tasks == 12 and name == "mesu_memory600000.json"
    assert extra == ("--validation", "--tasks", "12", "--train-per-task", "0", "--test-per-task", "0",
                     "--hidden", "200", "--checkpoint", "--resume")
    best = json.loads((tmp_path / "val_full_h200" / "best.json").read_text())
    assert best["mesu"]["tag"] == "mesu_memory7.2e+06"          # (the mean over tasks seen would pick 600000)
    assert best["mesu"]["score"] == "last5" and best["mesu"]["val_score"] == pytest.approx(0.36)
    # the final runs' settings are untouched
    assert json.loads((tmp_path / "best.json").read_text()) == {"mesu": {"tag": "mesu_memory50000"}}


def test_default_tuning_is_the_short_grid_and_writes_the_final_runs_best(tmp_path, monkeypatch):
    import snn_comparison as sc
    monkeypatch.setattr(sc, "OUT", tmp_path)
    calls = []
    monkeypatch.setattr(sc, "launch", _fake_launch(calls, lambda m: 0.5, lambda m: 1 / m))
    sc.main(["--phase", "val", "--rules", "mesu", "--jobs", "1"])
    assert [c[1] for c in calls] == [tuple(hp) for hp in sc.GRID["mesu"]]
    assert calls[0][4] == tuple(sc.val_extra([50]))
    assert "--checkpoint" not in calls[0][4]
    best = json.loads((tmp_path / "best.json").read_text())
    assert best["mesu"]["tag"] == "mesu_memory15000" and best["mesu"]["score"] == "mean_seen"


def test_grid_argument_errors_name_the_problem():
    import snn_comparison as sc
    with pytest.raises(SystemExit, match="--grid 'nosuch:lr=1'"):
        sc.grid_for("mesu", ["nosuch:lr=1"])
    with pytest.raises(SystemExit, match="expected RULE:KEY=V1,V2"):
        sc.grid_for("mesu", ["mesu:memory"])
    assert sc.grid_for("ewc", ["ewc:ewc_lambda=1,3"]) == [["ewc_lambda=1", "lr=0.00333333"], ["ewc_lambda=3", "lr=0.00333333"]]


def test_last5_tail_averages_the_last_tasks_and_unfinished_grids_are_not_extended(tmp_path, monkeypatch):
    import snn_comparison as sc
    acc = [[0.5] * (k + 1) for k in range(20)]
    acc[-1] = [0.0] * 15 + [1.0] * 5                     # one lucky last task
    assert sc.SCORES["last5"]({"acc": acc}) == 1.0
    assert sc.SCORES["last5_tail"]({"acc": acc}) == pytest.approx((9 * 0.5 + 1.0) / 10)
    assert sc._last5_tail(acc[:3]) == pytest.approx(0.5)   # fewer than 10 tasks: all of them
    # a run stopped early (killed, or out of session time): no extension past an edge, nothing chosen
    monkeypatch.setattr(sc, "OUT", tmp_path)
    calls = []

    def launch(rule, hp, seed, out, extra, tasks=None):
        calls.append(hp)
        out.write_text(json.dumps({"rule": rule, "done": False, "tasks_done": 3, "acc": acc[:3],
                                   "hyperparameters": dict(h.split("=") for h in hp)}))
        return 0
    monkeypatch.setattr(sc, "launch", launch)
    sc.main(["--phase", "val", "--rules", "mesu", "--hidden", "200", "--val-tasks", "30", "--score", "last5_tail",
             "--grid", "mesu:memory=500000,1000000,2000000", "--extend", "--resume", "--val-folder", "v", "--jobs", "1"])
    assert len(calls) == 3
    assert json.loads((tmp_path / "v" / "best.json").read_text()) == {}


def test_final_runs_take_their_settings_from_the_named_validation_folder(tmp_path, monkeypatch):
    import snn_comparison as sc
    monkeypatch.setattr(sc, "OUT", tmp_path)
    (tmp_path / "val").mkdir()
    (tmp_path / "val" / "si_lr0.00333333_si_c0.001.json").write_text(
        json.dumps({"hyperparameters": {"lr": 0.00333333, "si_c": 0.001, "damping": 0.1}}))
    (tmp_path / "best.json").write_text('{"si": {"tag": "si_lr0.00333333_si_c0.001"}}')
    (tmp_path / "vfull").mkdir()
    (tmp_path / "vfull" / "si_lr0.00333333_si_c1e-05.json").write_text(
        json.dumps({"hyperparameters": {"lr": 0.00333333, "si_c": 1e-05}}))
    (tmp_path / "vfull" / "best.json").write_text('{"si": {"tag": "si_lr0.00333333_si_c1e-05"}}')
    calls = []
    monkeypatch.setattr(sc, "launch", lambda rule, hp, seed, out, extra, tasks=None: calls.append((rule, hp, out)))
    sc.main(["--phase", "final", "--rules", "si", "--tasks", "5", "--jobs", "1"])
    sc.main(["--phase", "final", "--rules", "si", "--tasks", "5", "--tuned-in", "vfull", "--folder", "f2", "--jobs", "1"])
    assert calls[0][1] == ["lr=0.00333333", "si_c=0.001"] and calls[0][2].parent.name == "final"
    assert calls[1][1] == ["lr=0.00333333", "si_c=1e-05"] and calls[1][2].parent.name == "f2"
    with pytest.raises(SystemExit, match="--tuned-in vfull: .* no tuned setting for sgd"):
        sc.main(["--phase", "final", "--rules", "si", "sgd", "--tuned-in", "vfull"])
    with pytest.raises(SystemExit, match="--tuned-in nosuch: no .*best.json"):
        sc.main(["--phase", "final", "--rules", "si", "--tuned-in", "nosuch"])


def test_fix_sets_a_setting_the_grid_does_not_vary():
    import snn_comparison as sc
    assert sc.grid_for("ewc", [], []) is sc.GRID["ewc"]                 # default grid untouched (file names)
    assert sc.grid_for("ewc", ["ewc:ewc_lambda=1,3"], ["ewc:lr=0.001", "si:lr=0.5"]) == [
        ["ewc_lambda=1", "lr=0.001"], ["ewc_lambda=3", "lr=0.001"]]
    assert sc.grid_for("si", [], ["si:lr=0.001"]) == [["lr=0.001", f"si_c={c}"] for c in ("0.0001", "0.001", "0.01")]
    with pytest.raises(SystemExit, match="--fix 'ewc:lr=1,2': expected RULE:KEY=VALUE"):
        sc.grid_for("ewc", [], ["ewc:lr=1,2"])
    with pytest.raises(SystemExit, match="ewc has no setting 'memory'"):
        sc.grid_for("ewc", [], ["ewc:memory=5"])
    with pytest.raises(SystemExit, match="set the same key"):
        sc.grid_for("ewc", ["ewc:lr=1,2"], ["ewc:lr=3"])
