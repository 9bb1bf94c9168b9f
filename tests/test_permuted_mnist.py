"""Acceptance on real MNIST (../shared/data): a task-free permuted-MNIST stream of 10 tasks.

Recipe: ``experiments/configs/permuted_mnist_base.toml`` (300 training / 200 test images per
task, 5 passes, SpikingMLP 784-64-10, T = 10, constant-current input, batch 16, M = 4).
Hyperparameters: the equal-budget search of ``experiments/permuted_mnist.py`` (4 values per
rule on a seed-1 validation stream; results in ``experiments/results/permuted_mnist.md``):
MESU memory = 1e4 (σ_prior = 0.05), SGD lr = 0.01, BGD lr = 30 (its curve peaks there: 100
and 300 score 0.33 and 0.12 on the validation stream).

What holds, and is asserted, on the seed-0 stream (same initialisation, data and batch order
for the three rules):

* MESU's final average accuracy beats BGD's by more than 0.05 (measured: 0.64 vs 0.53);
* MESU forgets less than SGD (forgetting 0.11 vs 0.14, backward transfer −0.11 vs −0.14).

What does **not** hold: MESU's final average accuracy does not beat tuned SGD's in this
small, subsampled regime (0.638 vs 0.646, and Adam reaches 0.711): MESU's plasticity
(learning accuracy 0.73 vs 0.78) is lower because the weight noise σ that sets its learning
rate also blurs the first layer. The last assertion pins that gap so that a change to either
side is noticed.
"""
from pathlib import Path

import pytest
import torch

from mesu_snn.build import build_tasks, build_trainer
from mesu_snn.config import load_config, parse_config

REPO = Path(__file__).resolve().parents[1]

RULES = {"mesu": {"memory": 1e4, "sigma_prior": 0.05}, "sgd": {"lr": 0.01}, "bgd": {"lr": 30.0}}


@pytest.mark.slow
def test_permuted_mnist_10_tasks_task_free(shared_data):
    base = load_config(REPO / "experiments" / "configs" / "permuted_mnist_base.toml").to_dict()
    base["data"]["root"] = str(shared_data)
    base["schedule"]["checkpoint_every"] = 0
    torch.set_num_threads(1)
    tasks = None
    res = {}
    for rule, hp in RULES.items():
        cfg = parse_config({**base, "rule": {"name": rule, **hp}})
        assert cfg.stream.n_tasks >= 10 and cfg.stream.kind == "permuted"
        tasks = build_tasks(cfg) if tasks is None else tasks
        tr = build_trainer(cfg, tasks=tasks)
        assert not tr.rule.uses_task_boundaries          # task-free: the learner is never told
        res[rule] = tr.fit()
    acc = {r: m["average_accuracy"] for r, m in res.items()}
    print({r: (round(m["average_accuracy"], 3), round(m["forgetting"], 3)) for r, m in res.items()})
    for m in res.values():
        assert len(m["accuracy_matrix"]) == 10 and m["learning_accuracy"] > 0.5
    assert acc["mesu"] > acc["bgd"] + 0.05
    assert res["mesu"]["forgetting"] < res["sgd"]["forgetting"] - 0.01
    assert res["mesu"]["backward_transfer"] > res["sgd"]["backward_transfer"] + 0.01
    assert abs(acc["mesu"] - acc["sgd"]) < 0.05          # the unmet criterion, pinned (see docstring)
