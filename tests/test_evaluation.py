"""The evaluator works without a trainer and scores exactly as the trainer's own evaluation."""
import pytest
import torch

from mesu_snn.build import build_evaluator, build_tasks, build_trainer
from mesu_snn.evaluation import Evaluator

from test_trainer import digits_cfg


def test_evaluator_without_trainer_equals_trainer_evaluation():
    cfg = digits_cfg()
    tasks = build_tasks(cfg)
    tr = build_trainer(cfg, tasks=tasks)
    tr.fit()
    ev = build_evaluator(cfg, tr.model, tasks=tasks)
    for update in (0, tr.n_updates):
        a = ev.evaluate(range(len(tasks)), update, collect=True)
        b = tr.evaluate(range(len(tasks)), update, collect=True)
        assert a.accuracy == b.accuracy
        assert all(torch.equal(a.outputs[k][0], b.outputs[k][0]) for k in a.outputs)
    final = tr.final_metrics["accuracy_matrix"][-1]
    assert [ev.evaluate(range(len(tasks)), tr.n_updates).accuracy[k] for k in range(len(tasks))] == final
    u = ev.uncertainty(ev.evaluate(range(len(tasks)), tr.n_updates, collect=True).outputs, tr.n_updates)
    assert 0 <= u["ece"] <= 1 and "permutation" in u["ood"]["set"] and u["n_examples"] == 270
    assert u["ood"]["n_out"] == 90 and "positive" in u["ood"]["orientation"]


def test_evaluator_rejects_a_bad_mask():
    with pytest.raises(ValueError, match="eval_mask"):
        Evaluator(torch.nn.Linear(2, 2), build_tasks(digits_cfg()), lambda x, g: x, mask="bogus")
