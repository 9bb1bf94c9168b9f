"""experiments/snn_comparison_report.py on synthetic result files: the sections it writes, the
common-horizon cut, the seed table and the task-by-task gap to the ANN reproduction."""
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "experiments"))


def _run(rule, tasks, seed=0, done=True, base=0.9, planned=None, hidden=50, **hp_extra):
    acc = [[base - 0.01 * (k - t) for t in range(k + 1)] for k in range(tasks)]
    sigma = [{"layers.0.weight": {"sigma_median": 0.07, "precision_median": 200.0},
              "layers.1.weight": {"sigma_median": 0.02 / (k + 1), "precision_median": 2500.0 * (k + 1)}}
             for k in range(tasks)]
    hp = {"mesu": {"memory": 600000}, "bgd": {"lr": 1}, "sgd": {"lr": 0.003}}[rule] | hp_extra
    return {"rule": rule, "hidden": [hidden], "seed": seed, "acc": acc, "sigma": sigma, "done": done, "tasks_done": tasks,
            "n_tasks_planned": planned or tasks, "hyperparameters": hp, "ms_per_update": [1.0, 1.2],
            "wall_s": 3600.0, "machine": "test", "torch": "x", "mean_acc_seen": base}


def test_run_seconds_adds_up_resumed_parts():
    from paper_pmnist_report import run_seconds
    assert run_seconds({"task_seconds": [100.0, 250.0], "wall_s": 250.0}) == 350.0   # wall_s: the last part only
    assert run_seconds({"wall_s": 42.0}) == 42.0                                      # files without per-task times


def test_forgetting_profile_is_the_accuracy_k_tasks_back():
    import snn_comparison_report as rep
    r = _run("mesu", 26)                                   # acc[t][t - k] = 0.9 - 0.01 k
    lines = rep.forgetting_profile([("a", r), ("too short", _run("bgd", 20)), ("none", None)], 20, 25,
                                   backs=(0, 5, 20))
    assert "averaged over t = 20-25" in lines[1]
    assert lines[-1] == "| a | 90.00 | 85.00 | 70.00 |"    # the 20-task run cannot reach t = 25: left out
    assert rep.forgetting_profile([("a", r)], 3, 25, backs=(0, 5)) == []   # t - k would be negative


def test_report_sections_horizon_and_gap(tmp_path, monkeypatch):
    import snn_comparison_report as rep
    res = tmp_path / "snn_comparison"
    ann = tmp_path / "paper_pmnist" / "long"
    for folder, runs in {
        "full20": [_run("mesu", 6), _run("bgd", 6), _run("mesu", 6, seed=1), _run("bgd", 6, seed=1, base=0.8)],
        "full20_h200": [_run("mesu", 6, base=0.95, hidden=200), _run("bgd", 6, hidden=200), _run("sgd", 3, hidden=200),
                        _run("sgd", 2, seed=0, done=False, planned=5, hidden=200) | {"rule": "sgd"}],
        "full20_n300k": [_run("mesu", 4, base=0.91, memory=300000)],
        "full20_h200_n300k": [_run("mesu", 4, base=0.93, done=False, planned=20, hidden=200, memory=300000)],
        "full20_prior_init": [_run("mesu", 6, base=0.92, sigma_prior="init")],
        "full20_h200_prior_init": [_run("mesu", 4, base=0.94, hidden=200, sigma_prior="init")],
        "full60_h200": [_run("mesu", 26, hidden=200, memory=1200000, planned=60),
                        _run("bgd", 26, base=0.89, hidden=200, planned=60)],
    }.items():
        (res / folder).mkdir(parents=True)
        for i, r in enumerate(runs):
            (res / folder / f"{r['rule']}_seed{r['seed']}_{i}.json").write_text(json.dumps(r))
    ann.mkdir(parents=True)
    (ann / "mesu_seed0.json").write_text(json.dumps(_run("mesu", 8, base=0.95)))
    monkeypatch.setattr(rep, "RES", res)
    monkeypatch.setattr(rep, "ANN_LONG", ann / "mesu_seed0.json")
    assert rep.main() == 0
    text = (res / "README.md").read_text()
    assert "## A wider network at the paper's epoch: 784-200-10" in text
    assert "## MESU at the paper's window, N = 300,000 samples" in text
    assert "## The gap to the paper's ANN, task by task" in text
    # the 60-task section: the two runs side by side, their averages over tasks 20-25 (synthetic rows:
    # last-5 = base - 0.02, learning = base), the input-layer precision table, the plot
    sixty = text[text.index("## 784-200-10: MESU with a 20-task window against BGD to 60 tasks"):]
    assert ("Tasks 20-25, averaged over the task index (the last-5 mean moves by about a point from one task to the "
            "next): mean of the last 5 MESU 88.00 vs BGD 87.00; learning accuracy MESU 90.00 vs BGD 89.00.") in sixty
    assert "| MESU, N = 1.2e6 | 200 | 200 |\n" in sixty              # tasks 0 and 19: the ones run
    assert (res / "curves_full60_h200.png").exists()
    # the authors' width x window table, from the committed reference data: best N per width in bold
    assert "| 256 | 82.01 | 88.71 | **93.06** | 92.99 | 91.34 | 87.00 |" in text
    assert "| 50 | 86.86 | **91.34** |" in text
    # the gap table: the ANN's learning accuracy at task 0 (95.00) and the h200 run's (95.00), the last tasks shown
    gap = text[text.index("## The gap"):]
    assert "| ANN 784-50-10 MESU, N = 3e5 (paper_pmnist/long): learning acc. (%) | 95.00 |" in gap
    assert "task 7" in gap and "task 5" in gap and "task 3" in gap
    # the unfinished runs are named, the common horizon cuts the finished ones to 3 tasks
    assert "has not finished: 2 of 5 tasks" in text
    assert "Every rule after 3 tasks" in text
    # seeds of full20: MESU 0, 1 over 6 tasks; last-5 of the synthetic rows = 0.9 - 0.01 * mean(4..0) = 88.00
    assert "| MESU | 0, 1 | 6 | 88.00 ± 0.00 |" in text
    # the paper table's stream average beside it: t = 5: tasks 0-4 after task 5 (87.00), then the clamped
    # last point, tasks 1-5 after task 5 (88.00): 87.50
    assert "| 6 | 88.00 | 87.50 |" in text
    assert (res / "curves_full20_h200.png").exists()
    # two widths in one table: each row names its network, so no two rows read the same
    n300 = text[text.index("## MESU at the paper's window"):text.index("## MESU with each layer")]
    assert "| MESU (784-50-10, memory=300000) | 4 |" in n300
    assert "| MESU (784-200-10, memory=300000) | 4 (running) |" in n300
    init = text[text.index("## MESU with each layer"):]
    assert "| 784-50-10 MESU, σ_prior = init: learning acc. (%) | 92.00 |" in init
    assert "| 784-200-10 MESU, σ_prior = init: learning acc. (%) | 94.00 |" in init
    assert "| MESU (784-200-10, memory=600000, sigma_prior=init) | 4 |" in init


def test_long_h200_section_takes_the_longest_continuation(tmp_path, monkeypatch):
    """full80_h200 (the 60-task runs resumed to 80) replaces full60_h200 in the long section when present;
    blocks of 10 tasks are tabulated on their own, the precision table reaches the last task run."""
    import snn_comparison_report as rep
    res = tmp_path / "snn_comparison"
    for folder, n in (("full60_h200", 26), ("full80_h200", 32)):
        (res / folder).mkdir(parents=True)
        for r in (_run("mesu", n, hidden=200, memory=1200000, planned=80, done=n < 30),
                  _run("bgd", n, base=0.89, hidden=200, planned=80, done=n < 30)):
            (res / folder / f"{r['rule']}_seed0.json").write_text(json.dumps(r))
    monkeypatch.setattr(rep, "RES", res)
    monkeypatch.setattr(rep, "ANN_LONG", tmp_path / "absent.json")
    assert rep.main() == 0
    text = (res / "README.md").read_text()
    assert "to 60 tasks" not in text
    long = text[text.index("## 784-200-10: MESU with a 20-task window against BGD to 80 tasks"):]
    assert "folder `full80_h200`" in long and "--tasks 80" in long
    # synthetic rows: last-5 = base - 0.02, learning = base; one whole block of 10 (tasks 20-29)
    assert "| tasks | 20-29 |" in long
    assert "| MESU, N = 1.2e6 | 88.00 / 90.00 |" in long and "| BGD | 87.00 / 89.00 |" in long
    assert "Tasks 30-31, averaged" not in long                     # fewer than 5 tasks after 30: no line
    assert "Tasks 20-31, averaged over the task index" in long
    assert "| run | task 0 | task 19 |" in long                      # only the tasks that were run
    assert "MESU has not finished: 32 of 80 tasks" in long
    assert (res / "curves_full80_h200.png").exists()


def test_second_seed_section_blocks_and_seed_mean(tmp_path, monkeypatch):
    """full80_h200_seed1 gets its own section: 10-task blocks of both seeds side by side (empty cells where
    a run has not reached a block's end), an unfinished run named with its count, and the mean over the
    two seeds on the blocks all four runs reached."""
    import snn_comparison_report as rep
    res = tmp_path / "snn_comparison"
    runs = {"full80_h200": [_run("mesu", 32, hidden=200, memory=1200000, planned=80, done=False),
                            _run("bgd", 32, base=0.89, hidden=200, planned=80, done=False)],
            "full80_h200_seed1": [_run("mesu", 23, seed=1, base=0.92, hidden=200, memory=1200000, planned=80,
                                       done=False) | {"git_commit": "73e5ef4abc"},
                                  _run("bgd", 12, seed=1, base=0.87, hidden=200, planned=80, done=False)
                                  | {"git_commit": "73e5ef4abc"}]}
    for folder, rs in runs.items():
        (res / folder).mkdir(parents=True)
        for r in rs:
            (res / folder / f"{r['rule']}_seed{r['seed']}.json").write_text(json.dumps(r))
    monkeypatch.setattr(rep, "RES", res)
    monkeypatch.setattr(rep, "ANN_LONG", tmp_path / "absent.json")
    assert rep.main() == 0
    text = (res / "README.md").read_text()
    sec = text[text.index("## 784-200-10: MESU against BGD on a second seed"):]
    sec = sec[:sec.index("\n## ", 5)] if "\n## " in sec[5:] else sec
    assert "--seed 1" in sec and "folder `full80_h200_seed1`, code 73e5ef4" in sec
    assert "| tasks | 0-9 | 10-19 | 20-29 |" in sec
    # synthetic rows: learning = base, last-5 = base - 0.02 from task 4 on (tasks 0-3: the tasks seen so
    # far, base, base - 0.005, - 0.01, - 0.015), so the 0-9 block's last-5 is base - 0.015
    assert "| seed 1 MESU, N = 1.2e6 | 90.50 / 92.00 | 90.00 / 92.00 |  |" in sec   # 23 tasks: two blocks
    assert "| seed 1 BGD | 85.50 / 87.00 |  |  |" in sec
    assert "| seed 0 MESU, N = 1.2e6 | 88.50 / 90.00 | 88.00 / 90.00 | 88.00 / 90.00 |" in sec
    assert "seed 1 BGD: 12 of 80 tasks so far." in sec
    assert "Mean over the two seeds, tasks 0-11:" in sec            # the 12 tasks all four runs reached
    assert "| MESU, N = 1.2e6, mean of seeds 0 and 1 | 89.50 / 91.00 |" in sec
    assert "| BGD, mean of seeds 0 and 1 | 86.50 / 88.00 |" in sec


def test_window_validation_section_scores_the_tail_and_chooses_only_when_finished(tmp_path, monkeypatch):
    import snn_comparison_report as rep
    res = tmp_path / "snn_comparison"
    (res / "val_full_h200").mkdir(parents=True)
    for mem, base, n in ((500000, 0.90, 14), (2000000, 0.92, 12)):
        r = _run("mesu", n, seed=100, base=base, hidden=200, planned=30, done=False, memory=mem)
        (res / "val_full_h200" / f"mesu_memory{mem}.json").write_text(json.dumps(r))
    monkeypatch.setattr(rep, "RES", res)
    lines = rep.window_validation_section()
    text = "\n".join(lines)
    assert "| 5e+05 | 14 of 30 | 88.00 | 90.00 |" in text       # the last 10 tasks all past task 4
    assert "| 2e+06 | 12 of 30 | 90.15 | 92.00 |" in text       # tasks 2 and 3: last-5 over the tasks seen
    assert "Not finished" in text and "Chosen" not in text
    for p in (res / "val_full_h200").glob("*.json"):
        p.write_text(json.dumps(json.loads(p.read_text()) | {"done": True}))
    assert "Chosen: N = 2e+06." in "\n".join(rep.window_validation_section())


def test_baseline_retune_section_grid_choice_and_both_tunings(tmp_path, monkeypatch):
    import snn_comparison_report as rep
    res = tmp_path / "snn_comparison"
    for folder in ("val_full5_h200", "full5_h200_retuned", "full20_h200"):
        (res / folder).mkdir(parents=True)
    monkeypatch.setattr(rep, "RES", res)
    assert rep.baseline_retune_section() == []                     # nothing run yet: no section
    for lr, base in ((0.001, 0.70), (0.00333333, 0.65)):
        r = _run("sgd", 5, seed=100, base=base, hidden=200, lr=lr)
        (res / "val_full5_h200" / f"sgd_lr{lr}.json").write_text(json.dumps(r))
    (res / "val_full5_h200" / "best.json").write_text('{"sgd": {"tag": "sgd_lr0.001"}}')
    text = "\n".join(rep.baseline_retune_section())
    assert "| SGD | lr=0.001 | 70.00 |" in text and "Chosen: SGD: sgd_lr0.001." in text
    assert "Final runs" not in text                                # no final runs yet
    (res / "full5_h200_retuned" / "sgd_seed0.json").write_text(json.dumps(_run("sgd", 5, base=0.9, hidden=200, lr=0.001)))
    (res / "full20_h200" / "sgd_seed0.json").write_text(json.dumps(_run("sgd", 5, base=0.8, hidden=200, lr=0.0033)))
    (res / "full20_h200" / "mesu_seed0.json").write_text(json.dumps(_run("mesu", 20, base=0.9, hidden=200)))
    text = "\n".join(rep.baseline_retune_section())
    # acc[4] = 0.9 - 0.01 (4 - t): mean 0.88 over the 5 tasks, 0.90 on the last; MESU cut to its first 5 tasks
    assert "| SGD | 88.00 / 90.00 (lr=0.001) | 78.00 / 80.00 (lr=0.0033) |" in text
    assert "| MESU | (not retuned) | 88.00 / 90.00 (memory=600000) |" in text


def test_readout_window_section_compares_the_same_first_tasks(tmp_path, monkeypatch):
    import snn_comparison_report as rep
    res = tmp_path / "snn_comparison"
    for folder in ("full20_h200_readout", "full80_h200"):
        (res / folder).mkdir(parents=True)
    monkeypatch.setattr(rep, "RES", res)
    assert rep.readout_window_section() == []                       # nothing run yet: no section
    for mem, base in ((100000, 0.85), (300000, 0.88)):
        r = _run("mesu", 20, base=base, hidden=200, memory=1200000, per_layer={"layers.1": {"memory": mem}})
        (res / "full20_h200_readout" / f"mesu_r{mem}.json").write_text(json.dumps(r))
    (res / "full80_h200" / "mesu_seed0.json").write_text(json.dumps(_run("mesu", 30, base=0.9, hidden=200, memory=1200000)))
    (res / "full80_h200" / "bgd_seed0.json").write_text(json.dumps(_run("bgd", 30, base=0.89, hidden=200)))
    text = "\n".join(rep.readout_window_section())
    rows = [x for x in text.splitlines() if x.startswith("| MESU") or x.startswith("| BGD")]
    assert [x.split(" |")[0] for x in rows] == ["| MESU, N = 1.2e6 everywhere (full80_h200)",
                                                "| MESU, N = 1.2e6, readout N = 3e+05",
                                                "| MESU, N = 1.2e6, readout N = 1e+05", "| BGD (full80_h200)"]
    # acc[t][t] = base; after task 19 the last 5 are base - 0.04..0; all 20 tasks base - 0.095 on average;
    # the 30-task runs are cut to the first 20 tasks (their precision after task 19: 2500·20)
    assert rows[0] == "| MESU, N = 1.2e6 everywhere (full80_h200) | 90.00 | 88.00 | 88.00 | 80.50 | 200 / 50,000 |"
    assert rows[2] == "| MESU, N = 1.2e6, readout N = 1e+05 | 85.00 | 83.00 | 83.00 | 75.50 | 200 / 50,000 |"
    assert "after its first 20 tasks" in text
