"""No global state changed at import or inside library functions."""
import subprocess
import sys

import torch


def test_import_changes_no_global_state():
    code = ("import matplotlib, torch; b = matplotlib.get_backend(); n = torch.get_num_threads(); "
            "s = torch.get_rng_state().clone()\n"
            "import mesu_snn, mesu_snn.cli, mesu_snn.runs.plots, mesu_snn.commands.plot\n"
            "assert matplotlib.get_backend() == b and torch.get_num_threads() == n\n"
            "assert torch.equal(torch.get_rng_state(), s)\nprint('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_building_a_model_leaves_the_global_rng_alone():
    from mesu_snn.build import build_model, build_tasks
    from mesu_snn.config import parse_config
    cfg = parse_config({"data": {"dataset": "digits", "train_per_task": 20, "test_per_task": 10},
                        "model": {"hidden": [4]}, "rule": {"name": "mesu"}})
    tasks = build_tasks(cfg)
    torch.manual_seed(123)
    s = torch.get_rng_state().clone()
    a, b = build_model(cfg, tasks), build_model(cfg, tasks)
    assert torch.equal(torch.get_rng_state(), s)
    assert torch.equal(a.layers[0].weight_mu, b.layers[0].weight_mu)     # still seeded: same init


def test_cli_restores_the_thread_count(tmp_path):
    from mesu_snn.cli import main
    n = torch.get_num_threads()
    assert main(["demo", "--tasks", "1", "--epochs", "1", "--rules", "sgd", "--quiet", "--out", str(tmp_path / "d")]) == 0
    assert torch.get_num_threads() == n
